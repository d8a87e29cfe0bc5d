"""vitdeploy bench: the protocol, the report's schema, the files it times, the regression gate, the
recommendations, and the progress display.

Tiny model, few iterations; nothing here asserts on how long anything took.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import make_bundle
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from vitdeploy import benchmark as bench
from vitdeploy.benchmark.artifacts import OnnxFile, build_variant_files, model_from_files, plan_variants
from vitdeploy.benchmark.peak import GemmRunner, theoretical_gflops
from vitdeploy.benchmark.peak import peaks as measured_peaks
from vitdeploy.benchmark.protocol import Blocks, block_schedule, measure
from vitdeploy.benchmark.render import TerminalProgress, progress_display, progress_wanted
from vitdeploy.benchmark.report import (
    SCHEMA,
    PointResult,
    compare_to_baseline,
    recommend_batch_size,
    recommend_variant,
    regression_failures,
)
from vitdeploy.benchmark.timing import Runner, input_batch
from vitdeploy.benchmark.variants import VARIANTS, VariantSpec
from vitdeploy.cli import app
from vitdeploy.core.config import ModelConfig
from vitdeploy.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, ConfigError, DeviceError
from vitdeploy.files.onnx_file import META_EXPORT
from vitdeploy.runtimes.ort import CPU, cuda_status
from vitdeploy.training.data import DIGITS_NAME

# The digits' 10 classes, so that export's accuracy gate can judge the variants on the held-out digits.
CFG = ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, num_classes=10)
DIGITS = {"source": DIGITS_NAME, "split": "seeded-permutation", "split_seed": 0, "val_fraction": 0.2}
# Enough to exercise every code path, few enough to stay fast: no minimum time, two timed runs.
QUICK = ["--warmup-iters", "1", "--warmup-seconds", "0", "--min-iters", "2", "--min-seconds", "0", "--threads", "1",
         "--block-idle", "0"]
CPU_VARIANTS = "torch,ort-cpu,ort-cpu-fused"
ORT_VARIANTS = ("ort-cpu", "ort-cpu-fused", "ort-cpu-int8")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model.onnx, bundle) as `vitdeploy export BUNDLE --optimize --precision int8 --no-verify` leaves them:
    model.fp32-opt.onnx and model.int8.onnx (static, through the accuracy gate) beside model.onnx."""
    from vitdeploy.exporting.exporter import export_onnx

    bundle = make_bundle(tmp_path_factory.mktemp("bench") / "bundle", CFG, dataset=DIGITS)
    onnx_path = export_onnx(bundle, verify=False, variants=["fp32-opt", "int8"]).path
    return onnx_path, bundle


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["bench", *args])
    return result.exit_code, result.stdout


def run_cli_stderr(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["bench", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def cli_report(exported: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    onnx_path, bundle = exported
    saved = tmp_path_factory.mktemp("out") / "bench.json"
    code, stdout = run_cli(str(onnx_path), "--bundle", str(bundle), "--variants", CPU_VARIANTS + ",ort-cpu-int8",
                           "--batch-sizes", "1,3", *QUICK, "--json", "--output", str(saved))
    assert code == 0, stdout
    return json.loads(stdout), saved


def test_json_report_schema_and_numbers(cli_report: tuple[dict, Path]) -> None:
    report, saved = cli_report
    assert report["schema"] == SCHEMA
    assert json.loads(saved.read_text()) == report  # --output saves exactly what --json prints
    assert set(report["variants"]) == {"torch", *ORT_VARIANTS}
    assert report["model"]["macs_per_image"]["total"] > 0
    assert report["settings"]["threads"] == 1 and report["environment"]["threads"] == 1
    assert report["protocol"]["interleaving"] == "blocks" and report["protocol"]["blocks"] == 2  # min_iters 2
    assert report["protocol"]["idle_s"] == report["settings"]["block_idle"] == 0  # --block-idle 0
    assert report["environment"]["cpu_count"] >= 1 and report["environment"]["versions"]["onnxruntime-gpu"]
    assert report["peak_gflops"]["cpu"] > 0
    points = {(r["variant"], r["batch_size"]) for r in report["results"]}
    assert points == {(v, b) for v in report["variants"] for b in (1, 3)}
    for row in report["results"]:
        assert row["iterations"] >= 2
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "images_per_s", "speedup_vs_eager"):
            assert row[key] > 0, (row["variant"], key)
        assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["std_ms"] >= 0
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / row["mean_ms"] * 1e3, rel=1e-3)
        # Each row against the peak of its own precision (an fp32 peak says nothing about int8 kernels).
        precision = "int8" if row["variant"] == "ort-cpu-int8" else "fp32"
        assert row["precision"] == precision and row["runtime"] in ("torch", "ort")
        assert row["peak_gflops"] == report["peaks"]["cpu"][precision]["gflops"] > 0
        assert 0 < row["mfu"] <= 1.0
    eager = [r for r in report["results"] if r["variant"] == "torch"]
    assert all(r["speedup_vs_eager"] == 1.0 for r in eager)


def test_providers_are_the_ones_sessions_really_got(cli_report: tuple[dict, Path]) -> None:
    variants = cli_report[0]["variants"]
    for name in ORT_VARIANTS:
        assert variants[name]["providers"] == [CPU]
    assert variants["torch"]["providers"] == ["torch-cpu"]
    for v in variants.values():
        assert v["cold_start"]["create_ms"] > 0 and v["cold_start"]["first_run_ms"] > 0


def test_fused_and_quantized_graphs_are_described(cli_report: tuple[dict, Path]) -> None:
    variants = cli_report[0]["variants"]
    fused_ops = variants["ort-cpu-fused"]["graph_ops"]
    # Pre-norm ViT: the residual Add + LayerNorm pairs fuse whatever the attention pattern.
    assert fused_ops.get("SkipLayerNormalization", 0) > 0
    assert "SkipLayerNormalization" not in variants["ort-cpu"]["graph_ops"]
    # The INT8 file export ships: static QDQ.
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(variants["ort-cpu-int8"]["graph_ops"])
    assert variants["ort-cpu-int8"]["quantization"]["method"] == "static"


def test_each_variant_records_the_file_it_timed_and_its_accuracy_check(
    cli_report: tuple[dict, Path], exported: tuple[Path, Path]
) -> None:
    variants = cli_report[0]["variants"]
    onnx_path, bundle = exported
    files = {"ort-cpu": "model.onnx", "ort-cpu-fused": "model.fp32-opt.onnx", "ort-cpu-int8": "model.int8.onnx"}
    for name, file in files.items():
        assert variants[name]["file"] == str(onnx_path.with_name(file))
    for name in ("ort-cpu-fused", "ort-cpu-int8"):
        accuracy = variants[name]["accuracy"]
        assert accuracy["judged"] and accuracy["passed"] and accuracy["check"] == "accuracy gate"
        assert accuracy["summary"]["samples"]["real"] == 359 and "passed export's accuracy gate" in accuracy["note"]
    assert variants["ort-cpu"]["accuracy"]["judged"] is False  # exported with verify off
    assert variants["ort-cpu-fused"]["quantization"] is None
    assert variants["torch"]["file"] == str(bundle)


def test_regression_gate_fails_against_a_doctored_baseline(
    cli_report: tuple[dict, Path], exported: tuple[Path, Path], tmp_path: Path
) -> None:
    report, _ = cli_report
    doctored = json.loads(json.dumps(report))
    for row in doctored["results"]:
        # The baseline claims ort-cpu was 1000x faster and everything else 1000x slower: margins that no
        # machine noise can cross, so the outcome does not depend on timing.
        row["p50_ms"] *= 1e-3 if row["variant"] == "ort-cpu" else 1e3
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(doctored))
    onnx_path, bundle = exported
    code, stdout = run_cli(str(onnx_path), "--bundle", str(bundle), "--variants", "torch,ort-cpu",
                           "--batch-sizes", "1", *QUICK, "--baseline", str(baseline), "--max-regress", "5", "--json")
    assert code == EXIT_CHECK_FAILED
    regression = json.loads(stdout)["regression"]  # the figures are still printed before the gate fails
    assert [r["variant"] for r in regression["compared"] if r["regressed"]] == ["ort-cpu"]
    assert regression["regressed"][0].startswith("ort-cpu @ batch 1")


def test_regression_gate_passes_against_a_slower_baseline(cli_report: tuple[dict, Path]) -> None:
    report, _ = cli_report
    current = report_from_rows(report["results"])
    slower = {"schema": SCHEMA, "results": [{**r, "p50_ms": r["p50_ms"] * 10} for r in report["results"]]}
    comparison = compare_to_baseline(current, slower, max_regress_pct=5)
    assert len(comparison["compared"]) == len(report["results"]) and not comparison["regressed"]
    assert regression_failures(comparison) == []
    assert "nothing was compared" in regression_failures(compare_to_baseline(current, {"results": []}, 5))[0]


def test_baseline_that_is_not_a_report_is_bad_input(exported: tuple[Path, Path], tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"hello": 1}')
    code, _ = run_cli(str(exported[0]), "--baseline", str(bogus), *QUICK)
    assert code == EXIT_BAD_INPUT


def report_from_rows(rows: list[dict]) -> bench.BenchReport:
    """A report whose points have exactly the given p50s (a single latency each)."""
    points = [PointResult(r["variant"], r["batch_size"], [r["p50_ms"] / 1e3]) for r in rows]
    return bench.BenchReport(model={}, settings=bench.BenchSettings(), environment={}, peak_gflops={},
                             variants={p.variant: {} for p in points}, skipped={}, points=points)


def test_p99_budget_recommends_the_largest_batch_that_meets_it() -> None:
    rows = [
        {"variant": "torch", "batch_size": 1, "p50_ms": 10.0},
        {"variant": "torch", "batch_size": 8, "p50_ms": 60.0},
        {"variant": "torch", "batch_size": 32, "p50_ms": 250.0},
        {"variant": "ort-cpu", "batch_size": 1, "p50_ms": 5.0},
        {"variant": "ort-cpu", "batch_size": 8, "p50_ms": 30.0},
        {"variant": "ort-cpu", "batch_size": 32, "p50_ms": 110.0},
    ]
    rec = recommend_batch_size(report_from_rows(rows), p99_budget_ms=100)
    assert rec["per_variant"]["torch"]["batch_size"] == 8
    assert rec["per_variant"]["ort-cpu"]["batch_size"] == 8
    assert rec["best"]["variant"] == "ort-cpu" and rec["best"]["images_per_s"] == pytest.approx(8 / 0.030, abs=1e-3)
    assert recommend_batch_size(report_from_rows(rows), p99_budget_ms=1)["best"] is None


class FixedClock:
    """A timer that runs the work and reports a fixed latency (no clock involved)."""

    def __init__(self, latency_s: float):
        self.latency_s = latency_s

    def time(self, work) -> float:
        work()
        return self.latency_s


class FakeRunner(Runner):
    """Logs the order of its inferences; its timer reports a fixed latency for each."""

    def __init__(self, name: str, latency_s: float, calls: list[str]):
        self.spec = VariantSpec(name, "fake", "cpu", "fp32", "")
        self.timer = FixedClock(latency_s)
        self.calls = calls

    def create(self) -> None:
        pass

    def stage(self, batch: np.ndarray) -> None:
        pass

    def infer(self) -> None:
        self.calls.append(self.spec.name)


def test_block_schedule_alternates_and_gives_every_variant_the_same_blocks() -> None:
    schedule = block_schedule(["a", "b", "c"], ["peak"], count=4)
    assert [(b.runner, b.kind) for b in schedule if b.round == 0] == [("a", "warmup"), ("b", "warmup"),
                                                                     ("c", "warmup")]
    rounds = [[b.runner for b in schedule if b.round == r] for r in range(1, 6)]
    # Each round: every variant once, the order rotated by one; the companion in a block of its own at the end.
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"], ["peak"]]
    timed = [b.runner for b in schedule if b.kind == "timed"]
    assert {name: timed.count(name) for name in "abc"} == {"a": 4, "b": 4, "c": 4}
    assert [b.kind for b in schedule if b.runner == "peak"] == ["companion"] and schedule[-1].runner == "peak"
    assert all(x != y for x, y in zip(timed, timed[1:]))  # blocks alternate: never two of a variant in a row
    two = block_schedule(["a", "b"], [], count=3)
    assert [b.runner for b in two if b.kind == "timed"] == ["a", "b"] * 3  # two variants simply alternate


def test_protocol_runs_in_blocks_and_meets_both_minimums() -> None:
    calls: list[str] = []
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        calls.append("idle")

    # Latencies exact in binary floating point, so the sums cross the thresholds exactly where expected.
    fast, slow = FakeRunner("fast", 0.125, calls), FakeRunner("slow", 0.375, calls)
    settings = bench.BenchSettings(warmup_iters=2, warmup_seconds=0.5, min_iters=3, min_seconds=1.0)
    blocks = Blocks(count=2, idle_s=0.25, block_warmup_calls=1)
    timed = measure([fast, slow], settings, blocks=blocks, sleep=sleep)
    # Warm-up round: fast 4 runs (0.5 s), slow 2 (the count). Each timed block: one untimed call, then at least
    # ceil(3 / 2) = 2 runs and 0.5 s: fast 4 runs, slow 2 (plus the untimed call each).
    assert calls == (["idle", *["fast"] * 4, "idle", *["slow"] * 2]
                     + ["idle", *["fast"] * 5, "idle", *["slow"] * 3] * 2)
    assert pauses == [0.25] * 6
    assert len(timed["fast"]) == 8 and len(timed["slow"]) == 4  # both blocks' runs pooled, warm-ups excluded
    with pytest.raises(ConfigError):
        Blocks(count=0)


def test_companions_run_in_blocks_of_their_own_and_do_not_decide_when_to_stop() -> None:
    calls: list[str] = []
    model = FakeRunner("model", 0.5, calls)
    peak, other = FakeRunner("peak", 10.0, calls), FakeRunner("other", 10.0, calls)
    settings = bench.BenchSettings(warmup_iters=1, warmup_seconds=0, min_iters=2, min_seconds=1.0)
    blocks = Blocks(count=2, idle_s=0, block_warmup_calls=0, companion_calls=2)
    timed = measure([model], settings, companions=[peak, other], blocks=blocks,
                          sleep=lambda seconds: calls.append("idle"))
    # Each block of the model: 1 run (ceil(2 / 2) runs, 0.5 s); then each companion once, its 2 calls per timed
    # round whatever they take, the companions back to back after one idle time.
    assert calls == ["idle", "model"] + ["idle", "model"] * 2 + ["idle", *["peak"] * 4, *["other"] * 4]
    assert len(timed["model"]) == 2 and len(timed["peak"]) == len(timed["other"]) == 4


def test_every_variant_sees_the_same_input() -> None:
    a = input_batch(CFG, 4, seed=0)
    assert a.dtype == np.float32 and a.shape == (4, 3, 16, 16)
    np.testing.assert_array_equal(a, input_batch(CFG, 4, seed=0))


@pytest.mark.skipif(cuda_status().usable, reason="checks the behaviour without CUDA")
def test_cuda_variants_skip_when_auto_and_fail_when_requested(exported: tuple[Path, Path]) -> None:
    model = model_from_files(*exported)
    names, skipped = plan_variants(bench.BenchSettings(runtimes=("ort",)), model)
    assert names == ["torch", *ORT_VARIANTS]
    assert set(skipped) == {"torch-cuda", "ort-cuda", "ort-cuda-graph", "ort-cuda-fp16", "ort-tensorrt"}
    assert all(reason for reason in skipped.values())
    with pytest.raises(DeviceError, match="ort-cuda"):
        plan_variants(bench.BenchSettings(variants=("ort-cpu", "ort-cuda")), model)
    code, _ = run_cli(str(exported[0]), "--variants", "ort-cuda", *QUICK)
    assert code == EXIT_BAD_INPUT


def test_torch_variant_needs_the_weights(exported: tuple[Path, Path], tmp_path: Path) -> None:
    # The file records where its bundle was; without that bundle there is nothing for PyTorch to run.
    model = model_from_files(exported[0], None)
    assert model.bundle == exported[1].resolve()
    model.bundle = None
    _, skipped = plan_variants(bench.BenchSettings(), model)
    assert "bundle" in skipped["torch"]
    with pytest.raises(ConfigError, match="torch"):
        plan_variants(bench.BenchSettings(variants=("torch",)), model)


@pytest.mark.parametrize("bad", [dict(batch_sizes=(0,)), dict(variants=("tensorrt",)), dict(min_iters=0),
                                 dict(threads=0), dict(block_idle=-0.1)])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigError):
        bench.BenchSettings(**bad)


@pytest.mark.slow
def test_preset_end_to_end_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for i in range(3):
        Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    plot = tmp_path / "bench.png"
    code, stdout = run_cli("--preset", "digits", "--variants", "torch,ort-cpu", "--batch-sizes", "1,2", *QUICK,
                           "--end-to-end", str(tmp_path), "--p99-budget", "1000", "--plot", str(plot), "--json")
    assert code == 0, stdout
    report = json.loads(stdout)
    assert report["model"]["source"] == "preset:digits"
    e2e = report["end_to_end"]
    assert e2e["images"] == 3 and e2e["batch_size"] == 2
    assert set(e2e["per_image_ms"]) == {"decode", "preprocess", "model"}
    assert all(ms > 0 for ms in e2e["per_image_ms"].values())
    assert sum(e2e["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert report["recommendation"]["best"]["variant"] in ("torch", "ort-cpu")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# `vitdeploy ARGS...` in a process where `import torch` fails, as on a machine without it.
WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['vitdeploy', *sys.argv[1:]]; "
                 "runpy.run_module('vitdeploy', run_name='__main__')")


@pytest.mark.slow
def test_onnx_variants_are_benchmarked_without_torch(exported: tuple[Path, Path]) -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "bench", str(exported[0]), *QUICK, "--runtimes", "ort",
                           "--json"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["variants"]) == set(ORT_VARIANTS)
    assert report["skipped"]["torch"] == 'PyTorch is not installed: pip install "vitdeploy[train]"'
    assert report["environment"]["torch_threads"] is None
    # Without torch the peak comes from numpy's and ONNX Runtime's GEMMs (and the ISA's figure): MFU still stands.
    candidates = report["peaks"]["cpu"]["fp32"]["candidates"]
    assert "GEMM numpy.matmul float32" in candidates and not any("torch" in name for name in candidates)
    assert all(0 < r["mfu"] <= 1 for r in report["results"])
    assert "without torch's GEMMs" in done.stderr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_shown_only_on_a_terminal_and_never_with_json() -> None:
    assert progress_wanted(enabled=True, stream=Terminal())
    assert not progress_wanted(enabled=False, stream=Terminal())
    assert not progress_wanted(enabled=True, stream=io.StringIO())
    with progress_display(Console(file=Terminal()), bench.BenchSettings(), enabled=False) as on_point:
        assert on_point is None


def test_json_and_non_terminal_output_carry_no_progress(exported: tuple[Path, Path]) -> None:
    code, stdout, stderr = run_cli_stderr(str(exported[0]), "--variants", "ort-cpu", "--batch-sizes", "1,2", *QUICK,
                                          "--json")
    assert code == 0 and json.loads(stdout)["schema"] == SCHEMA
    assert "batch 2: timing ort-cpu in alternating blocks" in stderr  # the log line, not a live display
    assert " left" not in stderr and "\x1b[" not in stderr


def test_progress_names_the_point_and_estimates_the_time_left() -> None:
    now = [100.0]
    console = Console(file=Terminal(), force_terminal=True, width=120)
    settings = bench.BenchSettings(batch_sizes=(1, 8), warmup_seconds=1.0, min_seconds=2.0)
    blocks = Blocks(count=3, idle_s=0.25)  # 1 s idle per variant and point: 4 blocks (warm-up + 3)
    with TerminalProgress(console, settings, clock=lambda: now[0], blocks=blocks) as progress:
        progress(1, ["torch", "ort-cpu"])
        assert progress.time_left.at(100.0) == (16.0, True)  # 2 points x 2 variants x (1 + 2 + 1) s at least
        assert progress.time_left.at(110.0) == (10.0, True)  # this point outlasts 8 s: so will the next one
        now[0] += 20.0
        progress(8, ["torch", "ort-cpu"])
        assert progress.time_left.at(120.0) == (20.0, False)  # the first point took 20 s: one more like it
        assert progress.time_left.at(130.0) == (10.0, False)
        progress.progress.refresh()
        shown = console.file.getvalue()
    assert "batch 8: torch, ort-cpu" in shown and "1/2" in shown and "about 0:20 left" in shown


def test_preset_and_model_together_is_bad_input(exported: tuple[Path, Path]) -> None:
    code, _ = run_cli(str(exported[0]), "--preset", "digits", *QUICK)
    assert code == EXIT_BAD_INPUT


def test_fp16_conversion_keeps_fp32_inputs_and_outputs(exported: tuple[Path, Path], tmp_path: Path) -> None:
    # The fp16 variant runs only on CUDA; its conversion for a preset is checked here, where there is no GPU.
    import onnx

    base = tmp_path / "model.onnx"
    shutil.copy(exported[0], base)
    build_variant_files(base, CFG, ["fp16"])
    fp16 = OnnxFile.read(tmp_path / "model.fp16.onnx")
    assert fp16.graph_ops.get("Cast", 0) >= 2  # fp32 -> fp16 at the input, back at the output
    assert fp16.info.export["precision"] == "fp16" and fp16.info.labels == [str(i) for i in range(10)]
    graph = onnx.load(tmp_path / "model.fp16.onnx").graph
    assert {i.type.tensor_type.elem_type for i in [*graph.input, *graph.output]} == {onnx.TensorProto.FLOAT}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)


def test_a_missing_variant_file_names_the_export_command_that_makes_it(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    onnx_path, bundle = exported
    alone = tmp_path / "model.onnx"
    shutil.copy(onnx_path, alone)  # no variants beside it; its metadata still names the bundle
    names, skipped = plan_variants(bench.BenchSettings(runtimes=("ort",)), model_from_files(alone, None))
    assert names == ["torch", "ort-cpu"]
    assert skipped["ort-cpu-int8"] == (f"no model.int8.onnx beside model.onnx: make it with "
                                       f"`vitdeploy export {bundle.resolve()} --out {alone} --precision int8`")
    assert skipped["ort-cpu-fused"].endswith(f"--out {alone} --optimize`")
    code, _, stderr = run_cli_stderr(str(alone), "--variants", "ort-cpu,ort-cpu-int8", *QUICK)
    assert code == EXIT_BAD_INPUT and "--precision int8" in stderr


def test_a_variant_made_from_other_weights_is_not_timed(exported: tuple[Path, Path], tmp_path: Path) -> None:
    import onnx

    from vitdeploy.files.onnx_file import set_metadata

    for name in ("model.onnx", "model.int8.onnx"):
        shutil.copy(exported[0].with_name(name), tmp_path / name)
    stale = onnx.load(tmp_path / "model.int8.onnx")
    export_facts = json.loads(next(p.value for p in stale.metadata_props if p.key == META_EXPORT))
    set_metadata(stale, {META_EXPORT: {**export_facts, "weights_sha256": "0" * 64}})
    onnx.save(stale, tmp_path / "model.int8.onnx")
    model = model_from_files(tmp_path / "model.onnx", None)
    _, skipped = plan_variants(bench.BenchSettings(), model)
    assert "other weights" in skipped["ort-cpu-int8"]
    with pytest.raises(ConfigError, match="other weights"):
        plan_variants(bench.BenchSettings(variants=("ort-cpu-int8",)), model)


def test_a_variant_file_is_refused_as_the_model(exported: tuple[Path, Path]) -> None:
    code, _, stderr = run_cli_stderr(str(exported[0].with_name("model.int8.onnx")), *QUICK)
    assert code == EXIT_BAD_INPUT and "int8 variant of model.onnx" in stderr


@pytest.mark.slow
def test_preset_variants_are_built_as_export_builds_them() -> None:
    code, stdout = run_cli("--preset", "tiny", "--variants", ",".join(ORT_VARIANTS), "--batch-sizes", "1", *QUICK,
                           "--json")
    assert code == 0, stdout
    variants = json.loads(stdout)["variants"]
    assert variants["ort-cpu-int8"]["quantization"]["method"] == "static"
    assert "DequantizeLinear" in variants["ort-cpu-int8"]["graph_ops"]
    assert variants["ort-cpu-fused"]["graph_ops"].get("SkipLayerNormalization", 0) > 0
    for name in ORT_VARIANTS:
        assert variants[name]["accuracy"] == {"judged": False, "passed": None, "check": None,
                                              "note": "accuracy not judged (random weights)", "summary": None}


# ------------------------------------------------------------------------------------- MFU and the peak behind it


class FakeGemm(GemmRunner):
    def __init__(self, name: str, precision: str = "fp32"):
        self.precision = precision
        super().__init__(name, "cpu", 1024)

    def create(self) -> None:
        pass

    def infer(self) -> None:
        pass


def test_mfu_never_exceeds_100_percent_whatever_the_gemms_measured(monkeypatch) -> None:
    """A variant faster than every GEMM measured (ORT reached 304 GFLOP/s against a 222 GFLOP/s torch.mm on the
    AMD EPYC: 137% MFU) sets the peak itself, so no MFU can pass 100%; each precision gets its own peak, and a
    precision with no GEMM and no ISA figure gets no MFU at all."""
    from vitdeploy.benchmark import peak as peak_module

    monkeypatch.setattr(peak_module, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    monkeypatch.setattr(peak_module, "cpu_clock_ghz", lambda: (2.1, "test"))
    flops = 2.5e9  # per image
    slow_gemm = FakeGemm("torch.mm float32 1 thread x 2")
    timings = {slow_gemm: [2 * 1024**3 / 222e9]}  # 222 GFLOP/s
    latencies = {"ort-cpu": 32 * flops / 304e9, "ov-cpu": 32 * flops / 250e9, "ov-cpu-bf16": 32 * flops / 900e9,
                 "ort-cuda-fp16": 32 * flops / 5000e9}
    points = [PointResult(name, 32, [t, t * 1.3]) for name, t in latencies.items()]
    achieved = {}
    for p in points:
        spec = VARIANTS[p.variant]
        achieved.setdefault((spec.device, spec.precision), {})[p.variant] = flops * 32 / min(p.latencies_s) / 1e9
    peaks = measured_peaks(timings, achieved, threads=2)
    fp32 = peaks["cpu"]["fp32"]
    assert fp32.source == "variant ort-cpu" and fp32.gflops == pytest.approx(304)  # above the GEMM and the ISA (269)
    assert fp32.candidates["ISA theoretical"] == pytest.approx(2 * 2.1 * 64)
    assert peaks["cpu"]["bf16"].source == "ISA theoretical" and peaks["cpu"]["bf16"].gflops == pytest.approx(4300.8)
    assert "cuda" not in peaks  # fp16 on CUDA: no GEMM measured, no ISA figure: no peak
    bench.report.add_ratios(points, peaks, flops)
    mfus = {p.variant: p.mfu for p in points}
    assert all(m is None or 0 < m <= 1.0 for m in mfus.values())
    assert mfus["ort-cuda-fp16"] is None and mfus["ov-cpu-bf16"] < 0.25  # against the bf16 peak, not fp32's
    assert mfus["ort-cpu"] == pytest.approx(1 / 1.15, rel=1e-3)  # its mean rate over its own fastest run


def test_theoretical_peak_needs_the_isa_and_a_clock(monkeypatch) -> None:
    from vitdeploy.benchmark import peak as peak_module

    assert theoretical_gflops("fp32", 2, frozenset({"fma"}), (3.0, "x"))[0] == pytest.approx(2 * 3.0 * 32)
    assert theoretical_gflops("int8", 1, frozenset({"avx512_vnni"}), (2.0, "x"))[0] == pytest.approx(512)
    assert theoretical_gflops("bf16", 2, frozenset({"avx512f"}), (2.0, "x")) is None  # no bf16 hardware
    monkeypatch.setattr(peak_module, "cpu_clock_ghz", lambda: None)
    assert theoretical_gflops("fp32", 2, frozenset({"avx512f"})) is None  # no clock known


def test_the_fastest_variant_recommended_is_one_that_passed_its_gate() -> None:
    def accuracy(passed: bool | None, runtimes: list[str], drop: float = 0.0) -> dict:
        if passed is None:
            return {"judged": False, "passed": None, "check": None, "summary": None}
        summary = {"passed": passed, "runtimes": runtimes, "accuracy_drop_pt": drop, "top1_agreement": 0.995}
        return {"judged": True, "passed": passed, "check": "accuracy gate", "summary": summary}

    variants = {
        "torch": {"runtime": "torch", "accuracy": None},
        "ort-cpu": {"runtime": "ort", "accuracy": {**accuracy(True, ["ort"]), "check": "parity"}},
        "ov-cpu": {"runtime": "openvino", "accuracy": accuracy(True, ["ort"])},  # checked on ORT only: untested
        "ov-cpu-bf16": {"runtime": "openvino", "accuracy": accuracy(True, ["openvino"], 0.28)},
        "ov-cpu-int8": {"runtime": "openvino", "accuracy": accuracy(False, ["openvino"], 0.9)},
        "ort-cpu-int8": {"runtime": "ort", "accuracy": accuracy(None, [])},  # preset: random weights
    }
    p50 = {"torch": 50, "ort-cpu": 40, "ov-cpu": 10, "ov-cpu-bf16": 20, "ov-cpu-int8": 5, "ort-cpu-int8": 4}
    report = report_from_rows([{"variant": v, "batch_size": 32, "p50_ms": ms} for v, ms in p50.items()])
    report.variants = {name: {**v, "ran": {"runtime": v["runtime"]}} for name, v in variants.items()}
    report.settings = bench.BenchSettings(batch_sizes=(32,))
    bench.report.add_ratios(report.points, {}, 1e9)
    best = recommend_variant(report)
    assert best["per_batch_size"]["32"]["variant"] == "ov-cpu-bf16"
    assert best["per_batch_size"]["32"]["speedup_vs_ort_fp32"] == pytest.approx(2.0)
    assert best["per_batch_size"]["32"]["accuracy_drop_pt"] == 0.28
    assert best["gate"] == {"torch": "reference", "ort-cpu": "passed", "ov-cpu": "untested", "ov-cpu-bf16": "passed",
                            "ov-cpu-int8": "failed", "ort-cpu-int8": "untested"}
    assert best["never_recommended"] == ["ort-cpu-int8", "ov-cpu", "ov-cpu-int8"]
