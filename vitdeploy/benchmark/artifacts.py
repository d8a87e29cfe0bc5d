"""What is timed: the model under test, the file each variant runs, and which variants can run here.

Bench times the files `vitdeploy export` writes, never a rebuild of them:

    model.onnx             ort-cpu, ort-cuda, ort-cuda-graph, ort-tensorrt, ov-cpu
    model.fp32-opt.onnx    ort-cpu-fused    (export --optimize)
    model.int8.onnx        ort-cpu-int8     (export --precision int8: static or dynamic, as its metadata says)
    model.fp16.onnx        ort-cuda-fp16    (export --precision fp16)
    model.ov-bf16.onnx     ov-cpu-bf16      (export --precision ov-bf16)
    model.ov-int8.onnx     ov-cpu-int8      (export --precision ov-int8)

A variant whose file is missing, or was made from other weights than model.onnx, is skipped (refused when named
in --variants) with the export command that makes it. Each file's metadata says what it is: its precision, its
quantization, and the accuracy check export ran on it (vitdeploy.verification.parity: the accuracy gate for a variant, parity
for model.onnx), which the report repeats per variant.

A preset (random weights, no dataset) is exported into a temporary folder, and its variants are built there by the
functions export builds them with; static INT8 is calibrated on seeded random inputs, as there are no images.
Their accuracy is not judged: random weights have none to keep.
"""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitdeploy.benchmark.timing import input_batch
from vitdeploy.benchmark.variants import VARIANTS, BenchSettings, VariantSpec, runtime_problem
from vitdeploy.core.config import ModelConfig, get_preset
from vitdeploy.errors import ConfigError, DeviceError, ModelFileError
from vitdeploy.exporting.graphs import VariantSource, build_variant
from vitdeploy.exporting.ladder import describe_variant
from vitdeploy.files.bundle import BundleInfo, load_bundle, read_bundle_info
from vitdeploy.files.discovery import resolve_model
from vitdeploy.files.onnx_file import DEFAULT_FILE_NAME, OnnxModelInfo, parse_metadata, save_onnx
from vitdeploy.files.variants import EXPORT
from vitdeploy.runtimes import read_model_info

# Random inputs set the static INT8 scales of a preset: more of them would not make the scales meaningful.
PRESET_CALIBRATION_IMAGES = 32
RANDOM_WEIGHTS = "accuracy not judged (random weights)"
NO_WEIGHTS = "no model bundle: PyTorch needs the weights (pass --bundle DIR)"


@dataclass(frozen=True)
class OnnxFile:
    """An .onnx file as bench reads it, in one parse: its self-description and its graph's op counts."""

    path: Path
    info: OnnxModelInfo
    graph_ops: dict[str, int]  # op type -> nodes in the file (ORT fuses further when it creates a session)

    @classmethod
    def read(cls, path: Path) -> OnnxFile:
        import onnx

        proto = onnx.load(os.fspath(path), load_external_data=False)
        ops = collections.Counter(node.op_type for node in proto.graph.node)
        return cls(path, parse_metadata(path, {p.key: p.value for p in proto.metadata_props}),
                   dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))))

    @property
    def weights_sha256(self) -> str | None:
        return self.info.export.get("weights_sha256")


@dataclass
class ModelUnderTest:
    """The model both sides run: the exported .onnx (with its variants beside it) and, for the PyTorch variants,
    the weights it came from."""

    onnx_path: Path
    config: ModelConfig
    source: str  # "preset:vit-ti16", or the .onnx path
    bundle: Path | None = None
    torch_state: dict[str, Any] | None = None  # weights already in memory (preset); else read from `bundle`
    random_weights: bool = False  # a preset: no accuracy to judge
    _files: dict[Path, OnnxFile] = field(default_factory=dict, repr=False)

    @property
    def has_weights(self) -> bool:
        return self.torch_state is not None or self.bundle is not None

    def torch_model(self) -> Any:
        """The PyTorch model with these weights (on the CPU)."""
        from vitdeploy.model.vit import build_model

        if self.torch_state is not None:
            model = build_model(self.config)
            model.load_state_dict(self.torch_state)
            return model
        assert self.bundle is not None  # plan_variants only plans PyTorch variants with weights
        return load_bundle(self.bundle)[0]

    def file_path(self, spec: VariantSpec) -> Path:
        """The file an ONNX Runtime variant times (it may not exist)."""
        return spec.export.path(self.onnx_path) if spec.export else self.onnx_path

    def read(self, path: Path) -> OnnxFile:
        """The file, read once."""
        if path not in self._files:
            self._files[path] = OnnxFile.read(path)
        return self._files[path]

    def file(self, spec: VariantSpec) -> OnnxFile:
        return self.read(self.file_path(spec))


def model_from_preset(name: str, workdir: Path, seed: int = 0, export_variants: Collection[str] = ()) -> ModelUnderTest:
    """Build a preset's architecture with random weights (seeded) and export it to workdir/model.onnx, with the
    export variants asked for beside it (build_variant_files), so anyone can compare."""
    import torch

    from vitdeploy.exporting.exporter import export_model
    from vitdeploy.model.vit import build_model

    preset = get_preset(name)
    torch.manual_seed(seed)
    model = build_model(preset.model).eval()
    info = BundleInfo(model=preset.model, preprocess=preset.preprocess_spec(),
                      labels=[str(i) for i in range(preset.model.num_classes)])
    # Parity is export's and verify's business; random weights need no accuracy check.
    path = export_model(model, info, workdir / DEFAULT_FILE_NAME, verify=False).path
    build_variant_files(path, preset.model, export_variants, seed)
    return ModelUnderTest(path, preset.model, f"preset:{name}", torch_state=model.state_dict(), random_weights=True)


def build_variant_files(base: Path, config: ModelConfig, variants: Collection[str], seed: int = 0) -> None:
    """Write the export variants (fp32-opt, fp16, int8, ov-bf16, ov-int8) of `base` beside it with export's
    builders, without the accuracy gate (there are no images to judge them on): INT8 is calibrated on seeded random
    inputs.

    Each file carries base's metadata with its own precision, variant, runtime and quantization, as export's do.
    """
    base_meta = read_model_info(base).raw
    with tempfile.TemporaryDirectory(dir=base.parent) as workdir:
        source = VariantSource(base, config, Path(workdir),
                               lambda: input_batch(config, PRESET_CALIBRATION_IMAGES, seed))
        for row in (v for v in EXPORT.values() if v.builder and v.name in variants):
            built = build_variant(row, source)
            describe_variant(built.proto, base_meta, row.name, built.fusions, built.quantization, source.isa)
            save_onnx(built.proto, row.path(base))


def model_from_files(onnx_path: Path | None, bundle: Path | None) -> ModelUnderTest:
    """An exported .onnx (default: the newest under models/) and its bundle (default: the one it names)."""
    path = resolve_model(onnx_path)
    info = read_model_info(path)
    if info.export.get("variant"):
        base = path.with_name(path.stem.rpartition(".")[0] + path.suffix)
        raise ConfigError(f"{path} is the {info.export['variant']} variant of {base.name}: give {base}, and bench "
                          "times the variants beside it (--variants ort-cpu-fused,ort-cpu-int8,ov-cpu-bf16,...)")
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


def export_command(model: ModelUnderTest, spec: VariantSpec) -> str:
    """The command that writes `spec`'s file beside model.onnx."""
    assert spec.export is not None
    flag = spec.export.export_flag
    default_out = model.bundle is not None and model.onnx_path.resolve() == (model.bundle / DEFAULT_FILE_NAME).resolve()
    out = "" if default_out else f" --out {model.onnx_path}"
    return f"vitdeploy export {model.bundle or 'BUNDLE'}{out} {flag}"


def file_problem(model: ModelUnderTest, spec: VariantSpec) -> str | None:
    """Why `spec`'s file cannot be timed as a variant of model.onnx, or None."""
    if not spec.export:
        return None
    path = model.file_path(spec)
    if not path.is_file():
        return f"no {path.name} beside {model.onnx_path.name}: make it with `{export_command(model, spec)}`"
    recorded = model.file(spec).info.export.get("precision")
    if recorded != spec.precision:
        return f"{path.name} records precision {recorded}, not {spec.precision}"
    if model.file(spec).weights_sha256 != model.read(model.onnx_path).weights_sha256:
        return (f"{path.name} was made from other weights than {model.onnx_path.name} (an earlier export): "
                f"make it again with `{export_command(model, spec)}`")
    return None


def plan_variants(settings: BenchSettings, model: ModelUnderTest) -> tuple[list[str], dict[str, str]]:
    """(variants to run, skipped variant -> reason). Explicitly requested variants that cannot run raise."""
    chosen, skipped = [], {}
    for name in settings.requested:
        spec = VARIANTS[name]
        if spec.runtime == "torch":
            reason = runtime_problem(spec) if model.has_weights else NO_WEIGHTS
        else:
            reason = runtime_problem(spec) or file_problem(model, spec)
        if reason is None:
            chosen.append(name)
        elif settings.variants:
            error = DeviceError if spec.device == "cuda" else ConfigError
            raise error(f"variant {name} cannot run here: {reason}")
        else:
            skipped[name] = reason
    return chosen, skipped


def describe_file(model: ModelUnderTest, spec: VariantSpec) -> dict[str, Any]:
    """What the report says about the file a variant ran: its path, graph ops, quantization and accuracy check."""
    if spec.runtime == "torch":
        return {"file": str(model.bundle) if model.bundle else None, "quantization": None, "accuracy": None}
    onnx_file = model.file(spec)
    return {"file": str(onnx_file.path), "graph_ops": onnx_file.graph_ops,
            "quantization": onnx_file.info.export.get("quantization"), "accuracy": accuracy_record(model, onnx_file)}


def accuracy_record(model: ModelUnderTest, onnx_file: OnnxFile) -> dict[str, Any]:
    """The accuracy check export ran on this file, from its metadata: the accuracy gate (a variant) or parity
    (model.onnx). judged is False for random weights, and for a file exported without the check."""
    summary = onnx_file.info.parity
    if model.random_weights or not summary:
        note = RANDOM_WEIGHTS if model.random_weights else "accuracy not checked at export (--no-verify)"
        return {"judged": False, "passed": None, "check": None, "note": note, "summary": None}
    verdict = "passed" if summary.get("passed") else "FAILED"
    if onnx_file.info.export.get("variant"):
        check = "accuracy gate"
        note = (f"{verdict} export's accuracy gate: accuracy {summary['accuracy']:.2%} vs PyTorch fp32 "
                f"{summary['reference_accuracy']:.2%}, top-1 agreement {summary['top1_agreement']:.1%} on "
                f"{summary['samples']['real']} held-out images")
    else:
        check = "parity"
        note = (f"{verdict} export's parity check against PyTorch: max |diff| {summary['max_abs']:.1e}, "
                f"top-1 agreement {summary['top1_agreement']:.1%}")
    return {"judged": True, "passed": bool(summary.get("passed")), "check": check, "note": note, "summary": summary}
