"""onnxruntime-web in a headless Chromium as a runtime: the same .onnx a browser page would run, on WebAssembly
(1 or more threads) or WebGPU, driven from Python over loopback (vitdeploy.runtimes.web.driver).

    session = open_runtime("web", path, device="wasm", threads=2)   # starts a browser; session.close() ends it
    session.run(batch)                       # the tensor goes to the page, onnxruntime-web runs it
    session.preprocess_image(data)           # the page's own JavaScript preprocessing (vitdeploy.js)
    session.predict_image(data)              # JavaScript preprocessing + the model, all in the page

Refused before a browser starts (exit 2), and where none is installed before the install is asked for: a file
over WEB_MAX_MODEL_BYTES, a file with external data, an fp16 file on WebAssembly, a variant made for another runtime.
An op onnxruntime-web has no kernel for is named from its own message (exit 2).
"""

from __future__ import annotations

import functools
import logging
import re
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitdeploy.errors import ConfigError, DeviceError, ModelFileError, PageError
from vitdeploy.files.onnx_file import OUTPUT_NAME
from vitdeploy.files.onnx_wire import metadata_props_from_bytes
from vitdeploy.runtimes import base
from vitdeploy.runtimes.web import toolchain
from vitdeploy.runtimes.web.driver import Browser, page_files
from vitdeploy.runtimes.web.limits import (
    ASSETS,
    DEVICE_PRECISIONS,
    check_variant,
    check_web_file,
    check_web_size,
)

log = logging.getLogger(__name__)

NAME = "web"
DEVICES = ("auto", "wasm", "webgpu")
RUNTIME_PAGE = "harness.html"
GPU_DEVICE_NODES = ("/dev/dri/renderD128", "/dev/nvidia0")
_MISSING_OP = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")
_UNKNOWN_OP = re.compile(r"([\w.]*):(\w+)\((-?\d+)\) is not a registered function/op")


class WebSession(base.Session):
    """One .onnx open in onnxruntime-web, in its own headless Chromium (closed by close() or when collected)."""

    def __init__(self, model: str | Path | bytes, device: str = "auto", threads: int | None = None):
        device, data, self.metadata = read_web_model(model, device)
        self.path = None if isinstance(model, bytes) else Path(model)
        name = self.path or "model bytes"
        precision = self.graph_precision
        executable = toolchain.find_browser()
        if executable is None:
            raise DeviceError(f"the web runtime needs a Chromium browser: {toolchain.BROWSER_INSTALL}")
        threads = 1 if threads is None else threads
        files = page_files(ASSETS, toolchain.ensure_ort_web(), data, toolchain.ORT_WEB_FILES)
        try:
            self.browser = Browser(executable, files, f"{RUNTIME_PAGE}?device={device}&threads={threads}",
                                   gpu=device == "webgpu")
        except PageError as e:
            raise _load_error(name, device, str(e)) from None
        self._finalizer = weakref.finalize(self, self.browser.close)
        info = self.browser.info
        if threads > 1 and not info.get("isolated"):
            self.close()
            raise DeviceError("multithreaded WebAssembly needs a cross-origin isolated page, and this one is not")
        self.threads = int(info.get("threads", threads))
        self.inputs = [_tensor(spec) for spec in info["inputs"]]
        self.outputs = [_tensor(spec) for spec in info["outputs"]]
        self.versions = {"onnxruntime-web": info.get("ort", ""), "browser": info.get("browser", "")}
        self.description = base.Description(NAME, device, device, precision)

    def run_outputs(self, batch: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        self.check_open()
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        header, body = self._call({"op": "run", "dims": list(batch.shape), "outputs": list(names)}, batch.tobytes())
        return _split_outputs(header["outputs"], body)

    def preprocess_image(self, data: bytes, spec: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The page's preprocessing of one encoded image (the model's own spec, or `spec`, a PreprocessSpec dict):
        the float32 (3, S, S) input and the uint8 (S, S, 3) crop it was normalized from."""
        header, body = self._call({"op": "preprocess", "spec": spec}, data)
        return _pixels(header, body)

    def predict_image(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """One encoded image through the page's preprocessing and the model: its input (3, S, S) and logits."""
        header, body = self._call({"op": "predict", "spec": None}, data)
        pixels, _ = _pixels(header, body[: _input_bytes(header)])
        logits = _split_outputs(header["outputs"], body[_input_bytes(header):])[OUTPUT_NAME]
        return pixels, logits[0]

    def time_runs(self, batch: np.ndarray, warmup: int, runs: int) -> list[float]:
        """Milliseconds per session.run on the page (performance.now around each call, no transfer)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        header, _ = self._call({"op": "time", "dims": list(batch.shape), "warmup": warmup, "runs": runs},
                               batch.tobytes())
        return [float(ms) for ms in header["ms"]]

    def _call(self, job: dict, blob: bytes) -> tuple[dict, bytes]:
        self.check_open()
        try:
            return self.browser.call(job, blob)
        except PageError as e:
            raise DeviceError(f"onnxruntime-web failed on {self.path or 'the model'}: {e}") from None

    def release(self) -> None:
        self._finalizer()  # ends the browser (once, whether closed here or collected)


def _load_error(name: object, device: str, message: str) -> Exception:
    """onnxruntime-web's refusal to load a file: a missing op named (exit 2), WebGPU absent (exit 2)."""
    missing, unknown = _MISSING_OP.search(message), _UNKNOWN_OP.search(message)
    if missing:
        op, version, node = missing.groups()
        return ModelFileError(f"{name}: onnxruntime-web {toolchain.ORT_WEB_VERSION} ({device}) has no kernel for "
                              f"op {op} (opset {version}, node {node!r}) with these types")
    if unknown:
        domain, op, version = unknown.groups()
        opset = f", opset {version}" if int(version) >= 0 else ""  # -1: a domain it does not know at all
        return ModelFileError(f"{name}: onnxruntime-web {toolchain.ORT_WEB_VERSION} ({device}) has no op {op} "
                              f"(domain {domain or 'ai.onnx'}{opset})")
    if "WebGPU is not usable" in message:
        return DeviceError(f"--device webgpu: {message}")
    return ModelFileError(f"{name}: onnxruntime-web could not load it: {message}")


def _tensor(spec: dict) -> base.TensorSpec:
    shape = spec.get("shape")
    return base.TensorSpec(spec["name"], spec.get("type") or "float32",
                      tuple(d if isinstance(d, int) else str(d) for d in shape) if shape is not None else None)


def _split_outputs(outputs: list[dict], body: bytes) -> dict[str, np.ndarray]:
    arrays, at = {}, 0
    for output in outputs:
        count = int(np.prod(output["dims"]))
        arrays[output["name"]] = np.frombuffer(body, np.float32, count, at).reshape(output["dims"]).copy()
        at += count * 4
    return arrays


def _input_bytes(header: dict) -> int:
    return int(np.prod(header["dims"])) * 4


def _pixels(header: dict, body: bytes) -> tuple[np.ndarray, np.ndarray]:
    dims = header["dims"][1:]
    count = int(np.prod(dims))
    tensor = np.frombuffer(body, np.float32, count).reshape(dims).copy()
    crop = np.frombuffer(body, np.uint8, offset=count * 4).copy()
    return tensor, crop.reshape(dims[1], dims[2], 3) if crop.size else crop


def web_status() -> tuple[bool, str, tuple[str, ...]]:
    """(installed, why not, devices): WebAssembly wherever a browser and onnxruntime-web are; WebGPU where the
    browser gets a GPU adapter (asked only where the machine has a GPU device node: elsewhere it is not usable)."""
    missing = toolchain.missing_parts()
    if missing:
        return False, f"the web runtime needs {' and '.join(missing)}: {toolchain.install_commands()}", ()
    return True, "", ("wasm", "webgpu") if webgpu_usable() else ("wasm",)


@functools.cache
def webgpu_usable() -> bool:
    """Whether headless Chromium gets a WebGPU adapter here (asked once per process, only with a GPU device)."""
    if not any(Path(p).exists() for p in GPU_DEVICE_NODES):
        return False
    executable = toolchain.find_browser()
    if executable is None:
        return False
    files = page_files(ASSETS, toolchain.ensure_ort_web(), b"", toolchain.ORT_WEB_FILES)
    try:
        with Browser(executable, files, f"{RUNTIME_PAGE}?probe=webgpu", gpu=True, startup_timeout=60) as browser:
            return bool(browser.info.get("webgpu"))
    except (DeviceError, PageError) as e:
        log.info("WebGPU probe failed: %s", e)
        return False


def read_web_model(model: base.ModelSource, device: str) -> tuple[str, bytes, dict[str, str]]:
    """(the device, the file's bytes, its metadata) of a file onnxruntime-web can load on `device`; what it cannot is
    refused here, without a browser."""
    if device not in DEVICES:
        raise ConfigError(f"the web runtime runs on {', '.join(DEVICES[1:])}, not {device!r}")
    device = "wasm" if device == "auto" else device
    path = None if isinstance(model, bytes) else Path(model)
    name = path or "model bytes"
    if path is not None:
        base.check_model_file(path)
        check_web_size(name, path.stat().st_size)  # before reading a file that may be many GiB
    data = model if isinstance(model, bytes) else path.read_bytes()
    check_web_file(name, data)
    try:
        metadata = metadata_props_from_bytes(data)
    except ValueError:
        raise ModelFileError(f"{name} is not an ONNX model (it does not parse)") from None
    check_variant(name, metadata, device, base.file_precision(base.export_record(metadata)))
    return device, data, metadata


def _check_file(model: base.ModelSource, device: str) -> None:
    read_web_model(model, device)


def _open(model: base.ModelSource, device: str, precision: str | None, options: base.SessionOptions,
          machine: object) -> WebSession:
    return WebSession(model, device, options.threads)


def _probe() -> base.RuntimeOffer:
    installed, reason, devices = web_status()
    return base.RuntimeOffer(NAME, installed, installed, reason, devices, {d: DEVICE_PRECISIONS[d] for d in devices},
                        toolchain.ORT_WEB_VERSION if installed else None,
                        {"browser": toolchain.find_browser()} if installed else {})


def _needs(device: str, precision: str) -> str:
    if device == "webgpu":
        return "a GPU that headless Chromium gets a WebGPU adapter for"
    return f"onnxruntime-web runs {', '.join(DEVICE_PRECISIONS.get(device, ()))} on {device}"


SPEC = base.RuntimeSpec(
    name=NAME,
    title="onnxruntime-web",
    help="onnxruntime-web in headless Chromium (WebAssembly, WebGPU): what a browser page would compute; only "
         "when named (each session starts a browser)",
    devices=("wasm", "webgpu"),
    open=_open,
    probe=_probe,
    needs=_needs,
    install=toolchain.install_commands,
    check_file=_check_file,
    by_default=False,
)
