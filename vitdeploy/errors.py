"""Errors that carry their documented exit code, so the CLI can map them without guessing.

Exit codes (also in README.md):
    0   success
    1   internal error (a bug: please report it)
    2   bad input: usage, missing/invalid data, bundle or model file
    3   a check failed: parity, accuracy gate, benchmark regression gate
    4   partial failure: some inputs of `predict` or `explain` failed, the rest succeeded
    130 interrupted (Ctrl-C); whatever was finished was saved
"""

from __future__ import annotations

import errno
import os
from typing import Any

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_CHECK_FAILED = 3
EXIT_PARTIAL = 4
EXIT_INTERRUPTED = 130


class VitDeployError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    exit_code = EXIT_BAD_INPUT


class DataError(VitDeployError):
    """The training/evaluation data is missing, empty or unreadable."""


class BundleError(VitDeployError):
    """A model bundle is missing, incomplete, or inconsistent with its config."""


class ConfigError(VitDeployError):
    """An unknown preset or an invalid combination of settings."""


class CheckpointError(VitDeployError):
    """A checkpoint to import (timm, Hugging Face) is missing, unreadable, inconsistent, or not a plain ViT."""


class ModelFileError(VitDeployError):
    """An .onnx file is missing, not ONNX, truncated, or does not describe itself."""


class DeviceError(VitDeployError):
    """A requested device (e.g. --device cuda) is not really usable here."""


class MissingExtra(VitDeployError):
    """A command needs an optional part of vitdeploy that is not installed (exit code 2); the message names the
    install command (extras.require)."""


class PrecisionError(DeviceError):
    """A runtime was asked for a precision this hardware does not run natively (exit code 2): refused, never
    emulated."""


class ImageDecodeError(VitDeployError):
    """One input image could not be decoded safely; `kind` is a short machine-readable reason. Predict and explain
    turn it into that input's error row."""

    def __init__(self, path: str | os.PathLike[str], kind: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.kind = kind
        self.detail = message


class InputError(VitDeployError):
    """No input matched, or the output path cannot be written (exit code 2)."""


class WriteError(VitDeployError):
    """A file could not be written (a full disk, no permission): one line naming it, exit code 2."""

    @classmethod
    def from_os_error(cls, path: object, error: OSError, detail: str = "") -> WriteError:
        reason = "no space left on device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        return cls(f"cannot write {path}: {reason}" + (f" ({detail})" if detail else ""))


class CheckFailed(VitDeployError):
    """A verification gate failed (parity, accuracy, regression)."""

    exit_code = EXIT_CHECK_FAILED


class ParityError(CheckFailed):
    """Parity failed before a file was written (exit code 3); carries the parity.ParityReport that shows where."""

    def __init__(self, report: Any, consequence: str = ""):
        detail = "; ".join(report.failures()) or "no comparison ran"
        super().__init__(f"parity check failed ({detail})" + (f": {consequence}" if consequence else ""))
        self.report = report


class PageError(VitDeployError):
    """The web runtime's page reported an error (onnxruntime-web's message, as the browser gave it)."""


class RequestError(Exception):
    """A request the server refuses: HTTP status + a message for the client (sent as {"error": message}). Not a
    VitDeployError: it ends one request, never the process."""

    def __init__(self, status: int, message: str, **details: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.details}
