"""Parity between PyTorch (the bundle) and ONNX Runtime (the .onnx file), and where it breaks when it does.

One code path (check_parity) serves both `vitdeploy verify` and the check that `vitdeploy export` runs before it
moves a file into place:
  - the same inputs (real held-out images through THE preprocessing, plus random inputs) go through PyTorch once
    and through ONNX Runtime at every batch size, on every provider that a session really gets;
  - every sample's logits are compared with PyTorch's, and with its own batch-1 ONNX output (a sample's result
    must not depend on what else is in its batch);
  - the named intermediates (embed, block_i, norm) are exposed as extra outputs of an in-memory copy of the graph
    and compared with forward_with_intermediates(), so a failure names the first block that diverges.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdeploy.checkpoint import BundleInfo, find_latest_bundle, load_bundle, read_bundle_info
from vitdeploy.config import PreprocessSpec
from vitdeploy.errors import BundleError, CheckFailed, ConfigError, DataError, ModelFileError
from vitdeploy.export import DEFAULT_FILE_NAME
from vitdeploy.runtime import (
    CUDA,
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxModelInfo,
    make_session,
    parse_metadata,
    run_batch,
    usable_providers,
)

if TYPE_CHECKING:
    import onnx

DEFAULT_BATCH_SIZES = (1, 7, 32)
DEFAULT_REAL_IMAGES = 64
DEFAULT_RANDOM_INPUTS = 32
# Export checks a few samples at batch 1 and 7: odd and unlike the traced batch (2), which catches a batch size
# baked into a Reshape.
EXPORT_BATCH_SIZES = (1, 7)
EXPORT_REAL_IMAGES = 4
EXPORT_RANDOM_INPUTS = 4
INTERMEDIATES_SAMPLES = 4  # samples run through the graph copy with intermediates exposed
RANDOM_SEED = 0


@dataclass(frozen=True)
class Tolerance:
    """When ONNX logits count as equal to PyTorch's: |onnx - torch| <= atol + rtol * |torch| everywhere, and at
    least `min_top1_agreement` of the samples get the same top-1 class."""

    atol: float
    rtol: float
    min_top1_agreement: float = 1.0
    real_images_only: bool = False  # judge only the real images (random inputs are not what the variant is for)

    def allows(self, reference: np.ndarray, candidate: np.ndarray) -> bool:
        return bool(np.all(np.abs(candidate - reference) <= self.atol + self.rtol * np.abs(reference)))


# Per precision, as recorded by export in the file's metadata. fp32: ONNX Runtime's own fp32 validation
# tolerance (1e-4); measured fp32 differences here are ~1e-6, so this leaves a 100x margin without hiding a bug.
# fp16: ONNX Runtime's own fp16 validation tolerance (atol 1e-1, rtol 5e-2); measured here (digits bundle, ORT CPU)
# 5e-3 at most. int8: no standard exists; on real held-out images the logits (|x| up to 4.5 for digits) differed
# by at most 0.13 (digits, static), 0.06 (digits, dynamic), 0.02 / 0.04 (ViT-Ti): 0.5 leaves a margin and still
# fails a broken quantization. Static INT8 is calibrated on real images; random noise can fall outside those
# ranges (digits: up to 0.49 on noise vs 0.07 on the same number of real images), so int8 is judged on the real
# images only. The accuracy gate at export (vitdeploy.optimize) decides whether a variant is handed out at all;
# these tolerances re-check the file.
TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=0.0),
    "fp16": Tolerance(atol=1e-1, rtol=5e-2, min_top1_agreement=0.99),
    "int8": Tolerance(atol=0.5, rtol=0.0, min_top1_agreement=0.99, real_images_only=True),
}


@dataclass
class ParityCase:
    """One provider at one batch size, over all samples."""

    provider: str
    batch_size: int
    samples: int
    max_abs: float
    max_rel: float
    min_cosine: float
    top1_agreement: float  # fraction of samples whose ONNX top-1 class equals PyTorch's
    batch_invariance_max_abs: float  # vs the same samples' ONNX outputs at batch size 1
    passed: bool


@dataclass
class LayerDiff:
    """One named intermediate (embed, block_i, norm, logits) on one provider."""

    name: str
    tensor: str
    max_abs: float
    tolerance: float
    passed: bool


@dataclass
class ParityReport:
    model_path: str
    precision: str
    tolerance: Tolerance
    providers: list[str]  # as reported by the sessions themselves
    batch_sizes: list[int]
    inputs: dict[str, Any]  # real: count, real_source, random: count
    cases: list[ParityCase]
    layers: dict[str, list[LayerDiff]]  # provider -> intermediates in execution order
    accuracy: dict[str, float] = field(default_factory=dict)  # on labelled real images: pytorch, onnx:<provider>
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        layers_ok = all(d.passed for diffs in self.layers.values() for d in diffs)
        return bool(self.cases) and all(c.passed for c in self.cases) and layers_ok

    def first_divergence(self) -> dict[str, str]:
        """Per provider, the first intermediate (in execution order) outside tolerance."""
        return {
            provider: next(d.name for d in diffs if not d.passed)
            for provider, diffs in self.layers.items()
            if any(not d.passed for d in diffs)
        }

    def failures(self) -> list[str]:
        tol = self.tolerance
        lines = []
        for c in self.cases:
            if c.passed:
                continue
            why = []
            if c.max_abs > tol.atol:
                why.append(f"max |diff| {c.max_abs:.2e} > atol {tol.atol:g}")
            if c.top1_agreement < tol.min_top1_agreement:
                why.append(f"top-1 agreement {c.top1_agreement:.1%}")
            if c.batch_invariance_max_abs > tol.atol:
                why.append(f"output depends on the batch (|diff| vs batch 1: {c.batch_invariance_max_abs:.2e})")
            lines.append(f"{_short(c.provider)} batch {c.batch_size}: " + ("; ".join(why) or "outside rtol"))
        for provider, name in self.first_divergence().items():
            lines.append(f"{_short(provider)}: first diverging intermediate: {name}")
        return lines

    def summary(self) -> dict[str, Any]:
        """The compact record that export stores in the file's metadata."""
        return {
            "passed": self.passed,
            "precision": self.precision,
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "providers": self.providers,
            "batch_sizes": self.batch_sizes,
            "samples": self.inputs,
            "max_abs": max(c.max_abs for c in self.cases),
            "min_cosine": min(c.min_cosine for c in self.cases),
            "top1_agreement": min(c.top1_agreement for c in self.cases),
            "batch_invariance_max_abs": max(c.batch_invariance_max_abs for c in self.cases),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_path,
            "passed": self.passed,
            "precision": self.precision,
            "tolerance": asdict(self.tolerance),
            "providers": self.providers,
            "batch_sizes": self.batch_sizes,
            "inputs": self.inputs,
            "cases": [asdict(c) for c in self.cases],
            "layers": {p: [asdict(d) for d in diffs] for p, diffs in self.layers.items()},
            "first_divergence": self.first_divergence(),
            "accuracy": self.accuracy,
            "failures": self.failures(),
            "notes": self.notes,
        }


class ParityError(CheckFailed):
    """Parity failed (exit code 3); carries the report."""

    def __init__(self, report: ParityReport, consequence: str = ""):
        detail = "; ".join(report.failures()) or "no comparison ran"
        super().__init__(f"parity check failed ({detail})" + (f": {consequence}" if consequence else ""))
        self.report = report


# ---------------------------------------------------------------------------------------------------- comparison


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max absolute and relative difference, worst per-sample cosine similarity and top-1 agreement."""
    diff = np.abs(candidate - reference)
    # Relative to the reference's magnitude; logits nearer 0 than 1e-6 count as 1e-6 (no division by zero).
    rel = diff / np.maximum(np.abs(reference), 1e-6)
    dot = np.sum(candidate * reference, axis=1)
    norms = np.linalg.norm(candidate, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = dot / np.maximum(norms, np.finfo(np.float32).tiny)
    return {
        "max_abs": float(diff.max()),
        "max_rel": float(rel.max()),
        "min_cosine": float(cosine.min()),
        "top1_agreement": float(np.mean(candidate.argmax(1) == reference.argmax(1))),
    }


def check_parity(
    model: Any,
    onnx_path: Path,
    inputs: np.ndarray,
    batch_sizes: tuple[int, ...] | list[int],
    tolerance: Tolerance,
    intermediates: dict[str, str],
    precision: str = "fp32",
    labels: np.ndarray | None = None,
    input_notes: dict[str, Any] | None = None,
) -> ParityReport:
    """Compare PyTorch `model` with the ONNX file on `inputs` (N, C, H, W) float32 at every batch size and provider.

    `labels` (one per leading sample, may cover fewer than N) adds accuracy on those samples to the report.
    """
    batch_sizes = sorted(set(batch_sizes) | {1})  # batch 1 is the reference for batch invariance
    notes = []
    real = int((input_notes or {}).get("real", 0))
    if tolerance.real_images_only:
        if real:
            inputs = inputs[:real]
            notes.append(f"{precision}: judged on the {real} real images only (random inputs left out)")
        else:
            notes.append(f"{precision} is meant for real images, and there are none here: random inputs judged")
    reference = _torch_logits(model, inputs)
    report = ParityReport(
        model_path=str(onnx_path), precision=precision, tolerance=tolerance, providers=[],
        batch_sizes=batch_sizes, inputs=dict(input_notes or {}), cases=[], layers={}, notes=notes,
    )
    if labels is not None and len(labels):
        report.accuracy["pytorch"] = float(np.mean(reference[: len(labels)].argmax(1) == labels))

    for device in ("cpu", "cuda") if CUDA in usable_providers() else ("cpu",):
        session, provider = make_session(onnx_path, device=device)
        report.providers.append(provider)
        outputs = {b: _run_in_batches(session, inputs, b) for b in batch_sizes}
        for b in batch_sizes:
            m = compare_logits(reference, outputs[b])
            invariance = float(np.abs(outputs[b] - outputs[1]).max())
            passed = (
                tolerance.allows(reference, outputs[b])
                and m["top1_agreement"] >= tolerance.min_top1_agreement
                and invariance <= tolerance.atol
            )
            report.cases.append(ParityCase(provider, b, len(inputs), **m, batch_invariance_max_abs=invariance,
                                           passed=passed))
        if labels is not None and len(labels):
            report.accuracy[f"onnx:{provider}"] = float(np.mean(outputs[1][: len(labels)].argmax(1) == labels))
        report.layers[provider] = _compare_intermediates(
            model, onnx_path, inputs[:INTERMEDIATES_SAMPLES], intermediates, tolerance, device
        )
    if not intermediates:
        report.notes.append("the file records no intermediates: a failure cannot be traced to a block")
    return report


def _torch_logits(model: Any, inputs: np.ndarray, chunk: int = 32) -> np.ndarray:
    import torch

    with torch.inference_mode():
        parts = [model(torch.from_numpy(inputs[i : i + chunk])).float().numpy() for i in range(0, len(inputs), chunk)]
    return np.concatenate(parts)


def _run_in_batches(session: Any, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([run_batch(session, inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def _compare_intermediates(
    model: Any, onnx_path: Path, inputs: np.ndarray, intermediates: dict[str, str], tolerance: Tolerance, device: str
) -> list[LayerDiff]:
    """Run a copy of the graph with the recorded intermediates as extra outputs and compare each with PyTorch.

    Intermediates are compared at their own scale (atol * max(1, max|value|)): the residual stream of a trained
    ViT grows well beyond the logits' range, and fp32 rounding grows with it.
    """
    import torch

    with torch.inference_mode():
        _, named = model.forward_with_intermediates(torch.from_numpy(inputs))
    wanted = {name: tensor for name, tensor in intermediates.items() if name in named}
    outputs = _run_with_outputs(onnx_path, inputs, list(wanted.values()), device)
    diffs = []
    for name in list(named):  # execution order: embed, block_0.., norm, logits
        tensor = OUTPUT_NAME if name == "logits" else wanted.get(name)
        if tensor is None:
            continue
        ref = named[name].float().numpy()
        got = outputs[tensor]
        if got.shape != ref.shape:
            raise ModelFileError(
                f"{onnx_path}: recorded intermediate {name!r} ({tensor}) has shape {got.shape}, "
                f"PyTorch's has {ref.shape}: the file's metadata does not match its graph"
            )
        max_abs = float(np.abs(got - ref).max())
        scale = 1.0 if name == "logits" else max(1.0, float(np.abs(ref).max()))
        diffs.append(LayerDiff(name, tensor, max_abs, tolerance.atol * scale, max_abs <= tolerance.atol * scale))
    return diffs


def _run_with_outputs(onnx_path: Path, inputs: np.ndarray, tensors: list[str], device: str) -> dict[str, np.ndarray]:
    """Run a copy of the model (never the file itself) with `tensors` added as graph outputs."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    existing = {o.name for o in proto.graph.output}
    for name in tensors:
        if name not in existing:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    names = [OUTPUT_NAME, *[t for t in tensors if t != OUTPUT_NAME]]
    if not _uses_external_data(proto):
        session, _ = make_session(proto.SerializeToString(), device=device)
        return dict(zip(names, session.run(names, {INPUT_NAME: inputs})))
    # External data is resolved relative to the model file, so the copy must sit beside the original.
    fd, copy_path = tempfile.mkstemp(prefix=".vitdeploy-verify-", suffix=".onnx", dir=onnx_path.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, copy_path)
        session, _ = make_session(copy_path, device=device)
    finally:
        os.unlink(copy_path)  # ORT has read the graph and the weights by now
    return dict(zip(names, session.run(names, {INPUT_NAME: inputs})))


# ---------------------------------------------------------------------------------------------------- ONNX files


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in proto.graph.initializer)


def check_external_data(proto: onnx.ModelProto, folder: Path) -> None:
    """Refuse external-data locations outside the model's folder (absolute, '..', or a link leading out)."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    root = folder.resolve()
    for tensor in proto.graph.initializer:
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        target = (root / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(root):
            raise ModelFileError(
                f"refusing {folder}: tensor {tensor.name!r} reads external data from {location!r}, "
                "outside the model's folder"
            )


def load_onnx(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, OnnxModelInfo]:
    """Open a vitdeploy .onnx file safely (structure only, weights stay on disk) and read its self-description."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError:
        raise ModelFileError(f"{path} is not an ONNX model (or it is truncated): it does not parse") from None
    check_external_data(proto, path.parent)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise ModelFileError(f"{path} is not a valid ONNX model: {str(e).splitlines()[0]}") from None
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise ModelFileError(
            f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, found {inputs} -> {outputs}"
        )
    return proto, parse_metadata(path, {p.key: p.value for p in proto.metadata_props})


def check_matches_bundle(proto: onnx.ModelProto, meta: OnnxModelInfo, info: BundleInfo, bundle_dir: Path) -> None:
    """The .onnx must come from this bundle: same input shape, labels, config and weights."""
    model_input = next(i for i in proto.graph.input if i.name == INPUT_NAME)
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in model_input.type.tensor_type.shape.dim]
    expected = [info.model.in_channels, info.model.image_size, info.model.image_size]
    problems = []
    if len(dims) != 4 or dims[1:] != expected or isinstance(dims[0], int):
        shape = ", ".join(map(str, dims))
        problems.append(f"input {INPUT_NAME} is ({shape}), the bundle needs (batch, {', '.join(map(str, expected))})")
    if meta.labels != list(info.labels):
        problems.append(f"labels {meta.labels} differ from the bundle's {info.labels}")
    if meta.model_config is not None and meta.model_config != info.model:
        problems.append("the model config differs from the bundle's")
    sha = meta.export.get("weights_sha256")
    if sha and info.weights_sha256 and sha != info.weights_sha256:
        problems.append("it was exported from other weights (weights sha256 differs)")
    if problems:
        raise BundleError(f"{meta.path} does not match the bundle {bundle_dir}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------- inputs


def parity_inputs(
    info: BundleInfo,
    spec: PreprocessSpec,
    images_dir: Path | None,
    num_real: int,
    num_random: int,
    min_total: int,
    require_real: bool,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], list[str]]:
    """Real images (the bundle's held-out split, or `images_dir`) through THE preprocessing, then random inputs.

    Returns (inputs, labels of the leading real samples or None, counts, notes). Random inputs are standard
    normal, the range of normalized pixels, and top up the total to `min_total` so the largest batch is full.
    """
    from vitdeploy.images import preprocess

    notes: list[str] = []
    labels: np.ndarray | None = None
    if images_dir is not None:
        pictures, source = _folder_images(images_dir, num_real), str(images_dir)
    else:
        pictures, labels, source = _heldout(info, num_real, require_real, notes)
    real = [preprocess(img, spec) for img in pictures]
    num_random = max(num_random, min_total - len(real))
    rng = np.random.default_rng(RANDOM_SEED)
    shape = (num_random, info.model.in_channels, spec.image_size, spec.image_size)
    batch = np.concatenate([np.stack(real) if real else np.zeros((0, *shape[1:]), np.float32),
                            rng.standard_normal(shape, dtype=np.float32)])
    counts = {"real": len(real), "real_source": source, "random": num_random}
    return np.ascontiguousarray(batch, dtype=np.float32), labels, counts, notes


def _heldout(info: BundleInfo, limit: int, require: bool, notes: list[str]) -> tuple[list, np.ndarray | None, str]:
    if not info.dataset:
        notes.append("the bundle records no dataset: random inputs only (pass --images DIR for real images)")
        return [], None, "none"
    from vitdeploy.data import heldout_images

    try:
        pairs = heldout_images(info.dataset, info.labels, limit, info.preprocess)
    except DataError as e:
        if require:
            raise DataError(f"{e} (pass --images DIR to verify on other real images)") from None
        notes.append(f"held-out images unavailable ({e}): random inputs only")
        return [], None, "none"
    source = f"held-out split of {info.dataset.get('source', 'the bundle dataset')}"
    return [img for img, _ in pairs], np.array([y for _, y in pairs], dtype=np.int64), source


def _folder_images(folder: Path, limit: int) -> list:
    from vitdeploy.images import decode_image, is_image_file

    if not folder.is_dir():
        raise DataError(f"--images {folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))[:limit]
    if not files:
        raise DataError(f"--images {folder}: no image files found")
    return [decode_image(p) for p in files]


# ---------------------------------------------------------------------------------------------------- entry points


def resolve_tolerance(precision: str, atol: float | None, rtol: float | None) -> Tolerance:
    if precision not in TOLERANCES:
        raise ModelFileError(f"no parity tolerances for precision {precision!r} (known: {', '.join(TOLERANCES)})")
    base = TOLERANCES[precision]
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not value >= 0:
            raise ConfigError(f"--{name} must be >= 0, got {value}")
    return Tolerance(
        atol=base.atol if atol is None else atol,
        rtol=base.rtol if rtol is None else rtol,
        min_top1_agreement=base.min_top1_agreement,
        real_images_only=base.real_images_only,
    )


def export_parity(model: Any, info: BundleInfo, onnx_path: Path) -> ParityReport:
    """The quick check that export runs on its staged file before moving it into place."""
    _, meta = load_onnx(onnx_path)
    inputs, labels, counts, notes = parity_inputs(
        info, meta.preprocess, None, EXPORT_REAL_IMAGES, EXPORT_RANDOM_INPUTS, max(EXPORT_BATCH_SIZES),
        require_real=False,
    )
    precision = meta.export.get("precision", "fp32")
    report = check_parity(
        model, onnx_path, inputs, EXPORT_BATCH_SIZES, resolve_tolerance(precision, None, None), meta.intermediates,
        precision, labels, counts,
    )
    report.notes[:0] = notes
    return report


def verify(
    model_path: str | os.PathLike[str] | None = None,
    bundle: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    batch_sizes: tuple[int, ...] | list[int] = DEFAULT_BATCH_SIZES,
    atol: float | None = None,
    rtol: float | None = None,
    num_real: int = DEFAULT_REAL_IMAGES,
    num_random: int = DEFAULT_RANDOM_INPUTS,
) -> ParityReport:
    """The standalone parity report for a .onnx file (default: model.onnx in the latest bundle under models/).

    The bundle defaults to the folder holding the file when that is a bundle, else the one recorded at export.
    Returns the report whether or not parity holds (report.passed); bad input raises exit-2 errors.
    """
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ConfigError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    path = Path(model_path) if model_path is not None else find_latest_bundle() / DEFAULT_FILE_NAME
    if model_path is None and not path.is_file():
        raise ModelFileError(f"{path}: no such model file; export the bundle first: vitdeploy export")
    proto, meta = load_onnx(path)
    bundle_dir = Path(bundle) if bundle is not None else _bundle_for(path, meta)
    info = read_bundle_info(bundle_dir)
    check_matches_bundle(proto, meta, info, bundle_dir)
    model, info = load_bundle(bundle_dir)
    precision = meta.export.get("precision", "fp32")
    tolerance = resolve_tolerance(precision, atol, rtol)
    inputs, labels, counts, notes = parity_inputs(
        info, meta.preprocess, Path(images) if images else None, num_real, num_random, max(batch_sizes),
        require_real=True,
    )
    report = check_parity(
        model, path, inputs, batch_sizes, tolerance, meta.intermediates, precision, labels, counts
    )
    report.notes[:0] = notes
    return report


def _bundle_for(path: Path, meta: OnnxModelInfo) -> Path:
    from vitdeploy.checkpoint import CONFIG_FILE

    if (path.parent / CONFIG_FILE).is_file():
        return path.parent
    recorded = meta.export.get("bundle")
    if recorded and (Path(recorded) / CONFIG_FILE).is_file():
        return Path(recorded)
    raise BundleError(f"cannot tell which bundle {path} came from: pass --bundle DIR")


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider")


def parity_tables(report: ParityReport) -> list[Any]:
    """The report for people: one row per provider and batch size; where parity failed, each intermediate."""
    from rich.table import Table

    def status(passed: bool) -> str:
        return "[green]ok[/]" if passed else "[red]FAIL[/]"

    tolerance = f"{report.precision}, atol {report.tolerance.atol:g}, rtol {report.tolerance.rtol:g}"
    cases = Table(
        "provider", "batch", "samples", "max |diff|", "max rel", "min cosine", "top-1 agree", "vs batch 1", "",
        title=f"parity: {report.model_path} ({tolerance})", show_edge=False,
    )
    for c in report.cases:
        cases.add_row(
            _short(c.provider), str(c.batch_size), str(c.samples), f"{c.max_abs:.2e}", f"{c.max_rel:.2e}",
            f"{c.min_cosine:.7f}", f"{c.top1_agreement:.1%}", f"{c.batch_invariance_max_abs:.2e}", status(c.passed),
        )
    tables = [cases]
    for provider in report.first_divergence():
        layers = Table("intermediate", "ONNX tensor", "max |diff|", "tolerance", "",
                       title=f"where it diverges ({_short(provider)})", show_edge=False)
        for d in report.layers[provider]:
            layers.add_row(d.name, d.tensor, f"{d.max_abs:.2e}", f"{d.tolerance:.2e}", status(d.passed))
        tables.append(layers)
    return tables


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'1,7,32' -> (1, 7, 32); anything but positive integers is a usage error."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(b < 1 for b in sizes):
        raise ConfigError(f"--batch-sizes wants positive integers separated by commas, e.g. 1,7,32; got {text!r}")
    return sizes
