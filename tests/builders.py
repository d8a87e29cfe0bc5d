"""What many tests build: the tiny model config, bundles with random weights, exported files, test images, and
deliberately corrupted copies. Plain functions; the shared, session-scoped instances are fixtures in conftest.py."""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitdeploy.core.config import ModelConfig, PreprocessSpec

# Tiny enough that export and parity take a fraction of a second; two blocks so "the first diverging block" means
# something.
TINY = ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, num_classes=3)
SPEC = PreprocessSpec(image_size=16, resize_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
LABELS = ["cat", "dog", "bird"]


def make_bundle(
    folder: Path,
    cfg: ModelConfig = TINY,
    labels: list[str] | None = None,
    seed: int = 0,
    dataset: dict[str, Any] | None = None,
) -> Path:
    """A bundle with random weights; biases and LayerNorm parameters are randomized too, so that no two tensors
    are equal (a freshly initialised ViT has many identical zero biases, which exporters deduplicate)."""
    import torch

    from vitdeploy.files.bundle import BundleInfo, save_bundle
    from vitdeploy.model.vit import build_model

    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    if labels is None:
        labels = LABELS if cfg.num_classes == len(LABELS) else [str(i) for i in range(cfg.num_classes)]
    spec = PreprocessSpec(image_size=cfg.image_size, resize_size=cfg.image_size, mean=SPEC.mean, std=SPEC.std)
    info = BundleInfo(model=cfg, preprocess=spec, labels=labels, metrics={"val_accuracy": 0.875}, dataset=dataset or {})
    return save_bundle(folder, model, info)


def export_tiny_onnx(out: Path, cfg: ModelConfig = TINY, exporter: str | None = None) -> Path:
    """A tiny self-describing .onnx made the way users make them: a bundle, then vitdeploy's exporter (without the
    parity check, which is export's own test)."""
    from vitdeploy.exporting.exporter import export_onnx

    bundle = make_bundle(out.parent / f"{out.stem}-bundle", cfg)
    return export_onnx(bundle, out, verify=False, exporter=exporter).path


def corrupt_block_weight(src: Path, dst: Path, bundle: Path, block: int, delta: float = 0.5) -> str:
    """Copy an exported model, adding `delta` to one weight of MLP fc2 in `block`; return the initializer's name.

    The initializer is found by value (fc2's weight, as stored or transposed), not by node name, so this works on
    any exporter's graph.
    """
    import onnx
    from onnx import numpy_helper

    from vitdeploy.files.bundle import load_bundle

    model, _ = load_bundle(bundle)
    weight = model.blocks[block].mlp.fc2.weight.detach().numpy()
    proto = onnx.load(str(src))
    target = next(
        t for t in proto.graph.initializer
        if any(np.array_equal(numpy_helper.to_array(t), w) for w in (weight, weight.T))
    )
    values = numpy_helper.to_array(target).copy()
    values.flat[0] += delta
    target.CopyFrom(numpy_helper.from_array(values, target.name))
    onnx.save(proto, str(dst))
    return target.name


def smooth_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like test image: smooth gradients plus a few hard edges, deterministic."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    channels = [127 + 100 * np.sin(x / (17 + 9 * c) + y / (23 + 5 * c) + phase[c]) for c in range(3)]
    arr = np.stack(channels, axis=-1)
    arr[height // 3 : height // 2, width // 4 : width // 2] = (250, 20, 20)  # a sharp red block
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def encoded(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    """The image as the bytes of a `fmt` file (PIL's save options)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height pixels but carries no pixel data: a decompression-bomb header."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def without_modules(*blocked: str, why: str = "a deployment install has no training extra") -> str:
    """Code that runs vitdeploy's CLI (arguments after -c CODE) with the named top-level modules made unimportable,
    as on a machine whose install lacks the extras that bring them."""
    return f"""
import importlib.abc, runpy, sys

BLOCKED = {blocked!r}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: {why}")

sys.meta_path.insert(0, Blocker())
try:
    __import__(BLOCKED[0])
except ImportError:
    pass
else:
    raise SystemExit("the blocker does not work")
sys.argv = ["vitdeploy", *sys.argv[1:]]
runpy.run_module("vitdeploy", run_name="__main__")
"""


# As on a deployment machine that installed `pip install vitdeploy` only: the [train] extra's modules are missing.
WITHOUT_TRAINING_EXTRA = without_modules("torch", "onnx", "onnxscript", "safetensors", "sklearn")


@contextlib.contextmanager
def running_server(model: Path, deadline_s: float = 60, **settings: Any) -> Iterator[Any]:
    """`vitdeploy serve` in this process on an ephemeral loopback port (ServeSettings from `settings`), stopped on
    exit. Yields the prepared server (its .url)."""
    import threading
    import time

    from vitdeploy.serving.server import ServeSettings, prepare

    prepared = prepare(model, ServeSettings(port=0, device="cpu", threads=1, **settings))
    thread = threading.Thread(target=prepared.server.run, kwargs={"sockets": [prepared.sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + deadline_s
    while not prepared.server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert prepared.server.started, "the server did not start"
    try:
        yield prepared
    finally:
        prepared.server.should_exit = True
        thread.join(deadline_s)
        assert not thread.is_alive()


@contextlib.contextmanager
def captured_notes(name: str = "vitdeploy") -> Iterator[list[str]]:
    """The messages vitdeploy logs (at INFO and above) while the block runs, as a list of strings."""
    notes: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    logger, handler = logging.getLogger(name), Collect(logging.INFO)
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield notes
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def dynamic_int8_onnx(base: Path, out: Path) -> Path:
    """`base` with ONNX Runtime's dynamic INT8 quantization of its MatMuls and the export record the int8 variant's
    --int8-method dynamic writes: a real file whose answers depend on the batch (activation scales per batch),
    built without the accuracy gate (which needs a bundle with a dataset)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vitdeploy.exporting.ladder import describe_variant
    from vitdeploy.files.onnx_file import read_metadata

    quantize_dynamic(str(base), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    proto = onnx.load(str(out))
    describe_variant(proto, read_metadata(base), "int8", None, {"method": "dynamic", "activations": "per batch"})
    onnx.save(proto, str(out))
    return out


def wait_until(condition, seconds: float = 60.0) -> bool:
    """Poll `condition` until it holds or `seconds` pass: a guard against hanging, not a timing check."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()
