"""Helpers shared by test_export.py and test_verify.py: tiny bundles and deliberately corrupted .onnx copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitdeploy.config import ModelConfig, PreprocessSpec

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

    from vitdeploy.checkpoint import BundleInfo, save_bundle
    from vitdeploy.model import build_model

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


def corrupt_block_weight(src: Path, dst: Path, block: int, delta: float = 0.5) -> str:
    """Copy an exported model, adding `delta` to one weight of the first MatMul in MLP fc2 of `block`.

    Returns the changed initializer's name.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    node = next(n for n in proto.graph.node if n.name.startswith(f"/blocks.{block}/mlp/fc2/MatMul"))
    initializers = {t.name: t for t in proto.graph.initializer}
    weight = initializers[next(name for name in node.input if name in initializers)]
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += delta
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(proto, str(dst))
    return weight.name
