"""ONNX Runtime: honest provider selection (CPU, CUDA, TensorRT), loading with clear errors, running batches.

numpy + onnxruntime only: no torch or onnx import anywhere on this path (a deployment machine may have neither).
A provider counts as usable only when a real session gets it: ORT lists CUDA and TensorRT in
get_available_providers() whenever its build has them, and silently falls back to CPU when their libraries are
missing, so each is probed once with a one-node model and the session's own provider list decides.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from vitdeploy.errors import ConfigError, DeviceError, ModelFileError
from vitdeploy.files.onnx_file import INPUT_NAME, OUTPUT_NAME, OnnxModelInfo
from vitdeploy.runtimes.base import Description, Session, TensorSpec, check_model_file, export_record

logger = logging.getLogger(__name__)

NAME = "ort"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
DEVICE_OF_PROVIDER = {CPU: "cpu", CUDA: "cuda", TENSORRT: "tensorrt"}
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
# ORT's element type names -> numpy's.
_ELEMENT_TYPES = {"float": "float32", "float16": "float16", "double": "float64", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class ProviderStatus:
    """Whether a real session gets a GPU provider here, and if not, what is missing (one sentence)."""

    usable: bool
    reason: str  # full explanation, for --device cuda / tensorrt errors
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
def cuda_status() -> ProviderStatus:
    """Probe (once per process) whether CUDA really works for ONNX Runtime here."""
    if CUDA not in ort.get_available_providers():
        return ProviderStatus(
            False,
            f"onnxruntime {ort.__version__} has no CUDA provider (a CPU-only build); install onnxruntime-gpu",
            "onnxruntime has no CUDA provider",
        )
    missing = _preload_cuda_libraries()
    with _quiet_ort():
        session = ort.InferenceSession(PROBE_MODEL, providers=[CUDA, CPU])
    if CUDA in session.get_providers():
        return ProviderStatus(True, "")
    cuda_version = getattr(ort, "cuda_version", "") or "?"
    what = ", ".join(missing) if missing else "the CUDA/cuDNN libraries (or a GPU driver)"
    return ProviderStatus(
        False,
        f"CUDAExecutionProvider is listed but the session fell back to CPU: {what} not found; "
        f"onnxruntime-gpu {ort.__version__} needs CUDA {cuda_version.split('.')[0]}.x + cuDNN 9 "
        "(install them, or a CUDA build of torch whose libraries onnxruntime.preload_dlls() can load)",
        f"CUDA not usable: {what} not found",
    )


@functools.cache
def tensorrt_status() -> ProviderStatus:
    """Probe (once per process) whether ORT's TensorRT provider really works here: it needs CUDA and the
    TensorRT libraries (libnvinfer, over 1 GB), which onnxruntime-gpu does not ship."""
    if TENSORRT not in ort.get_available_providers():
        return ProviderStatus(False, f"onnxruntime {ort.__version__} has no TensorRT provider; install "
                              "onnxruntime-gpu", "onnxruntime has no TensorRT provider")
    cuda = cuda_status()
    if not cuda.usable:
        return ProviderStatus(False, f"TensorRT runs on CUDA, which is not usable here: {cuda.reason}",
                              f"TensorRT needs CUDA ({cuda.summary})")
    # When the TensorRT libraries are missing, ORT prints an "EP Error" and retries without TensorRT; both go to
    # stdout, which must stay clean for --format json.
    captured = io.StringIO()
    with _quiet_ort(), contextlib.redirect_stdout(captured):
        session = ort.InferenceSession(PROBE_MODEL, providers=[TENSORRT, CUDA, CPU])
    if session.get_providers()[0] == TENSORRT:
        return ProviderStatus(True, "")
    said = re.search(r"(Please install TensorRT[^\n]*?\.)", captured.getvalue())
    return ProviderStatus(
        False,
        "TensorrtExecutionProvider is listed but the session fell back to CUDA: "
        + (said.group(1) if said else "the TensorRT libraries (libnvinfer) were not found")
        + " (pip install tensorrt, or the TensorRT libraries on LD_LIBRARY_PATH)",
        "TensorRT not usable: its libraries were not found",
    )


def usable_providers() -> list[str]:
    """Execution providers a real session actually gets here on `auto`, fastest first; CPU is always there."""
    return [CUDA, CPU] if cuda_status().usable else [CPU]


def usable_devices() -> list[str]:
    """The devices a session really gets here: cpu, and cuda / tensorrt where they work."""
    return ["cpu"] + [d for d, status in (("cuda", cuda_status), ("tensorrt", tensorrt_status)) if status().usable]


def _providers_for(device: str) -> list[str]:
    if device == "cpu":
        return [CPU]
    if device == "tensorrt":
        status = tensorrt_status()
        if not status.usable:
            raise DeviceError(f"--device tensorrt is not usable: {status.reason}")
        return [TENSORRT, CUDA, CPU]  # TensorRT takes the subgraphs it supports; CUDA runs the rest
    status = cuda_status()
    if status.usable:
        return [CUDA, CPU]
    if device == "cuda":
        raise DeviceError(f"--device cuda is not usable: {status.reason}")
    logger.info("running on CPU (%s; --device cuda says more)", status.summary)
    return [CPU]


def make_session(
    model: str | os.PathLike[str] | bytes,
    device: str = "auto",
    threads: int | None = None,
    graph_optimization: str = "all",
    spin: bool = True,
) -> tuple[ort.InferenceSession, str]:
    """Create an InferenceSession on the requested device and return it with the provider it really uses.

    device: "cpu"; "cuda" / "tensorrt" (raise DeviceError naming what is missing when they do not really work);
    "auto" (CUDA when a session really gets it, else CPU, said in one log line).
    threads: intra-op threads (None: ORT's default, one per physical core).
    spin: let idle intra-op threads busy-wait for the next parallel section (ORT's default: fastest when the
    cores are otherwise idle). Turn it off when other threads of the process need the cores, as predict's
    decoders do: spinning would take their CPU time.
    """
    if device not in DEVICES:
        raise ConfigError(f"unknown ONNX Runtime device {device!r}; choose one of: {', '.join(DEVICES)}")
    if graph_optimization not in GRAPH_OPTIMIZATION:
        raise ConfigError(
            f"unknown graph optimization {graph_optimization!r}; choose one of: {', '.join(GRAPH_OPTIMIZATION)}"
        )
    if isinstance(model, (str, os.PathLike)):
        check_model_file(Path(model))
    providers = _providers_for(device)

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
        raise ModelFileError(f"{name}: onnxruntime cannot load it: {_first_line(e)}") from None
    provider = session.get_providers()[0]
    if providers[0] != CPU and provider != providers[0]:
        # The probe worked but this model did not get the GPU provider (e.g. out of GPU memory): never silently.
        if device != "auto":
            raise DeviceError(f"--device {device}: this model's session fell back to {provider}")
        logger.info("running on CPU (this model's CUDA session fell back to CPU)")
    return session, provider


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    missing_op = re.search(r"Could not find an implementation for (\S+)\((\d+)\) node with name '([^']*)'", text)
    if missing_op:  # name the op, as every runtime's refusal does
        return f"no kernel for op {missing_op.group(1)} (opset {missing_op.group(2)}, node {missing_op.group(3)!r})"
    return text


def run_batch(session: ort.InferenceSession, pixel_values: np.ndarray) -> np.ndarray:
    """Run one batch (N, 3, H, W) float32 -> logits (N, num_classes) as a numpy array.

    On CUDA (and TensorRT) the batch is copied to the device once through IO binding and the output is allocated
    there, so ORT does no extra staging copies; only the logits come back to the host.
    """
    pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
    if session.get_providers()[0] == CPU:
        return session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values})[0]
    binding = session.io_binding()
    binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(pixel_values, "cuda", 0))
    binding.bind_output(OUTPUT_NAME, "cuda")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]


def short_provider_name(provider: str) -> str:
    """CUDAExecutionProvider -> CUDA, for tables and one-line messages."""
    return provider.removesuffix("ExecutionProvider")


def _tensor(arg: ort.NodeArg) -> TensorSpec:
    elem = arg.type.removeprefix("tensor(").removesuffix(")")
    return TensorSpec(arg.name, _ELEMENT_TYPES.get(elem, elem), tuple(arg.shape) if arg.shape is not None else None)


class OrtSession(Session):
    """An ONNX Runtime session behind the runtime interface."""

    def __init__(self, model: str | os.PathLike[str] | bytes, device: str = "auto", threads: int | None = None,
                 spin: bool = True, graph_optimization: str = "all"):
        self.session, provider = make_session(model, device, threads, graph_optimization, spin)
        self.path = None if isinstance(model, bytes) else Path(model)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.inputs = [_tensor(i) for i in self.session.get_inputs()]
        self.outputs = [_tensor(o) for o in self.session.get_outputs()]
        self.description = Description(NAME, DEVICE_OF_PROVIDER.get(provider, provider), provider,
                                       str(export_record(self.metadata).get("precision", "fp32")))

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.input.name != INPUT_NAME:  # a raw-image file: decoded images, no IO binding
            return self.run_outputs(batch, [OUTPUT_NAME])[OUTPUT_NAME]
        return run_batch(self.session, batch)

    def run_outputs(self, batch: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        return dict(zip(names, self.session.run(list(names), self.feed(batch))))


def open_to_read(path: str | os.PathLike[str]) -> OrtSession:
    """A session opened to read what the file is (Session.info, input_shape), not to run it fast: CPU, graph
    optimizations off, so it is cheap. numpy + onnxruntime only (no onnx/torch needed)."""
    return OrtSession(path, device="cpu", graph_optimization="disabled")


def load_model_info(path: str | os.PathLike[str]) -> OnnxModelInfo:
    """Validate a vitdeploy .onnx file (exists, is ONNX, describes itself, its graph matches) -> its description."""
    return open_to_read(path).info
