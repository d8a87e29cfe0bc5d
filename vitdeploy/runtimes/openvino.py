"""OpenVINO: an .onnx file compiled for one OpenVINO device, in a precision that is always explicit.

OpenVINO's CPU plugin runs fp32 models in bf16 by default on CPUs with AVX512_BF16 or AMX (its
INFERENCE_PRECISION_HINT defaults to bf16 there): logits then differ from fp32 by about 1e-2, silently. vitdeploy
never leaves the hint to the plugin: an fp32 file is compiled with f32 pinned; bf16 is used only when named (the
ov-bf16 variant, or precision="bf16"), and refused where the device does not list BF16 among its optimization
capabilities (the plugin's own report of AVX512_BF16 / AMX support, kept in the machine record), rather than
emulated. The precision the compiled model reports back is what describe() says.

Devices: "cpu" (and "auto", which is the CPU: OpenVINO's AUTO plugin would choose for itself, and vitdeploy says
what ran), "gpu" and "npu" where OpenVINO lists them. Reads the file's metadata from OpenVINO's own model
(rt_info "framework"), so it needs neither onnx nor torch; openvino itself is imported when a session or the
probe needs it, so SPEC costs nothing to read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitdeploy.errors import ConfigError, DeviceError, ModelFileError, PrecisionError
from vitdeploy.files.onnx_file import INPUT_NAME
from vitdeploy.runtimes import base

if TYPE_CHECKING:
    import openvino as ov

    from vitdeploy.runtimes.machine import Machine

logger = logging.getLogger(__name__)

NAME = "openvino"
DEVICES = ("auto", "cpu", "gpu", "npu")
# vitdeploy precision -> OpenVINO inference precision hint, and the optimization capability a device must list.
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16", "int8": "INT8"}
# OpenVINO's element types -> numpy's names.
_ELEMENT_TYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "u8": "uint8"}


def core() -> ov.Core:
    """One Core per process: it loads the device plugins once."""
    import openvino as ov

    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


_CORE: ov.Core | None = None


def available_devices() -> list[str]:
    """OpenVINO's device names here, lower case: ['cpu'], plus 'gpu' / 'npu' where their plugins find hardware."""
    return sorted({d.split(".")[0].lower() for d in core().available_devices})


def device_name(device: str) -> str:
    """vitdeploy's device -> OpenVINO's; refuses a device OpenVINO does not list here."""
    if device not in DEVICES:
        raise ConfigError(f"unknown OpenVINO device {device!r}; choose one of: {', '.join(DEVICES)}")
    wanted = "cpu" if device == "auto" else device
    if wanted not in available_devices():
        raise DeviceError(f"OpenVINO has no {wanted.upper()} device here (it lists: "
                          f"{', '.join(d.upper() for d in available_devices())})")
    return wanted.upper()


def capabilities(device: str = "CPU") -> list[str]:
    return list(core().get_property(device, "OPTIMIZATION_CAPABILITIES"))


def check_precision(precision: str, device: str = "CPU", machine: Machine | None = None) -> None:
    """Refuse a precision the device does not run natively (never emulated: a slow bf16 would look like a bug), as
    the machine record says (OpenVINO's optimization capabilities; without a record, as OpenVINO says now)."""
    if precision not in HINTS:
        raise ConfigError(f"OpenVINO runs fp32, bf16 or fp16 (int8 comes from a quantized file), not {precision!r}")
    if machine is not None:
        problem = machine.compute_problem(NAME, device.lower(), precision)
    elif CAPABILITY[precision] not in capabilities(device):
        problem = f"OpenVINO {device} does not compute {precision} natively here: {_needs(device.lower(), precision)}"
    else:
        problem = None
    if problem:
        raise PrecisionError(problem)


def _element(port: ov.Output) -> base.TensorSpec:
    shape = port.get_partial_shape()
    dims = None if shape.rank.is_dynamic else tuple(d.get_length() if d.is_static else None for d in shape)
    return base.TensorSpec(port.get_any_name(), _ELEMENT_TYPES.get(port.get_element_type().get_type_name(),
                                                              port.get_element_type().get_type_name()), dims)


def _read(source: Path | bytes) -> ov.Model:
    """Read an ONNX file (or serialized ModelProto) into OpenVINO; an op it cannot convert is named."""
    try:
        if isinstance(source, bytes):
            return core().read_model(model=source, weights=b"")  # bytes: OpenVINO's ONNX frontend reads the proto
        return core().read_model(str(source))
    except RuntimeError as e:  # OpenVINO raises RuntimeError for every failure: the message says which one
        raise ModelFileError(f"{source if isinstance(source, Path) else 'model bytes'}: "
                             f"{_conversion_failure(str(e))}") from None


def _conversion_failure(message: str) -> str:
    ops = re.search(r"No conversion rule found for operations: ([^\n]+)", message)
    if ops:
        return f"OpenVINO cannot run op(s) {ops.group(1).strip()} (no conversion rule in its ONNX frontend)"
    lines = [line for line in message.splitlines() if line.strip() and not line.startswith(("Exception from",
                                                                                                "Check "))]
    return "OpenVINO cannot read it: " + (lines[0] if lines else message.strip())


# THROUGHPUT splits a batch over the plugin's infer requests (one per stream): below this many images a batch is
# one request's work anyway, and the LATENCY compilation (all threads on one request) answers sooner.
THROUGHPUT_MIN_BATCH = 8
# Static compilations kept per session; batch sizes beyond the first few (a server's ragged batches) run on the
# dynamic compilation instead of compiling again.
STATIC_BATCH_SIZES = 4


class OpenVinoSession(base.Session):
    """One compiled model and one infer request: each run() is a synchronous inference on `threads` threads.

    static_batch: compile once per batch size seen (the first STATIC_BATCH_SIZES of them), the batch axis fixed,
    cached in the session. throughput: batches of THROUGHPUT_MIN_BATCH or more are split over an async infer queue
    compiled with the THROUGHPUT hint (several streams, each on its own threads); describe() says how many streams.
    Both on by default: measured faster on a 2-core AMD Zen 5 with ViT-Ti/16 INT8+bf16 (static: 1.05-1.12x at batch
    1; THROUGHPUT: 1.2x at batch 32; benchmarks/precision_speed.md).
    """

    def __init__(self, model: base.ModelSource, device: str = "auto", precision: str | None = None,
                 threads: int | None = None, static_batch: bool = True, throughput: bool = True,
                 machine: Machine | None = None):
        import openvino as ov

        self.path = None if isinstance(model, bytes) else Path(model)
        if self.path is not None:
            base.check_model_file(self.path)
        ov_device = device_name(device)
        self.model = _read(self.path if self.path is not None else model)  # type: ignore[arg-type]
        self.metadata = {k: _text(v) for k, v in _framework_info(self.model).items()}
        precision, graph_precision = _precision(base.export_record(self.metadata), precision)
        check_precision(precision, ov_device, machine)
        self.inputs = [_element(p) for p in self.model.inputs]
        self.outputs = [_element(p) for p in self.model.outputs]
        self._device = ov_device
        self._config: dict[str, object] = {"INFERENCE_PRECISION_HINT": HINTS[precision],
                                           "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = threads
        self.static_batch, self.throughput = static_batch, throughput
        self.compiled = self._compile(self.model, "LATENCY")
        self._requests: dict[int, ov.InferRequest] = {}  # batch size -> request of its static compilation
        self._queue: ov.AsyncInferQueue | None = None
        self.streams = 1
        if throughput:
            queued = self._compile(self.model, "THROUGHPUT")
            self.streams = int(queued.get_property("NUM_STREAMS"))
            self._queue = ov.AsyncInferQueue(queued, int(queued.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        ran = compiled_precision(self.compiled)
        if ran != precision:  # e.g. a bf16 or f16 hint compiled as f32 on a CPU without them: no error from OpenVINO
            logger.warning("OpenVINO %s was asked for %s and compiled the model in %s: it runs (and is reported) "
                           "as %s", ov_device, precision, ran, ran)
        self.inference_precision = ran
        # An int8 (fp16) file runs its quantized (fp16) ops so and the rest in the compiled precision.
        self.description = base.Description(NAME, ov_device.lower(), ov_device,
                                            graph_precision if graph_precision in ("int8", "fp16") else ran)
        self.request = self.compiled.create_infer_request()

    def _compile(self, model: ov.Model, hint: str) -> ov.CompiledModel:
        try:
            return core().compile_model(model, self._device, {**self._config, "PERFORMANCE_HINT": hint})
        except RuntimeError as e:  # OpenVINO's only exception type; the message names the failure
            raise ModelFileError(f"{self.path or 'model bytes'}: OpenVINO {self._device} cannot compile it: "
                                 f"{_conversion_failure(str(e))}") from None

    def request_for(self, batch_size: int) -> ov.InferRequest:
        """The infer request that runs a batch of this size: (static_batch) that of a compilation for exactly this
        size, made on first use and kept, or the dynamic compilation's."""
        if not self.static_batch or (batch_size not in self._requests and len(self._requests) >= STATIC_BATCH_SIZES):
            return self.request
        if batch_size not in self._requests:
            fixed = self.model.clone()
            shape = fixed.input(INPUT_NAME).get_partial_shape()
            shape[0] = batch_size
            fixed.reshape({INPUT_NAME: shape})
            self._requests[batch_size] = self._compile(fixed, "LATENCY").create_infer_request()
        return self._requests[batch_size]

    def run_outputs(self, batch: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        self.check_open()
        [(name, batch)] = self.feed(batch).items()
        if name != INPUT_NAME:  # a raw-image file: one compilation, images of any size
            self.request.infer({name: batch})
            return {out: np.array(self.request.get_tensor(out).data, dtype=np.float32) for out in names}
        if self._queue is not None and len(batch) >= THROUGHPUT_MIN_BATCH:
            return self._run_queued(batch, names)
        request = self.request_for(len(batch))
        request.infer({INPUT_NAME: batch})
        return {name: np.array(request.get_tensor(name).data, dtype=np.float32) for name in names}

    def _run_queued(self, batch: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """One chunk per infer request of the THROUGHPUT compilation, run concurrently, concatenated in order."""
        assert self._queue is not None
        chunks = [c for c in np.array_split(batch, len(self._queue)) if len(c)]
        parts: list[dict[str, np.ndarray]] = [{} for _ in chunks]

        def done(request: ov.InferRequest, index: int) -> None:
            parts[index] = {name: np.array(request.get_tensor(name).data, dtype=np.float32) for name in names}

        self._queue.set_callback(done)
        for index, chunk in enumerate(chunks):
            self._queue.start_async({INPUT_NAME: chunk}, index)
        self._queue.wait_all()
        return {name: np.concatenate([p[name] for p in parts]) for name in names}

    def describe(self) -> dict[str, str]:
        return {**self.description.to_dict(), "inference_precision": self.inference_precision,
                "streams": str(self.streams), "static_batch": str(self.static_batch).lower()}

    def release(self) -> None:
        # The compiled models hold the weights and the plugin's threads until their last reference goes.
        del self.request, self._requests, self._queue, self.compiled, self.model


# Execution-graph layer types that do the arithmetic: their runtime precision is what the model computes in.
_COMPUTE_LAYERS = ("FullyConnected", "MatMul", "Convolution", "MVN", "Subgraph", "Eltwise", "Softmax")


def compiled_precision(compiled: ov.CompiledModel) -> str:
    """The floating-point precision a compiled model really computes in (fp32 | bf16 | fp16): read from its
    execution graph (each layer's runtimePrecision), not from the hint it was given. OpenVINO 2026.4 compiles a bf16
    hint as f32 on a CPU without bf16, and an f16 hint on one without fp16 as bf16 where the CPU has bf16 (AMD Zen 4),
    else as f32, without an error; its INFERENCE_PRECISION_HINT property follows suit, and is the fallback where the
    graph says nothing."""
    names = {v: k for k, v in HINTS.items()}
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and "runtimePrecision" in info and _text(info["layerType"]) in _COMPUTE_LAYERS:
            precision = names.get(_text(info["runtimePrecision"]))
            if precision is not None:
                counts[precision] = counts.get(precision, 0) + 1
    if counts:  # an int8 file's float layers, or the whole graph: any bf16 / f16 layer means that precision ran
        return next((p for p in ("bf16", "fp16") if counts.get(p)), "fp32")
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return names.get(hint, hint)


def _precision(record: dict, asked: str | None) -> tuple[str, str]:
    """(the precision to compute in, the file's precision). Files made for OpenVINO record theirs (ov-bf16: bf16;
    ov-int8: fp32 for the ops left unquantized); every other file computes in fp32 (an fp16 or int8 graph keeps the
    precision of its own ops). Another precision may be named for an fp32 file only."""
    graph_precision = base.file_precision(record)
    if asked is None:
        return str(record.get("inference_precision") or "fp32"), graph_precision
    if graph_precision != "fp32" and asked not in ("fp32", graph_precision):
        raise ConfigError(f"the file is {graph_precision}; OpenVINO cannot run it as {asked}")
    return asked, graph_precision


def _framework_info(model: ov.Model) -> dict:
    info = model.get_rt_info()
    return dict(info["framework"]) if "framework" in info else {}


def _text(value: object) -> str:
    return value.astype(str) if hasattr(value, "astype") else str(value)


def _open(model: base.ModelSource, device: str, precision: str | None, options: base.SessionOptions,
          machine: Machine) -> OpenVinoSession:
    source = model if isinstance(model, bytes) else Path(model)
    return OpenVinoSession(source, device, precision, options.threads, options.static_batch, options.throughput,
                           machine)


def precisions_of(optimization_capabilities: list[str]) -> tuple[str, ...]:
    """vitdeploy's precisions a device computes natively, from its OPTIMIZATION_CAPABILITIES (FP32, BF16, INT8...)."""
    return tuple(p for p, cap in CAPABILITY.items() if cap in optimization_capabilities)


def _probe() -> base.RuntimeOffer:
    """OpenVINO's devices and, for each, the precisions its optimization capabilities list."""
    import openvino as ov

    devices = tuple(available_devices())
    listed = {device: capabilities(device.upper()) for device in devices}
    precisions = {device: precisions_of(caps) for device, caps in listed.items()}
    return base.RuntimeOffer(NAME, True, bool(devices), "" if devices else "OpenVINO lists no device here", devices,
                        precisions, ov.__version__, {"optimization_capabilities": listed})


def _needs(device: str, precision: str) -> str:
    """The hardware that would let OpenVINO compute `precision` on `device`."""
    if device == "cpu":
        return {"bf16": "bf16 needs a CPU with AVX512_BF16 or AMX (AMD Zen 4 or later, Intel Cooper Lake, Sapphire "
                        "Rapids or later)",
                "fp16": "fp16 needs a CPU with AVX512_FP16 or AMX-FP16 (Intel Sapphire Rapids or later), or an ARM "
                        "CPU with fp16 arithmetic"}.get(precision, f"OpenVINO's CPU plugin does not list {precision}")
    return f"an Intel {device.upper()} with its OpenVINO driver"


SPEC = base.RuntimeSpec(
    name=NAME,
    title="OpenVINO",
    help="OpenVINO: CPU (GPU, NPU where present), f32 pinned unless a file or --precision names bf16 or fp16",
    devices=("cpu", "gpu", "npu"),
    open=_open,
    probe=_probe,
    needs=_needs,
    modules=("openvino",),
    extra="openvino",
)
