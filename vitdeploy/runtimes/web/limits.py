"""What onnxruntime-web can load, checked before a browser starts: shared by the web runtime (session.py) and
`vitdeploy web`'s folder (serving/web_folder.py), which hands the same file to a browser page."""

from __future__ import annotations

from pathlib import Path

from vitdeploy.errors import ConfigError, ModelFileError
from vitdeploy.files.onnx_wire import external_data_locations
from vitdeploy.runtimes.base import export_record

NAME = "web"
ASSETS = Path(__file__).resolve().parent / "assets"  # the page: vitdeploy.js, index.html, the harness
# onnxruntime-web reads the whole file into the WebAssembly heap (32-bit: 4 GiB at most) and builds its weights
# there too; protobuf cannot hold a message over 2 GiB in one file either. So 2 GiB, weights included.
WEB_MAX_MODEL_BYTES = 2**31 - 1
# Precisions each device runs: WebAssembly has no fp16 kernels for most ops onnxruntime's CPU provider fuses.
DEVICE_PRECISIONS = {"wasm": ("fp32", "int8"), "webgpu": ("fp32", "fp16")}


def check_web_size(name: object, size: int) -> None:
    if size > WEB_MAX_MODEL_BYTES:
        raise ModelFileError(f"{name} is {size / 2**30:.2f} GiB: onnxruntime-web loads at most "
                             f"{WEB_MAX_MODEL_BYTES / 2**30:.0f} GiB (the model and its weights share a 4 GiB "
                             "WebAssembly heap); export a smaller or int8 variant")


def check_web_file(name: object, data: bytes) -> None:
    """What onnxruntime-web cannot load, refused before a browser starts."""
    check_web_size(name, len(data))
    try:
        external = external_data_locations(data)
    except ValueError:
        return  # not protobuf: the page's loader says what it is not
    if external:
        raise ModelFileError(f"{name} keeps weights in external data ({external[0][1]}): the web runtime needs "
                             "one self-contained file")


def check_variant(name: object, metadata: dict[str, str], device: str, precision: str) -> None:
    """A variant made for another runtime (its precision is that runtime's setting) or a precision this device has
    no kernels for is refused with the variant that would run."""
    record = export_record(metadata)
    made_for = record.get("runtime")
    if made_for and made_for not in ("ort", NAME):
        raise ConfigError(f"{name} is {made_for}'s {record.get('variant', precision)} variant: run it with "
                          f"--runtime {made_for}; the web runtime runs {', '.join(DEVICE_PRECISIONS['wasm'])} "
                          "files on wasm")
    if precision not in DEVICE_PRECISIONS[device]:
        raise ConfigError(f"{name} is {precision}: the web runtime runs {', '.join(DEVICE_PRECISIONS[device])} "
                          f"files on {device}")
