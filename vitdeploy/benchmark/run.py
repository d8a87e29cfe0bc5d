"""A whole benchmark: plan the variants, create them (cold start), time them with the protocol at every batch size
next to the GEMMs that measure the peak (peak.py), optionally time the pipeline end to end, and assemble the report
with its recommendation (the fastest variant that passed its accuracy check, per batch size)."""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitdeploy.benchmark.artifacts import (
    ModelUnderTest,
    describe_file,
    model_from_files,
    model_from_preset,
    plan_variants,
)
from vitdeploy.benchmark.end_to_end import end_to_end
from vitdeploy.benchmark.environment import environment, optional_torch, warn_if_busy
from vitdeploy.benchmark.protocol import cold_start, input_batch, measure_points
from vitdeploy.benchmark.peak import GemmRunner, gemm_runners, peaks
from vitdeploy.benchmark.report import BenchReport, PointResult, add_ratios, recommend_variant
from vitdeploy.benchmark.runners import make_runner, torch_threads
from vitdeploy.benchmark.variants import VARIANTS, BenchSettings, runtime_problem
from vitdeploy.extras import importable
from vitdeploy.errors import ConfigError
from vitdeploy.flops import count_macs

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def benchmark(
    model: ModelUnderTest,
    settings: BenchSettings = BenchSettings(),
    log: Log = _quiet,
    end_to_end_images: list[Path] | None = None,
    on_point: Callable[[int, list[str]], None] | None = None,
) -> BenchReport:
    """Run every chosen variant on `model` at every batch size, interleaved (see protocol.py).

    `on_point(batch_size, variant names)` is called as each batch size starts (e.g. a progress display).
    """
    from vitdeploy.provenance import now_iso

    names, skipped = plan_variants(settings, model)
    by_reason: dict[str, list[str]] = collections.defaultdict(list)
    for name, reason in skipped.items():
        by_reason[reason].append(name)
    for reason, skipped_names in by_reason.items():
        log(f"skipping {', '.join(skipped_names)}: {reason}")
    threads = settings.thread_count
    warn_if_busy(log)
    macs = count_macs(model.config)
    variants: dict[str, dict[str, Any]] = {}

    def batch_for(batch_size: int) -> Any:
        return input_batch(model.config, batch_size, settings.seed)

    def point_started(batch_size: int, point_names: list[str]) -> None:
        log(f"batch {batch_size}: timing {', '.join(point_names)} round-robin")
        if on_point:
            on_point(batch_size, point_names)

    with torch_threads(threads):
        env = environment(threads)  # before the run: the load average says what the figures competed with
        runners = [make_runner(VARIANTS[name], model, threads) for name in names]
        first_batch = batch_for(settings.batch_sizes[0])
        for runner in runners:
            spec = runner.spec
            started = cold_start(runner, first_batch)
            variants[spec.name] = {
                "runtime": spec.runtime, "device": spec.device, "precision": spec.precision,
                "ran": runner.ran, "description": spec.description, "providers": runner.providers,
                "cold_start": started.to_dict(), **describe_file(model, spec),
            }
            log(f"{spec.name}: ready on {runner.providers[0]} (create {started.create_s * 1e3:.0f} ms)")
        gemms = _gemm_runners(runners, threads, log)
        points = measure_points(runners, settings, batch_for, gemms, point_started)
        e2e = (end_to_end(model.onnx_path, end_to_end_images, max(settings.batch_sizes), threads)
               if end_to_end_images else None)
    timed = {g: [t for p in points if p.variant == g.spec.name for t in p.latencies_s] for g in gemms}
    points = [p for p in points if p.variant in variants]
    device_peaks = peaks(timed, _achieved(points, macs.flops), threads)
    add_ratios(points, device_peaks, macs.flops)
    report = BenchReport(
        model={"source": model.source, "onnx": str(model.onnx_path), "bundle": str(model.bundle) if model.bundle else None,
               "config": model.config.to_dict(), "macs_per_image": macs.to_dict()},
        settings=settings,
        environment=env,
        peak_gflops={device: round(by_precision["fp32"].gflops, 2) for device, by_precision in device_peaks.items()
                     if "fp32" in by_precision},
        peaks={device: {p: peak.to_dict() for p, peak in by_precision.items()}
               for device, by_precision in device_peaks.items()},
        variants=variants,
        skipped=skipped,
        points=points,
        end_to_end=e2e,
        created_at=now_iso(),
    )
    report.best_variant = recommend_variant(report)
    return report


def _gemm_runners(runners: list[Any], threads: int, log: Log) -> list[GemmRunner]:
    """The GEMMs of every device and precision the variants run in, created (peak.py says which)."""
    devices = {"cuda" if r.spec.device == "tensorrt" else r.spec.device for r in runners}
    precisions = {r.spec.precision for r in runners}
    gemms = gemm_runners(devices, precisions, threads, optional_torch() is not None, importable("onnx"))
    if optional_torch() is None:
        log("PyTorch is not installed: the peak is measured without torch's GEMMs (numpy"
            + (", ONNX Runtime" if importable("onnx") else "") + ") and the ISA's theoretical figure")
    for gemm in gemms:
        gemm.create()
    return gemms


def _achieved(points: list[PointResult], flops_per_image: float) -> dict[tuple[str, str], dict[str, float]]:
    """(device, precision) -> variant -> the rate of its fastest run, GFLOP/s, over all batch sizes."""
    achieved: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(dict)
    for point in points:
        spec = VARIANTS[point.variant]
        key = ("cuda" if spec.device == "tensorrt" else spec.device, spec.precision)
        rate = flops_per_image * point.batch_size / min(point.latencies_s) / 1e9
        achieved[key][point.variant] = max(rate, achieved[key].get(point.variant, 0.0))
    return dict(achieved)


def run_bench(
    model: Path | None,
    bundle: Path | None,
    preset: str | None,
    settings: BenchSettings,
    end_to_end_inputs: list[str] | None = None,
    log: Log = _quiet,
    on_point: Callable[[int, list[str]], None] | None = None,
) -> BenchReport:
    """What `vitdeploy bench` does: pick the model (a preset with random weights, or an exported file and its
    bundle, by default the newest under models/), then benchmark it."""
    from vitdeploy.inputs import expand_inputs

    if preset and (model or bundle):
        raise ConfigError("--preset builds and exports its own model: give either MODEL/--bundle or --preset")
    if preset and optional_torch() is None:
        raise ConfigError("--preset builds its model with PyTorch, which is not installed: benchmark an exported "
                          ".onnx file instead")
    images: list[Path] = []
    if end_to_end_inputs:
        images, unmatched = expand_inputs(end_to_end_inputs)
        if unmatched or not images:
            raise ConfigError(f"--end-to-end: no images found for {', '.join(unmatched) or end_to_end_inputs}")
    with tempfile.TemporaryDirectory(prefix="vitdeploy-bench-model-") as tmp:
        if preset:
            # Only the files of variants that can run here are built.
            specs = [VARIANTS[name] for name in settings.requested]
            files = [s.export.name for s in specs if s.export and runtime_problem(s) is None]
            log(f"building {preset} with random weights (seed {settings.seed}) and exporting it"
                + (f", with {', '.join(f'model.{v}.onnx' for v in files)} built as export builds them" if files else ""))
            under_test = model_from_preset(preset, Path(tmp), settings.seed, files)
        else:
            under_test = model_from_files(model, bundle)
        return benchmark(under_test, settings, log, images or None, on_point)
