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
