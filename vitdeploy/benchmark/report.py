"""The figures of a run and what is read from them: per-point statistics, the JSON report (schema SCHEMA), the
speed-up and MFU ratios, the fastest variant that passed its accuracy check, the batch-size recommendation and the
comparison with a baseline report.

Statistics are over the timed runs of one variant at one batch size, pooled over its blocks (warm-up excluded):
p50 / p90 / p99 / mean / std / min latency and images/s from the mean. Speed-up is against PyTorch eager on the same device at the same
batch size in the same run, and against ONNX Runtime fp32 on the CPU; MFU is analytic FLOPs x images/s over the
peak of the variant's own precision on its device (peak.py), and no MFU where there is no such peak.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdeploy.benchmark.variants import EAGER, ORT_FP32, VARIANTS, BenchSettings
from vitdeploy.errors import ConfigError

if TYPE_CHECKING:
    from vitdeploy.benchmark.peak import Peak

SCHEMA = "vitdeploy.bench/1"


@dataclass
class PointResult:
    """One variant at one batch size, steady state."""

    variant: str
    batch_size: int
    latencies_s: list[float]
    speedup_vs_eager: float | None = None
    peak_gflops: float | None = None  # the peak of this variant's precision on its device, which MFU divides by
    mfu: float | None = None
    speedup_vs_ort_fp32: float | None = None

    @property
    def iterations(self) -> int:
        return len(self.latencies_s)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) * 1e3

    @property
    def mean_s(self) -> float:
        return float(np.mean(self.latencies_s))

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.mean_s

    def to_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s)
        return {
            "variant": self.variant,
            "batch_size": self.batch_size,
            "iterations": self.iterations,
            "measured_s": round(float(lat.sum()), 4),
            "p50_ms": round(self.percentile_ms(50), 4),
            "p90_ms": round(self.percentile_ms(90), 4),
            "p99_ms": round(self.percentile_ms(99), 4),
            "mean_ms": round(self.mean_s * 1e3, 4),
            "std_ms": round(float(lat.std(ddof=1)) * 1e3 if len(lat) > 1 else 0.0, 4),
            "min_ms": round(float(lat.min()) * 1e3, 4),
            "images_per_s": round(self.images_per_s, 3),
            "speedup_vs_eager": round(self.speedup_vs_eager, 3) if self.speedup_vs_eager else None,
            "speedup_vs_ort_fp32": round(self.speedup_vs_ort_fp32, 3) if self.speedup_vs_ort_fp32 else None,
            "peak_gflops": round(self.peak_gflops, 2) if self.peak_gflops else None,
            "mfu": round(self.mfu, 4) if self.mfu is not None else None,
        }


@dataclass
class BenchReport:
    model: dict[str, Any]
    settings: BenchSettings
    environment: dict[str, Any]
    peak_gflops: dict[str, float]  # device -> its fp32 peak, GFLOP/s (peaks has every precision and its source)
    # name -> runtime, device, precision, what ran it (ran: runtime, device, provider, precision), providers, cold
    # start, and the file it ran (artifacts.describe_file): path, graph_ops (ONNX files), quantization and accuracy
    # (the check export ran on the file)
    variants: dict[str, dict[str, Any]]
    skipped: dict[str, str]  # variant -> why it did not run
    points: list[PointResult]
    end_to_end: dict[str, Any] | None = None
    created_at: str = ""
    recommendation: dict[str, Any] | None = None  # set by recommend_batch_size (--p99-budget)
    regression: dict[str, Any] | None = None  # set by compare_to_baseline (--baseline)
    peaks: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> precision -> Peak.to_dict()
    best_variant: dict[str, Any] | None = None  # set by recommend_variant
    protocol: dict[str, Any] = field(default_factory=dict)  # how points were interleaved (protocol.Blocks)

    def failures(self) -> list[str]:
        """The checks that failed: a regression against the baseline, when one was given."""
        return regression_failures(self.regression) if self.regression is not None else []

    @property
    def passed(self) -> bool:
        return not self.failures()

    def point(self, variant: str, batch_size: int) -> PointResult | None:
        return next((p for p in self.points if p.variant == variant and p.batch_size == batch_size), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "created_at": self.created_at,
            "model": self.model,
            "settings": self.settings.to_dict(),
            "protocol": self.protocol,
            "environment": self.environment,
            "peak_gflops": self.peak_gflops,
            "peaks": self.peaks,
            "variants": self.variants,
            "skipped": self.skipped,
            "results": [{**p.to_dict(), **self.variants.get(p.variant, {}).get("ran", {})} for p in self.points],
            "best_variant": self.best_variant,
            "end_to_end": self.end_to_end,
            "recommendation": self.recommendation,
            "regression": self.regression,
        }


def add_ratios(points: list[PointResult], peaks: dict[str, dict[str, Peak]],
               flops_per_image: float | Mapping[str, float]) -> None:
    """Set each point's speed-up against eager on its device and against ONNX Runtime fp32 on the CPU, and its MFU
    against the peak of its own precision on its device (none where there is no such peak). flops_per_image: one
    figure, or one per variant (a token merging file computes fewer)."""
    for point in points:
        spec = VARIANTS[point.variant]
        same_batch = {p.variant: p for p in points if p.batch_size == point.batch_size}
        eager, ort_fp32 = same_batch.get(EAGER[spec.device]), same_batch.get(ORT_FP32)
        point.speedup_vs_eager = eager.mean_s / point.mean_s if eager else None
        point.speedup_vs_ort_fp32 = ort_fp32.mean_s / point.mean_s if ort_fp32 else None
        peak = peaks.get("cuda" if spec.device == "tensorrt" else spec.device, {}).get(spec.precision)
        point.peak_gflops = peak.gflops if peak else None
        flops = flops_per_image if isinstance(flops_per_image, (int, float)) else flops_per_image[point.variant]
        point.mfu = mfu(flops, point.images_per_s, peak)


def mfu(flops_per_image: float, images_per_s: float, peak: Peak | None) -> float | None:
    """Model FLOPs utilisation: at most 1.0, as the peak is at least every variant's fastest run (peak.py), of which
    its mean rate (images_per_s) is at most."""
    if peak is None or peak.gflops <= 0:
        return None
    return flops_per_image * images_per_s / (peak.gflops * 1e9)


def gate_status(variant: dict[str, Any]) -> str:
    """passed / failed / untested: the accuracy check export recorded in the variant's file, counted only when it
    ran on the variant's runtime ("reference" for PyTorch eager, the model every check compares with)."""
    if variant["runtime"] == "torch":
        return "reference"
    if (variant.get("cold_start") or {}).get("finite_outputs") is False:
        return "failed"  # NaN or Inf logits on the benchmark's own inputs: whatever the file's record says
    accuracy = variant.get("accuracy") or {}
    if not accuracy.get("judged"):
        return "untested"
    if not accuracy.get("passed"):
        return "failed"
    judged_on = (accuracy.get("summary") or {}).get("runtimes") or ["ort"]  # files from before other runtimes
    return "passed" if variant["runtime"] in judged_on else "untested"


def recommend_variant(report: BenchReport) -> dict[str, Any]:
    """Per batch size, the fastest ONNX variant whose accuracy check passed on its own runtime, with its speed-up
    over ONNX Runtime fp32 and its accuracy drop; every variant's gate status beside it. A variant without a
    passing check (untested, failed) is never recommended."""
    status = {name: gate_status(v) for name, v in report.variants.items()}
    per_batch: dict[str, Any] = {}
    for batch_size in report.settings.batch_sizes:
        candidates = [p for p in report.points if p.batch_size == batch_size and status[p.variant] == "passed"]
        best = max(candidates, key=lambda p: p.images_per_s, default=None)
        if best is None:
            per_batch[str(batch_size)] = None
            continue
        summary = report.variants[best.variant]["accuracy"]["summary"]
        per_batch[str(batch_size)] = {
            "variant": best.variant,
            **report.variants[best.variant].get("ran", {}),
            "images_per_s": round(best.images_per_s, 3),
            "speedup_vs_ort_fp32": round(best.speedup_vs_ort_fp32, 3) if best.speedup_vs_ort_fp32 else None,
            "check": report.variants[best.variant]["accuracy"]["check"],
            # parity (fp32): max |diff| within 1e-4 and every top-1 equal, so no accuracy is lost on its samples
            "accuracy_drop_pt": summary.get("accuracy_drop_pt", 0.0),
            "top1_agreement": summary.get("top1_agreement"),
        }
    return {"per_batch_size": per_batch, "gate": status,
            "never_recommended": sorted(name for name, s in status.items() if s in ("untested", "failed"))}


def recommend_batch_size(report: BenchReport, p99_budget_ms: float) -> dict[str, Any]:
    """Per variant, the largest batch size whose p99 meets the budget; overall, the highest throughput among those."""
    per_variant: dict[str, dict[str, Any] | None] = {}
    for name in report.variants:
        fitting = [p for p in report.points if p.variant == name and p.percentile_ms(99) <= p99_budget_ms]
        best = max(fitting, key=lambda p: p.batch_size, default=None)
        per_variant[name] = (
            {"batch_size": best.batch_size, "p99_ms": round(best.percentile_ms(99), 3),
             "images_per_s": round(best.images_per_s, 3)} if best else None
        )
    candidates = [(name, rec) for name, rec in per_variant.items() if rec]
    overall = max(candidates, key=lambda item: item[1]["images_per_s"], default=None)
    return {
        "p99_budget_ms": p99_budget_ms,
        "per_variant": per_variant,
        "best": {"variant": overall[0], **overall[1]} if overall else None,
    }


def load_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read benchmark baseline {path}: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("results"), list):
        raise ConfigError(f"{path} is not a vitdeploy bench report (schema {SCHEMA})")
    return data


def compare_to_baseline(report: BenchReport, baseline: dict[str, Any], max_regress_pct: float) -> dict[str, Any]:
    """Compare median (p50) latency per variant and batch size with a baseline report.

    The median, not the mean, because one descheduled run on a shared machine moves the mean but not the median.
    """
    rows, regressed = [], []
    for old in baseline["results"]:
        new = report.point(old.get("variant"), old.get("batch_size"))
        if new is None or not old.get("p50_ms"):
            continue
        change = (new.percentile_ms(50) / old["p50_ms"] - 1) * 100
        row = {"variant": new.variant, "batch_size": new.batch_size, "baseline_p50_ms": old["p50_ms"],
               "p50_ms": round(new.percentile_ms(50), 4), "change_pct": round(change, 2),
               "regressed": change > max_regress_pct}
        rows.append(row)
        if row["regressed"]:
            regressed.append(f"{new.variant} @ batch {new.batch_size}: {change:+.1f}%")
    return {"max_regress_pct": max_regress_pct, "compared": rows, "regressed": regressed}


def regression_failures(comparison: dict[str, Any]) -> list[str]:
    """Why a comparison with the baseline fails: nothing compared, or what got slower; [] when it holds."""
    if not comparison["compared"]:
        return ["no variant and batch size in common with the baseline: nothing was compared"]
    if comparison["regressed"]:
        return [f"slower than the baseline by more than {comparison['max_regress_pct']}%: "
                + "; ".join(comparison["regressed"])]
    return []
