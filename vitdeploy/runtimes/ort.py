"""ONNX Runtime: honest provider selection (CPU, CUDA, TensorRT), loading with clear errors, running batches.

numpy + onnxruntime only: no torch or onnx import anywhere on this path (a deployment machine may have neither);
onnxruntime itself is imported when a session or probe needs it, so SPEC costs nothing to read.
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
from typing import TYPE_CHECKING

import numpy as np

from vitdeploy.errors import ConfigError, DeviceError, ModelFileError
from vitdeploy.files.onnx_file import INPUT_NAME, OUTPUT_NAME
from vitdeploy.runtimes import base

if TYPE_CHECKING:
    import onnxruntime as ort

    from vitdeploy.runtimes.machine import Machine

logger = logging.getLogger(__name__)

NAME = "ort"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
DEVICE_OF_PROVIDER = {CPU: "cpu", CUDA: "cuda", TENSORRT: "tensorrt"}
# What each device computes natively: the CPU provider (MLAS) has fp32 and u8/s8 INT8 kernels on x86 and ARM, but
# no fp16 ones (it casts fp16 graphs to fp32: it runs them, slowly); CUDA and TensorRT have fp16.
PRECISIONS = {"cpu": ("fp32", "int8"), "cuda": ("fp32", "fp16"), "tensorrt": ("fp32", "fp16", "int8")}
EMULATED = {"cpu": ("fp16",)}
# --graph-optimization names -> ORT's GraphOptimizationLevel member names.
GRAPH_OPTIMIZATION = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                      "disabled": "ORT_DISABLE_ALL"}
# ORT's logger severities: 0 verbose, 1 info, 2 warning (its default), 3 error, 4 fatal.
_ORT_DEFAULT_SEVERITY = 2
_ORT_FATAL_ONLY = 4
# What a failed session creation raises (onnxruntime.capi.onnxruntime_pybind11_state's classes, which derive from
# Exception directly).
_ORT_LOAD_ERRORS = ("Fail", "InvalidArgument", "InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NoModel",
                    "NotImplemented", "RuntimeException")


def _load_errors() -> tuple[type[Exception], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    return tuple(getattr(ort_errors, name) for name in _ORT_LOAD_ERRORS)
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
    import onnxruntime as ort

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
    import onnxruntime as ort

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
    import onnxruntime as ort

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
    import onnxruntime as ort

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


def make_session(model: base.ModelSource, device: str = "auto", threads: int | None = None,
                 graph_optimization: str = "all", spin: bool = True, cuda_graph: bool = False,
                 cuda_stream: int | None = None) -> tuple[ort.InferenceSession, str]:
    """Create an InferenceSession on the requested device and return it with the provider it really uses.

    device: "cpu"; "cuda" / "tensorrt" (raise DeviceError naming what is missing when they do not really work);
    "auto" (CUDA when a session really gets it, else CPU, said in one log line).
    threads: intra-op threads (None: ORT's default, one per physical core).
    spin: let idle intra-op threads busy-wait for the next parallel section (ORT's default: fastest when
    the cores are otherwise idle). Turn it off when other threads of the process need the cores, as predict's
    decoders do: spinning would take their CPU time.
    cuda_graph, cuda_stream: on CUDA, capture each run as one CUDA graph; run on this stream.
    """
    import onnxruntime as ort

    if device not in DEVICES:
        raise ConfigError(f"unknown ONNX Runtime device {device!r}; choose one of: {', '.join(DEVICES)}")
    if graph_optimization not in GRAPH_OPTIMIZATION:
        raise ConfigError(f"unknown graph optimization {graph_optimization!r}; choose one of: "
                          f"{', '.join(GRAPH_OPTIMIZATION)}")
    if isinstance(model, (str, os.PathLike)):
        base.check_model_file(Path(model))
    providers: list = _providers_for(device)

    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                       GRAPH_OPTIMIZATION[graph_optimization])
    session_options.log_severity_level = 3  # keep ORT's warnings about unused initializers etc. off the terminal
    if threads:
        session_options.intra_op_num_threads = threads
    if not spin:
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if CUDA in providers:
        cuda_options = {"enable_cuda_graph": "1" if cuda_graph else "0"}
        if cuda_stream is not None:
            cuda_options["user_compute_stream"] = str(cuda_stream)
        providers = [(CUDA, cuda_options) if p == CUDA else p for p in providers]
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        with _quiet_ort():
            session = ort.InferenceSession(source, session_options, providers=providers)
    except _load_errors() as e:
        name = "model bytes" if isinstance(model, bytes) else str(model)
        raise ModelFileError(f"{name}: onnxruntime cannot load it: {_first_line(e)}") from None
    provider = session.get_providers()[0]
    if wanted != CPU and provider != wanted:
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
    import onnxruntime as ort

    pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
    if session.get_providers()[0] == CPU:
        return session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values})[0]
    binding = session.io_binding()
    binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(pixel_values, "cuda", 0))
    binding.bind_output(OUTPUT_NAME, "cuda")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]


def _tensor(arg: ort.NodeArg) -> base.TensorSpec:
    elem = arg.type.removeprefix("tensor(").removesuffix(")")
    shape = tuple(arg.shape) if arg.shape is not None else None
    return base.TensorSpec(arg.name, _ELEMENT_TYPES.get(elem, elem), shape)


class OrtSession(base.Session):
    """An ONNX Runtime session behind the runtime interface. `session` is ORT's own InferenceSession, for the
    benchmark's runners, which time it with nothing of vitdeploy in between."""

    def __init__(self, model: base.ModelSource, device: str = "auto", options: base.SessionOptions | None = None):
        options = options or base.SessionOptions()
        self.session, provider = make_session(model, device, options.threads, options.graph_optimization,
                                              options.spin, options.cuda_graph, options.cuda_stream)
        self.path = None if isinstance(model, bytes) else Path(model)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.inputs = [_tensor(i) for i in self.session.get_inputs()]
        self.outputs = [_tensor(o) for o in self.session.get_outputs()]
        self.description = base.Description(NAME, DEVICE_OF_PROVIDER.get(provider, provider), provider,
                                       self.graph_precision)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.check_open()
        if self.input.name != INPUT_NAME:  # a raw-image file: decoded images, no IO binding
            return self.run_outputs(batch, [OUTPUT_NAME])[OUTPUT_NAME]
        return run_batch(self.session, batch)

    def run_outputs(self, batch: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        self.check_open()
        return dict(zip(names, self.session.run(list(names), self.feed(batch))))

    def release(self) -> None:
        del self.session  # ORT frees the session's memory and threads with its last reference


def _open(model: base.ModelSource, device: str, precision: str | None, options: base.SessionOptions,
          machine: Machine) -> OrtSession:
    return OrtSession(model, device, options)


def _probe() -> base.RuntimeOffer:
    """The devices a real session gets here (the CPU always; CUDA and TensorRT only where a session gets them)."""
    import onnxruntime as ort

    devices = usable_devices()
    details = {"available_providers": ort.get_available_providers(),
               "cuda": "usable" if cuda_status().usable else cuda_status().summary,
               "tensorrt": "usable" if tensorrt_status().usable else tensorrt_status().summary}
    return base.RuntimeOffer(NAME, True, True, "", tuple(devices), {d: PRECISIONS[d] for d in devices}, ort.__version__,
                        details)


def _needs(device: str, precision: str) -> str:
    """What would let ONNX Runtime compute `precision` on `device`: one line (`--device cuda` says more)."""
    import onnxruntime as ort

    gpu = (f"an NVIDIA GPU with onnxruntime-gpu (CUDA {(getattr(ort, 'cuda_version', '') or '13').split('.')[0]} + "
           f"cuDNN 9)")
    if device == "cpu" and precision == "fp16":
        return f"fp16 needs {gpu}"
    if device == "cuda":
        return f"{gpu}" + (f"; here: {cuda_status().summary}" if cuda_status().summary else "")
    if device == "tensorrt":
        return f"{gpu} and the TensorRT libraries (pip install tensorrt)" + (
            f"; here: {tensorrt_status().summary}" if tensorrt_status().summary else "")
    return f"ONNX Runtime has no {precision} kernels on {device.upper()}"


SPEC = base.RuntimeSpec(
    name=NAME,
    title="ONNX Runtime",
    help="ONNX Runtime: CPU, CUDA, TensorRT, each used only when a session really gets it",
    devices=("cpu", "cuda", "tensorrt"),
    open=_open,
    probe=_probe,
    needs=_needs,
    modules=("onnxruntime",),
    emulated=EMULATED,
)
