"""What is timed: the model under test (an exported .onnx and its weights, or a preset with random weights), the
files each variant runs, and which variants can run here."""

from __future__ import annotations

import collections
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitdeploy.bench.variants import VARIANTS, BenchSettings, device_problem
from vitdeploy.checkpoint import BundleInfo, read_bundle_info
from vitdeploy.config import ModelConfig, get_preset
from vitdeploy.errors import ConfigError, DeviceError, ModelFileError
from vitdeploy.runtime import load_model_info


@dataclass
class ModelUnderTest:
    """The model both sides run: the .onnx file and, for the PyTorch variants, the weights it came from."""

    onnx_path: Path
    config: ModelConfig
    source: str  # "preset:vit-ti16", or the .onnx path
    bundle: Path | None = None
    torch_state: dict[str, Any] | None = None  # weights already in memory (preset); else read from `bundle`

    @property
    def has_weights(self) -> bool:
        return self.torch_state is not None or self.bundle is not None

    def torch_model(self) -> Any:
        """The PyTorch model with these weights (on the CPU)."""
        from vitdeploy.checkpoint import load_bundle
        from vitdeploy.model import build_model

        if self.torch_state is not None:
            model = build_model(self.config)
            model.load_state_dict(self.torch_state)
            return model
        assert self.bundle is not None  # plan_variants only plans PyTorch variants with weights
        return load_bundle(self.bundle)[0]


def model_from_preset(name: str, workdir: Path, seed: int = 0) -> ModelUnderTest:
    """Build a preset's architecture with random weights (seeded) and export it, so anyone can compare."""
    import torch

    from vitdeploy.export import export_model
    from vitdeploy.model import build_model

    preset = get_preset(name)
    torch.manual_seed(seed)
    model = build_model(preset.model).eval()
    info = BundleInfo(model=preset.model, preprocess=preset.preprocess_spec(),
                      labels=[str(i) for i in range(preset.model.num_classes)])
    # Parity is export's and verify's business; random weights need no accuracy check.
    path = export_model(model, info, workdir / f"{name}.onnx", verify=False).path
    return ModelUnderTest(path, preset.model, f"preset:{name}", torch_state=model.state_dict())


def model_from_files(onnx_path: Path | None, bundle: Path | None) -> ModelUnderTest:
    """An exported .onnx (default: the newest under models/) and its bundle (default: the one it names)."""
    from vitdeploy.predict import resolve_model

    path = resolve_model(onnx_path)
    info = load_model_info(path)
    if bundle is None:
        named = info.export.get("bundle")
        bundle = Path(named) if named and Path(named).is_dir() else None
    if bundle is not None:
        bundle_info = read_bundle_info(bundle)
        if info.model_config is not None and bundle_info.model != info.model_config:
            raise ModelFileError(f"{path} and bundle {bundle} describe different model configs")
    config = info.model_config or (read_bundle_info(bundle).model if bundle else None)
    if config is None:
        raise ModelFileError(f"{path} has no model config in its metadata and no --bundle was given")
    return ModelUnderTest(path, config, str(path), bundle=bundle)


def plan_variants(settings: BenchSettings, model: ModelUnderTest) -> tuple[list[str], dict[str, str]]:
    """(variants to run, skipped variant -> reason). Explicitly requested variants that cannot run raise."""
    chosen, skipped = [], {}
    for name in settings.requested:
        spec = VARIANTS[name]
        if spec.runtime == "torch" and not model.has_weights:
            reason = "no model bundle: PyTorch needs the weights (pass --bundle DIR)"
        else:
            reason = device_problem(spec)
        if reason is None:
            chosen.append(name)
        elif settings.variants:
            error = DeviceError if spec.device == "cuda" else ConfigError
            raise error(f"variant {name} cannot run here: {reason}")
        else:
            skipped[name] = reason
    return chosen, skipped


def fuse_for_cpu(path: Path, config: ModelConfig, out: Path) -> dict[str, int]:
    """The fused fp32 variant, made exactly as `export --optimize` makes it; returns graph op counts."""
    import onnx

    from vitdeploy.optimize import fuse_transformer

    fused, _ = fuse_transformer(path, config)
    onnx.save_model(fused, os.fspath(out))
    return graph_op_counts(out)


def quantize_int8(fused: Path, out: Path) -> dict[str, int]:
    """Dynamic INT8 (a preset has no training images to calibrate static INT8), as `export --precision int8
    --int8-method dynamic` makes it."""
    import onnx

    from vitdeploy.optimize import to_int8_dynamic

    with tempfile.TemporaryDirectory(dir=out.parent) as workdir:
        quantized, _ = to_int8_dynamic(onnx.load(os.fspath(fused)), Path(workdir))
    onnx.save_model(quantized, os.fspath(out))
    return graph_op_counts(out)


def convert_fp16(fused: Path, out: Path) -> dict[str, int]:
    """fp16 as `export --precision fp16` makes it: fp32 input/output, LayerNorm and Softmax kept fp32."""
    import onnx

    from vitdeploy.optimize import to_fp16

    onnx.save_model(to_fp16(onnx.load(os.fspath(fused))), os.fspath(out))
    return graph_op_counts(out)


def graph_op_counts(path: Path) -> dict[str, int]:
    """Node count per op type of an .onnx file, most frequent first."""
    import onnx

    ops = collections.Counter(node.op_type for node in onnx.load(os.fspath(path), load_external_data=False).graph.node)
    return dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))
