"""ONNX Runtime sessions: honest provider selection, loading with clear errors, running batches.

numpy + onnxruntime only: no torch import anywhere on this path (a deployment machine may not have torch).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from vitdeploy.errors import ConfigError, DeviceError, ModelFileError
from vitdeploy.onnx_file import (
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxModelInfo,
    check_external_data_file,
    check_io_names,
    parse_metadata,
)
from vitdeploy.progress import to_stderr

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


DEVICES = ("auto", "cpu", "cuda")
GRAPH_OPTIMIZATION = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
# ORT's logger severities: 0 verbose, 1 info, 2 warning (its default), 3 error, 4 fatal.
_ORT_DEFAULT_SEVERITY = 2
_ORT_FATAL_ONLY = 4
# What a failed session creation raises; ORT's exception classes derive from Exception directly.
_ORT_LOAD_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidProtobuf,
    ort_errors.InvalidGraph,
    ort_errors.NoSuchFile,
    ort_errors.NoModel,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
)


@dataclass(frozen=True)
class CudaStatus:
    """Whether a real session gets the CUDA provider here, and if not, what is missing (one sentence)."""

    usable: bool
    reason: str  # full explanation, for --device cuda errors
    summary: str = ""  # a few words, for the one line that `auto` prints


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """Silence ORT's process-wide logger, which prints the red CUDA fallback error before any session exists."""
    ort.set_default_logger_severity(_ORT_FATAL_ONLY)
    try:
        yield
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


# A one-node ONNX model (y = Identity(x), float[1], opset 17, IR 8), serialized, used to ask ORT which provider a
# session really gets. Stored as bytes so that the deployment path needs no `onnx` package;
# tests/test_runtime.py rebuilds it with onnx.helper and checks that the bytes match.
PROBE_MODEL = (
    b"\x08\x08:D\n\x10\n\x01x\x12\x01y\"\x08Identity\x12\x0eprovider_probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01"
    b"\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x11"
)


def _preload_cuda_libraries() -> list[str]:
    """Let ORT load CUDA/cuDNN from nvidia-* pip packages; return the libraries it could not load.

    preload_dlls() reports failures with print() on stdout, which would corrupt `--format json` output,
    so its output is captured and turned into the list of missing library names.
    """
    preload = getattr(ort, "preload_dlls", None)  # added in ORT 1.21
    if preload is None:
        return []
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            preload()
    except (OSError, RuntimeError) as e:  # e.g. a broken nvidia-* package; the probe session still decides
        return [f"(preload_dlls failed: {e})"]
    return sorted(set(re.findall(r"Failed to load (?:\S*/)?(\S+?):", captured.getvalue())))


@functools.cache
def cuda_status() -> CudaStatus:
    """Probe (once per process) whether CUDA really works for ONNX Runtime here."""
    if CUDA not in ort.get_available_providers():
        return CudaStatus(
            False,
            f"onnxruntime {ort.__version__} has no CUDA provider (a CPU-only build); install onnxruntime-gpu",
            "onnxruntime has no CUDA provider",
        )
    missing = _preload_cuda_libraries()
    with _quiet_ort():
        session = ort.InferenceSession(PROBE_MODEL, providers=[CUDA, CPU])
    if CUDA in session.get_providers():
        return CudaStatus(True, "")
    cuda_version = getattr(ort, "cuda_version", "") or "?"
    what = ", ".join(missing) if missing else "the CUDA/cuDNN libraries (or a GPU driver)"
    return CudaStatus(
        False,
        f"CUDAExecutionProvider is listed but the session fell back to CPU: {what} not found; "
        f"onnxruntime-gpu {ort.__version__} needs CUDA {cuda_version.split('.')[0]}.x + cuDNN 9 "
        "(install them, or a CUDA build of torch whose libraries onnxruntime.preload_dlls() can load)",
        f"CUDA not usable: {what} not found",
    )


def usable_providers() -> list[str]:
    """Execution providers a real session actually gets here, fastest first; CPU is always there."""
    return [CUDA, CPU] if cuda_status().usable else [CPU]


def make_session(
    model: str | os.PathLike[str] | bytes,
    device: str = "auto",
    threads: int | None = None,
    graph_optimization: str = "all",
    notify: Callable[[str], None] = to_stderr,
    spin: bool = True,
) -> tuple[ort.InferenceSession, str]:
    """Create an InferenceSession on the requested device and return it with the provider it really uses.

    device: "cpu"; "cuda" (raises DeviceError naming what is missing when CUDA does not really work);
    "auto" (CUDA when a session really gets it, else CPU, said in one plain line through `notify`).
    threads: intra-op threads (None: ORT's default, one per physical core).
    spin: let idle intra-op threads busy-wait for the next parallel section (ORT's default: fastest when the
    cores are otherwise idle). Turn it off when other threads of the process need the cores, as predict's
    decoders do: spinning would take their CPU time.
    """
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if graph_optimization not in GRAPH_OPTIMIZATION:
        raise ConfigError(
            f"unknown graph optimization {graph_optimization!r}; choose one of: {', '.join(GRAPH_OPTIMIZATION)}"
        )
    if isinstance(model, (str, os.PathLike)):
        _check_model_file(Path(model))
    providers = [CPU]
    if device != "cpu":
        status = cuda_status()
        if status.usable:
            providers = [CUDA, CPU]
        elif device == "cuda":
            raise DeviceError(f"--device cuda is not usable: {status.reason}")
        else:
            notify(f"running on CPU ({status.summary}; --device cuda says more)")

    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATION[graph_optimization]
    options.log_severity_level = 3  # keep ORT's warnings about unused initializers etc. off the user's terminal
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        with _quiet_ort():
            session = ort.InferenceSession(source, options, providers=providers)
    except _ORT_LOAD_ERRORS as e:
        name = "model bytes" if isinstance(model, bytes) else str(model)
        raise ModelFileError(f"{name}: onnxruntime cannot load it: {e}") from None
    provider = session.get_providers()[0]
    if providers[0] == CUDA and provider != CUDA:
        # The probe worked but this model did not get CUDA (e.g. out of GPU memory): never fall back silently.
        if device == "cuda":
            raise DeviceError("--device cuda: this model's session fell back to CPU")
        notify("running on CPU (this model's CUDA session fell back to CPU)")
    return session, provider


def _check_model_file(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: model file is empty")
    check_external_data_file(path)  # vitdeploy's own check, not only ONNX Runtime's


def model_info_from_session(session: ort.InferenceSession, path: str | os.PathLike[str]) -> OnnxModelInfo:
    """Read a vitdeploy model's self-description from an open session and check that the graph honours it."""
    check_io_names(path, [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    info = parse_metadata(path, dict(session.get_modelmeta().custom_metadata_map))
    check_input_contract(session, info)
    return info


def check_input_contract(session: ort.InferenceSession, info: OnnxModelInfo) -> None:
    """The graph must take float32 [batch, C, S, S] with a symbolic batch and give [batch, len(labels)] logits, as its
    metadata says; otherwise every consumer (predict, bench, serve) would fail later, inside ONNX Runtime."""
    model_input = next(i for i in session.get_inputs() if i.name == INPUT_NAME)
    shape, size = model_input.shape, info.preprocess.image_size
    channels = info.model_config.in_channels if info.model_config else 3
    problems = []
    if model_input.type != "tensor(float)":
        problems.append(f"input {INPUT_NAME} is {model_input.type}, not tensor(float)")
    if len(shape) != 4:
        problems.append(f"input {INPUT_NAME} has {len(shape)} dimensions, not 4 (batch, channels, height, width)")
    else:
        batch, got_channels, height, width = shape
        if isinstance(batch, int):
            problems.append(f"the batch axis is fixed at {batch} (it must be symbolic: re-export with vitdeploy "
                            "export, which writes a dynamic batch axis)")
        if isinstance(got_channels, int) and got_channels != channels:
            problems.append(f"the graph takes {got_channels} input channel(s), the model config {channels}")
        if all(isinstance(d, int) for d in (height, width)) and (height, width) != (size, size):
            problems.append(f"the graph takes {height}x{width} images but its metadata says {size}x{size}")
    num_classes = next(o for o in session.get_outputs() if o.name == OUTPUT_NAME).shape[-1]
    if isinstance(num_classes, int) and num_classes != len(info.labels):
        problems.append(f"the graph has {num_classes} outputs but {len(info.labels)} labels")
    if problems:
        raise ModelFileError(f"{info.path}: " + "; ".join(problems))


def load_model_info(path: str | os.PathLike[str]) -> OnnxModelInfo:
    """Validate a vitdeploy .onnx file (exists, is ONNX, describes itself) and return its metadata.

    Reads through ONNX Runtime (no onnx/torch needed); with optimizations off, so it is cheap.
    """
    session, _ = make_session(path, device="cpu", graph_optimization="disabled")
    return model_info_from_session(session, path)


def run_batch(session: ort.InferenceSession, pixel_values: np.ndarray) -> np.ndarray:
    """Run one batch (N, 3, H, W) float32 -> logits (N, num_classes) as a numpy array.

    On CUDA the batch is copied to the device once through IO binding and the output is allocated there, so
    ORT does no extra staging copies; only the logits come back to the host.
    """
    pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
    if session.get_providers()[0] != CUDA:
        return session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values})[0]
    binding = session.io_binding()
    binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(pixel_values, "cuda", 0))
    binding.bind_output(OUTPUT_NAME, "cuda")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]


def run_in_batches(session: ort.InferenceSession, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits for any number of samples, run `batch_size` at a time."""
    return np.concatenate([run_batch(session, inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def short_provider_name(provider: str) -> str:
    """CUDAExecutionProvider -> CUDA, for tables and one-line messages."""
    return provider.removesuffix("ExecutionProvider")
