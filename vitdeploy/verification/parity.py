"""Parity between PyTorch and an ONNX file: the comparison itself and its report (the tolerances per precision are
rows of vitdeploy.files.variants).

One code path (check_parity) serves both `vitdeploy verify` and the check that `vitdeploy export` runs before it
moves a file into place:
  - the same inputs go through PyTorch once and through every target (a runtime on a device: ONNX Runtime on each
    provider that a session really gets, OpenVINO, the ONNX reference) at every batch size;
  - every sample's logits are compared with PyTorch's, and with its own batch-1 ONNX output (a sample's result
    must not depend on what else is in its batch);
  - every target is compared with every other on the same samples (runtime against runtime on the same file);
  - the named intermediates (embed, block_i, norm) are compared on each target (intermediates.py), so a failure
    names the first block that diverges, and on which runtime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitdeploy.core.notes import Notes
from vitdeploy.errors import ConfigError, ModelFileError
from vitdeploy.files.variants import EXPORT, EXPORT_VARIANTS, Tolerance, tolerance_for
from vitdeploy.runtimes import Description, open_runtime, runtime_spec, runtime_status, short_provider_name
from vitdeploy.verification.intermediates import LayerDiff, compare_intermediates

INTERMEDIATES_SAMPLES = 4  # samples run through the graph copy with intermediates exposed


@dataclass(frozen=True)
class Target:
    """One runtime on one device, as check_parity runs it. max_samples: run only the first N inputs (the reference
    runtime is too slow for all of them); precision None: the file's own."""

    runtime: str
    device: str
    precision: str | None = None
    max_samples: int | None = None
    optional: bool = False  # chosen by default rather than named: a file it cannot run is noted and skipped


def default_targets(runtimes: tuple[str, ...] | list[str] = ("ort",), optional: bool = False) -> list[Target]:
    """Every device each runtime really has here: ORT's CPU and, where a session gets them, CUDA and TensorRT;
    OpenVINO's CPU (GPU, NPU where listed); the reference on REFERENCE_MAX_SAMPLES samples. `optional`: the
    runtimes were chosen by default, so one that cannot run the file is skipped with a note (ONNX Runtime never:
    a file it cannot load is a bad file)."""
    targets = []
    for name in runtimes:
        skippable = optional and name != "ort"
        max_samples = runtime_spec(name).parity_max_samples  # its parity policy (the reference: a slow oracle)
        targets += [Target(name, device, max_samples=max_samples, optional=skippable)
                    for device in runtime_status(name).devices]
    return targets


def target_key(description: Description) -> str:
    """Where a target's results go in the report: ONNX Runtime's by provider (CPUExecutionProvider, as before other
    runtimes existed), the others by label (openvino:CPU:fp32, reference)."""
    return description.provider if description.runtime == "ort" else description.label


@dataclass
class ParityCase:
    """One target (runtime on a device) at one batch size, over all its samples."""

    target: str  # the report key of the runtime on its device (target_key): CPUExecutionProvider, openvino:CPU:fp32
    batch_size: int
    samples: int
    max_abs: float
    max_rel: float
    min_cosine: float
    top1_agreement: float  # fraction of samples whose ONNX top-1 class equals PyTorch's
    batch_invariance_max_abs: float  # vs the same samples' ONNX outputs at batch size 1
    passed: bool
    non_finite: int = 0  # samples whose ONNX logits hold NaN or Inf
    runtime: str = "ort"
    precision: str = "fp32"  # the precision the runtime ran in


@dataclass
class CrossCase:
    """Runtime against runtime on the same file: two targets' batch-1 logits on the samples both ran."""

    a: str
    b: str
    samples: int
    max_abs: float
    max_rel: float
    min_cosine: float
    top1_agreement: float
    passed: bool


@dataclass
class ParityReport:
    model_path: str
    precision: str
    tolerance: Tolerance
    providers: list[str]  # the targets' report keys, from what the sessions themselves report (target_key)
    batch_sizes: list[int]
    inputs: dict[str, Any]  # real: count, real_source, random: count
    cases: list[ParityCase]
    layers: dict[str, list[LayerDiff]]  # provider -> intermediates in execution order
    accuracy: dict[str, float] = field(default_factory=dict)  # on labelled real images: pytorch, onnx:<provider>
    notes: list[str] = field(default_factory=Notes)
    located: dict[str, str] = field(default_factory=dict)  # intermediates found by value (check_parity(None))
    runtimes: list[dict[str, str]] = field(default_factory=list)  # each target's describe(): runtime, device, ...
    cross: list[CrossCase] = field(default_factory=list)
    bundle: str | None = None  # the bundle it was compared with
    # The accuracy gate run again on this machine (GateResult.summary), where the file was gated on another CPU
    # class: set by the API (exporting.gate.regate), which may import the gate; verification may not.
    regate: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        layers_ok = all(d.passed for diffs in self.layers.values() for d in diffs)
        cross_ok = all(c.passed for c in self.cross)
        regate_ok = self.regate is None or bool(self.regate.get("passed"))
        return bool(self.cases) and all(c.passed for c in self.cases) and layers_ok and cross_ok and regate_ok

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
            if c.non_finite:
                lines.append(f"{short_provider_name(c.target)} batch {c.batch_size}: non-finite output (NaN or Inf) "
                             f"for {c.non_finite} of {c.samples} samples")
                continue
            why = []
            if c.max_abs > tol.atol:
                why.append(f"max |diff| {c.max_abs:.2e} > atol {tol.atol:g}")
            if not tol.agrees(c.top1_agreement, c.samples):
                why.append(f"top-1 agreement {c.top1_agreement:.1%}")
            if c.batch_invariance_max_abs > tol.atol:
                why.append(f"output depends on the batch (|diff| vs batch 1: {c.batch_invariance_max_abs:.2e})")
            lines.append(f"{short_provider_name(c.target)} batch {c.batch_size}: " + ("; ".join(why) or "outside rtol"))
        for c in self.cross:
            if not c.passed:
                lines.append(f"{short_provider_name(c.a)} vs {short_provider_name(c.b)} on the same file: max |diff| "
                             f"{c.max_abs:.2e}, top-1 agreement {c.top1_agreement:.1%}")
        for provider, name in self.first_divergence().items():
            lines.append(f"{short_provider_name(provider)}: first diverging intermediate: {name}")
        if self.regate is not None:
            lines += [f"accuracy gate re-run on this {self.regate.get('isa_class')} CPU: {why}"
                      for why in self.regate.get("failures", [])]
        return lines

    def summary(self) -> dict[str, Any]:
        """The compact record that export stores in the file's metadata."""
        return {
            "passed": self.passed,
            "precision": self.precision,
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "providers": self.providers,
            "runtimes": sorted({r["runtime"] for r in self.runtimes}),
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
            "runtimes": self.runtimes,
            "batch_sizes": self.batch_sizes,
            "inputs": self.inputs,
            "cases": [asdict(c) for c in self.cases],
            "cross": [asdict(c) for c in self.cross],
            "layers": {p: [asdict(d) for d in diffs] for p, diffs in self.layers.items()},
            "first_divergence": self.first_divergence(),
            "accuracy": self.accuracy,
            "failures": self.failures(),
            "notes": self.notes,
            "regate": self.regate,
        }





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
    intermediates: dict[str, str] | None,
    precision: str = "fp32",
    labels: np.ndarray | None = None,
    input_notes: dict[str, Any] | None = None,
    targets: list[Target] | None = None,
    layers_on_first_only: bool = False,
) -> ParityReport:
    """Compare PyTorch `model` with the ONNX file on `inputs` (N, C, H, W) float32 at every batch size on every
    target (default: ONNX Runtime on each provider that really works here), and the targets with each other.

    `intermediates` names the tensors that hold each block's output (as recorded in the file); None: find them by
    value (what export does; the report's `located` holds what the first target found, to be recorded in the
    file). `labels` (one per leading sample, may cover fewer than N) adds accuracy on those samples to the report.
    `layers_on_first_only`: compare the intermediates on the first target only (export: each further target costs
    one more compilation of the graph copy, and `verify --runtime` localises a failure on any of them).
    """
    from vitdeploy.model.vit import logits_in_batches

    batch_sizes = sorted(set(batch_sizes) | {1})  # batch 1 is the reference for batch invariance
    notes = Notes()
    real = int((input_notes or {}).get("real", 0))
    if tolerance.real_images_only:
        if real:
            inputs = inputs[:real]
            notes.add(f"{precision}: judged on the {real} real images only (random inputs left out)")
        else:
            notes.add(f"{precision} is meant for real images, and there are none here: random inputs judged")
    reference = logits_in_batches(model, inputs)
    report = ParityReport(
        model_path=str(onnx_path), precision=precision, tolerance=tolerance, providers=[],
        batch_sizes=batch_sizes, inputs=dict(input_notes or {}), cases=[], layers={}, notes=notes,
    )
    if labels is not None and len(labels):
        report.accuracy["pytorch"] = float(np.mean(reference[: len(labels)].argmax(1) == labels))

    batch_one: dict[str, np.ndarray] = {}
    for index, target in enumerate(targets if targets is not None else default_targets()):
        try:
            session = open_runtime(target.runtime, onnx_path, target.device, target.precision)
        except ModelFileError as e:
            if not target.optional:
                raise
            notes.add(f"{target.runtime} skipped: {e}")
            continue
        key = target_key(session.description)
        report.providers.append(key)
        report.runtimes.append(session.describe())
        count = len(inputs) if target.max_samples is None else min(len(inputs), max(target.max_samples, *batch_sizes))
        if count < len(inputs):
            notes.add(f"{key}: {count} of the {len(inputs)} samples (the {target.runtime} runtime is slow)")
        outputs = {b: session.run_in_batches(inputs[:count], b) for b in batch_sizes}
        batch_one[key] = outputs[1]
        for b in batch_sizes:
            report.cases.append(_case(key, session.description, b, reference[:count], outputs[b], outputs[1],
                                      tolerance))
        if labels is not None and len(labels):
            scored = labels[:count]
            name = f"onnx:{key}" + (f" (first {len(scored)} images)" if len(scored) < len(labels) else "")
            report.accuracy[name] = float(np.mean(outputs[1][: len(scored)].argmax(1) == scored))
        if index == 0 or not layers_on_first_only:
            report.layers[key] = compare_intermediates(
                model, onnx_path, inputs[:INTERMEDIATES_SAMPLES], intermediates, tolerance.atol,
                lambda copy, t=target: open_runtime(t.runtime, copy, t.device, t.precision),
            )
        session.close()  # its memory released before the next runtime compiles its own
    report.cross = _cross(batch_one, tolerance)
    if intermediates is None:
        layers = next(iter(report.layers.values()), [])
        report.located = {d.name: d.tensor for d in layers if d.passed and d.name != "logits"}
    elif not intermediates:
        notes.add("the file records no intermediates: a failure cannot be traced to a block")
    return report


def _case(key: str, description: Description, batch_size: int, reference: np.ndarray, output: np.ndarray,
          batch_one: np.ndarray, tolerance: Tolerance) -> ParityCase:
    m = compare_logits(reference, output)
    invariance = float(np.abs(output - batch_one).max())
    non_finite = int((~np.isfinite(output).all(axis=1)).sum())
    passed = (
        not non_finite
        and tolerance.allows(reference, output)
        and tolerance.agrees(m["top1_agreement"], len(output))
        and invariance <= tolerance.atol
    )
    return ParityCase(key, batch_size, len(output), **m, batch_invariance_max_abs=invariance, passed=passed,
                      non_finite=non_finite, runtime=description.runtime, precision=description.precision)


def _cross(outputs: dict[str, np.ndarray], tolerance: Tolerance) -> list[CrossCase]:
    """Every pair of targets on the samples both ran, judged by the same tolerance as against PyTorch."""
    keys, cases = list(outputs), []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            n = min(len(outputs[a]), len(outputs[b]))
            left, right = outputs[a][:n], outputs[b][:n]
            m = compare_logits(left, right)
            passed = (bool(np.isfinite(right).all() and np.isfinite(left).all()) and tolerance.allows(left, right)
                      and tolerance.agrees(m["top1_agreement"], n))
            cases.append(CrossCase(a, b, n, **m, passed=passed))
    return cases


def resolve_tolerance(precision: str, atol: float | None, rtol: float | None, variant: str | None = None
                      ) -> Tolerance:
    """The tolerance for a file of this precision, or of this export variant where its row has its own (token
    merging's), with --atol / --rtol applied."""
    base = EXPORT[variant].tolerance if variant in EXPORT else tolerance_for(precision)
    if base is None:
        known = ", ".join(dict.fromkeys(v.precision for v in EXPORT_VARIANTS))
        raise ModelFileError(f"no parity tolerances for precision {precision!r} (known: {known})")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not value >= 0:
            raise ConfigError(f"--{name} must be >= 0, got {value}")
    return Tolerance(
        atol=base.atol if atol is None else atol,
        rtol=base.rtol if rtol is None else rtol,
        min_top1_agreement=base.min_top1_agreement,
        real_images_only=base.real_images_only,
    )
