"""A whole benchmark: plan the variants, create them (cold start), time them with the protocol at every batch size
next to the GEMMs that measure the peak (peak.py), optionally time the pipeline end to end, and assemble the report
with its recommendation (the fastest variant that passed its accuracy check, per batch size)."""

from __future__ import annotations

import collections
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vitdeploy.benchmark.artifacts import (
    ModelUnderTest,
    describe_file,
    model_from_files,
    model_from_preset,
    plan_variants,
    variant_macs,
)
from vitdeploy.benchmark.end_to_end import end_to_end
from vitdeploy.benchmark.environment import environment, optional_torch, warn_if_busy
from vitdeploy.benchmark.peak import GemmRunner, gemm_runners, peaks
from vitdeploy.benchmark.protocol import Blocks, cold_start, measure_points
from vitdeploy.benchmark.report import BenchReport, PointResult, add_ratios, recommend_variant
from vitdeploy.benchmark.runners import make_runner
from vitdeploy.benchmark.timing import input_batch
from vitdeploy.benchmark.variants import VARIANTS, BenchSettings, runtime_problem
from vitdeploy.core.cpu import torch_threads
from vitdeploy.core.extras import importable
from vitdeploy.core.flops import count_macs
from vitdeploy.errors import ConfigError
from vitdeploy.requests import BenchRequest

logger = logging.getLogger(__name__)


def benchmark(
    model: ModelUnderTest,
    settings: BenchSettings = BenchSettings(),
    end_to_end_images: list[Path] | None = None,
    on_point: Callable[[int, list[str]], None] | None = None,
) -> BenchReport:
    """Run every chosen variant on `model` at every batch size, interleaved (see protocol.py).

    `on_point(batch_size, variant names)` is called as each batch size starts (e.g. a progress display).
    """
    from vitdeploy.core.provenance import now_iso

    names, skipped = plan_variants(settings, model)
    by_reason: dict[str, list[str]] = collections.defaultdict(list)
    for name, reason in skipped.items():
        by_reason[reason].append(name)
    for reason, skipped_names in by_reason.items():
        logger.info("skipping %s: %s", ", ".join(skipped_names), reason)
    threads = settings.thread_count
    warn_if_busy()
    macs = count_macs(model.config)
    variants: dict[str, dict[str, Any]] = {}

    def batch_for(batch_size: int) -> Any:
        return input_batch(model.config, batch_size, settings.seed)

    def point_started(batch_size: int, point_names: list[str]) -> None:
        logger.info("batch %d: timing %s in alternating blocks", batch_size, ", ".join(point_names))
        if on_point:
            on_point(batch_size, point_names)

    blocks = Blocks.for_settings(settings)
    with torch_threads(threads):
        env = environment(threads)  # before the run: the load average says what the figures competed with
        runners = [make_runner(VARIANTS[name], model, threads) for name in names]
        first_batch = batch_for(settings.batch_sizes[0])
        for runner in runners:
            spec = runner.spec
            started = cold_start(runner, first_batch)
            ran = runner.ran.get("precision", spec.precision)  # what ran: OpenVINO may compile a bf16 hint as f32
            variants[spec.name] = {
                "runtime": spec.runtime, "device": spec.device, "precision": ran,
                "ran": runner.ran, "description": spec.description, "providers": runner.providers,
                "cold_start": started.to_dict(), **describe_file(model, spec),
            }
            logger.info("%s: ready on %s (create %.0f ms)", spec.name, runner.providers[0], started.create_s * 1e3)
        gemms = _gemm_runners(runners, threads)
        points = measure_points(runners, settings, batch_for, gemms, point_started, blocks)
        e2e = (end_to_end(model.onnx_path, end_to_end_images, max(settings.batch_sizes), threads)
               if end_to_end_images else None)
        for runner in runners:
            runner.close()
    timed = {g: [t for p in points if p.variant == g.spec.name for t in p.latencies_s] for g in gemms}
    points = [p for p in points if p.variant in variants]
    flops = {name: variant_macs(model, VARIANTS[name]).flops for name in variants}  # token merging: fewer
    device_peaks = peaks(timed, _achieved(points, flops), threads)
    add_ratios(points, device_peaks, flops)
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
        protocol=blocks.to_dict(),
    )
    report.best_variant = recommend_variant(report)
    return report


def _gemm_runners(runners: list[Any], threads: int) -> list[GemmRunner]:
    """The GEMMs of every device and precision the variants run in, created (peak.py says which)."""
    devices = {"cuda" if r.spec.device == "tensorrt" else r.spec.device for r in runners}
    precisions = {r.spec.precision for r in runners}
    gemms = gemm_runners(devices, precisions, threads, optional_torch() is not None, importable("onnx"))
    if optional_torch() is None:
        logger.info("PyTorch is not installed: the peak is measured without torch's GEMMs (numpy%s) and the ISA's "
                    "theoretical figure", ", ONNX Runtime" if importable("onnx") else "")
    for gemm in gemms:
        gemm.create()
    return gemms


def _achieved(points: list[PointResult], flops_per_image: Mapping[str, float]
              ) -> dict[tuple[str, str], dict[str, float]]:
    """(device, precision) -> variant -> the rate of its fastest run, GFLOP/s, over all batch sizes (flops_per_image:
    per variant, as a token merging file computes fewer)."""
    achieved: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(dict)
    for point in points:
        spec = VARIANTS[point.variant]
        key = ("cuda" if spec.device == "tensorrt" else spec.device, spec.precision)
        rate = flops_per_image[point.variant] * point.batch_size / min(point.latencies_s) / 1e9
        achieved[key][point.variant] = max(rate, achieved[key].get(point.variant, 0.0))
    return dict(achieved)


def run_bench(
    model: Path | None,
    bundle: Path | None,
    preset: str | None,
    settings: BenchSettings,
    end_to_end_inputs: list[str] | None = None,
    on_point: Callable[[int, list[str]], None] | None = None,
    recursive: bool = False,
) -> BenchReport:
    """What `vitdeploy bench` does: pick the model (a preset with random weights, or an exported file and its
    bundle, by default the newest under models/), then benchmark it."""
    from vitdeploy.core.inputs import expand_inputs, recursive_hint

    if preset and (model or bundle):
        raise ConfigError("--preset builds and exports its own model: give either MODEL/--bundle or --preset")
    if preset and optional_torch() is None:
        raise ConfigError("--preset builds its model with PyTorch, which is not installed: benchmark an exported "
                          ".onnx file instead")
    images: list[Path] = []
    if end_to_end_inputs:
        images, unmatched = expand_inputs(end_to_end_inputs, recursive)
        if unmatched or not images:
            raise ConfigError(f"--end-to-end: no images found for {', '.join(unmatched) or end_to_end_inputs}"
                              + ("" if recursive else recursive_hint(end_to_end_inputs)))
    with tempfile.TemporaryDirectory(prefix="vitdeploy-bench-model-") as tmp:
        if preset:
            files = preset_files(settings)
            logger.info("building %s with random weights (seed %d) and exporting it%s", preset, settings.seed,
                        f", with {', '.join(f'model.{v}.onnx' for v in files)} built as export builds them" if files
                        else "")
            under_test = model_from_preset(preset, Path(tmp), settings.seed, files)
        else:
            under_test = model_from_files(model, bundle)
        return benchmark(under_test, settings, images or None, on_point)


def preset_files(settings: BenchSettings) -> list[str]:
    """The export variants a preset builds: the files of the variants asked for that this machine can run."""
    specs = [VARIANTS[name] for name in settings.requested]
    return list(dict.fromkeys(s.export.name for s in specs if s.export and runtime_problem(s) is None))


def run_request(request: BenchRequest) -> BenchReport:
    """`vitdeploy bench`: the benchmark asked for, with its recommendation, baseline comparison, saved report and
    plot; progress on stderr while it runs when request.progress and stderr is a terminal."""
    from rich.console import Console

    from vitdeploy.benchmark.render import plot_report, progress_display
    from vitdeploy.benchmark.report import compare_to_baseline, load_report, recommend_batch_size
    from vitdeploy.core.atomic import atomic_write_json

    settings = BenchSettings(
        batch_sizes=request.batch_sizes, variants=request.variants, warmup_iters=request.warmup_iters,
        warmup_seconds=request.warmup_seconds, min_iters=request.min_iters, min_seconds=request.min_seconds,
        block_idle=request.block_idle, threads=request.threads, runtimes=request.runtimes,
    )
    baseline = load_report(request.baseline) if request.baseline else None  # before minutes of measuring
    with progress_display(Console(stderr=True), settings, enabled=request.progress) as on_point:
        report = run_bench(request.model, request.bundle, request.preset, settings, list(request.end_to_end) or None,
                           on_point=on_point, recursive=request.recursive)
    if request.p99_budget is not None:
        report.recommendation = recommend_batch_size(report, request.p99_budget)
    if baseline is not None:
        report.regression = compare_to_baseline(report, baseline, request.max_regress)
    if request.output:
        atomic_write_json(request.output, report.to_dict())
    if request.plot:
        plot_report(report, request.plot)
    return report
