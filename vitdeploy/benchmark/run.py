"""A whole benchmark: plan the variants, create them (cold start), time them with the protocol at every batch size
next to the matmul peak, optionally time the pipeline end to end, and assemble the report."""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitdeploy.benchmark.artifacts import ModelUnderTest, describe_file, model_from_files, model_from_preset, plan_variants
from vitdeploy.benchmark.end_to_end import end_to_end
from vitdeploy.benchmark.environment import environment, optional_torch, warn_if_busy
from vitdeploy.benchmark.protocol import cold_start, input_batch, measure_points
from vitdeploy.benchmark.report import BenchReport, add_ratios
from vitdeploy.benchmark.runners import MatmulPeakRunner, make_runner, torch_threads
from vitdeploy.benchmark.variants import EAGER, VARIANTS, BenchSettings, runtime_problem
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
                "description": spec.description, "providers": runner.providers, "cold_start": started.to_dict(),
                **describe_file(model, spec),
            }
            log(f"{spec.name}: ready on {runner.providers[0]} (create {started.create_s * 1e3:.0f} ms)")
        peak_runners = _peak_runners({r.spec.device for r in runners}, threads, log)
        points = measure_points(runners, settings, batch_for, peak_runners, point_started)
        e2e = (end_to_end(model.onnx_path, end_to_end_images, max(settings.batch_sizes), threads)
               if end_to_end_images else None)
    peak_gflops = {
        r.spec.device: r.gflops([t for p in points if p.variant == r.spec.name for t in p.latencies_s])
        for r in peak_runners
    }
    points = [p for p in points if p.variant in variants]
    add_ratios(points, peak_gflops, macs.flops)
    return BenchReport(
        model={"source": model.source, "onnx": str(model.onnx_path), "bundle": str(model.bundle) if model.bundle else None,
               "config": model.config.to_dict(), "macs_per_image": macs.to_dict()},
        settings=settings,
        environment=env,
        peak_gflops={device: round(gflops, 2) for device, gflops in peak_gflops.items()},
        variants=variants,
        skipped=skipped,
        points=points,
        end_to_end=e2e,
        created_at=now_iso(),
    )


def _peak_runners(devices: set[str], threads: int, log: Log) -> list[MatmulPeakRunner]:
    """One created matmul peak runner per device the variants use, where PyTorch eager can run on it: the peak is
    a torch matmul."""
    runners = []
    for device in sorted(devices):
        problem = runtime_problem(VARIANTS[EAGER[device]])
        if problem:
            log(f"no fp32 matmul peak on {device} ({problem}), so no MFU there")
            continue
        runners.append(MatmulPeakRunner(device, threads))
        runners[-1].create()
    return runners


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
            files = [s.export_variant for s in specs if s.export_variant and runtime_problem(s) is None]
            log(f"building {preset} with random weights (seed {settings.seed}) and exporting it"
                + (f", with {', '.join(f'model.{v}.onnx' for v in files)} built as export builds them" if files else ""))
            under_test = model_from_preset(preset, Path(tmp), settings.seed, files)
        else:
            under_test = model_from_files(model, bundle)
        return benchmark(under_test, settings, log, images or None, on_point)
