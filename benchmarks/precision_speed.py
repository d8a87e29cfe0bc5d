"""Faster gated variants on a CPU (issue 18, section 2): every candidate built, judged by the accuracy gate on its
runtime, and timed against ONNX Runtime fp32 in one run, interleaved in blocks.

    python benchmarks/precision_speed.py /tmp/ti16regions/best --runs 3          # the headline table
    python benchmarks/precision_speed.py BUNDLE --work /tmp/ps --profile          # + per-op profiles (OpenVINO, ORT)

Builds in --work (kept, so a second invocation only times): model.onnx and the export variants (int8, ov-bf16,
ov-int8, ov-int8-bf16: each through export's own builders), plus candidates that are not rows: ORT static INT8 in
QOperator format, ORT dynamic INT8, NNCF INT8 on every MatMul with bf16 for the rest. Each is judged against
PyTorch fp32 on the bundle's held-out images (the default gate: 0.5 pt, 99% top-1 agreement) on the runtime it is
for. Timing: per batch size, each variant runs for a block of --block-seconds (after one untimed call), the
blocks alternate over the variants, --blocks rounds, with a pause between blocks so that the previous runtime's
spinning threads are idle (DESIGN.md fact 12); p50 over every timed call. --runs repeats the whole timing.
Writes benchmarks/precision_speed/<name>.json and benchmarks/precision_speed.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "precision_speed"
SCHEMA = "vitdeploy.precision_speed/1"
VERSIONS_SHOWN = ("onnxruntime", "openvino", "nncf", "torch")
PAUSE_S = 0.3  # between blocks: longer than ORT's and OpenVINO's spin-wait before their threads sleep


@dataclasses.dataclass
class Candidate:
    """One timed configuration: a file on a runtime with its session settings."""

    name: str
    file: str  # relative to the work folder
    runtime: str  # ort | openvino
    what: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # session settings
    batch_sizes: tuple[int, ...] | None = None  # None: every batch size

    def open(self, work: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
        path = work / self.file
        if self.runtime == "openvino":
            from vitdeploy.runtimes.openvino import OpenVinoSession

            session = OpenVinoSession(path, "cpu", threads=threads, **self.options)
            return session.run
        import onnxruntime as ort

        from vitdeploy.files.onnx_file import INPUT_NAME, OUTPUT_NAME

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        for key, value in self.options.items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        return lambda batch: session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


NO_SPIN = {"session.intra_op.allow_spinning": "0"}
PLAIN = {"static_batch": False, "throughput": False}  # OpenVINO: one dynamic LATENCY compilation
CANDIDATES = (
    Candidate("ort-fp32", "model.onnx", "ort", "ONNX Runtime CPU fp32, the plain export (the reference)"),
    Candidate("ort-fp32-nospin", "model.onnx", "ort", "the same, intra-op spinning off", NO_SPIN),
    Candidate("ort-fp32-pinned", "model.onnx", "ort", "the same, the intra-op thread pinned to CPU 2",
              {"session.intra_op_thread_affinities": "2"}),
    Candidate("ort-int8-qdq", "model.int8.onnx", "ort", "static INT8, QDQ, per-channel (vitdeploy's int8)"),
    Candidate("ort-int8-qdq-nospin", "model.int8.onnx", "ort", "the same, spinning off", NO_SPIN),
    Candidate("ort-int8-qop", "qop/model.int8.onnx", "ort", "static INT8, QOperator format, per-channel"),
    Candidate("ort-int8-dynamic", "dynamic/model.int8.onnx", "ort", "dynamic INT8 of the fused graph"),
    Candidate("ort-mnb8", "mnb8/model.int8.onnx", "ort",
              "MatMulNBits: 8-bit weights in blocks of 32, int8 compute (accuracy_level 4)"),
    Candidate("ov-bf16", "model.ov-bf16.onnx", "openvino", "OpenVINO bf16 (the fp32 graph)", PLAIN),
    Candidate("ov-int8", "model.ov-int8.onnx", "openvino", "NNCF INT8, fixed fp32 set, f32 for the rest", PLAIN),
    Candidate("ov-int8-bf16-plain", "model.ov-int8-bf16.onnx", "openvino",
              "NNCF INT8, searched fp32 set, bf16 for the rest (the new row), one dynamic compilation", PLAIN),
    Candidate("ov-int8-bf16-static", "model.ov-int8-bf16.onnx", "openvino",
              "the same, compiled per batch size (static shape)", {**PLAIN, "static_batch": True}),
    Candidate("ov-int8-bf16-tput", "model.ov-int8-bf16.onnx", "openvino",
              "the same, THROUGHPUT hint + async infer queue", {**PLAIN, "throughput": True}, (32,)),
    Candidate("ov-int8-bf16", "model.ov-int8-bf16.onnx", "openvino",
              "the same with OpenVinoSession's defaults: static shapes and THROUGHPUT for batches >= 8"),
    Candidate("ov-int8-all-bf16", "all/model.ov-int8-bf16.onnx", "openvino",
              "NNCF INT8 on every MatMul, bf16 for the rest (no search)", PLAIN),
)
GATED_FILES = {  # file -> (variant row it is judged as, runtime)
    "model.int8.onnx": ("int8", "ort"), "qop/model.int8.onnx": ("int8", "ort"),
    "dynamic/model.int8.onnx": ("int8", "ort"), "mnb8/model.int8.onnx": ("int8", "ort"),
    "model.ov-bf16.onnx": ("ov-bf16", "openvino"),
    "model.ov-int8.onnx": ("ov-int8", "openvino"), "model.ov-int8-bf16.onnx": ("ov-int8-bf16", "openvino"),
    "all/model.ov-int8-bf16.onnx": ("ov-int8-bf16", "openvino"),
}


# ---------------------------------------------------------------------------------------------------- building


def build(bundle: Path, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Every file in `work` (skipping the ones already there) and the gate's verdict on each; build facts."""
    from vitdeploy.exporting import exporter as export
    from vitdeploy.exporting import gate as accuracy_gate
    from vitdeploy.exporting import ladder as precision
    from vitdeploy.files.bundle import load_bundle

    model, info = load_bundle(bundle)
    data = accuracy_gate.gate_data(model, info)
    let_through = accuracy_gate.AccuracyGate(max_accuracy_drop=100.0, min_top1_agreement=0.0)
    saved = work / "build-facts.json"  # what earlier invocations built, and how long it took
    facts: dict[str, Any] = json.loads(saved.read_text()) if saved.is_file() else {}
    if not (work / "model.onnx").is_file():
        export.export_onnx(bundle, out=work / "model.onnx")
    for variant in ("int8", "ov-bf16", "ov-int8", "ov-int8-bf16"):
        if not (work / f"model.{variant}.onnx").is_file():
            log(f"building {variant}")
            [result] = precision.export_variants(model, info, work / "model.onnx", [variant], let_through, data)
            facts[variant] = {"build_seconds": round(result.build_seconds, 1), "quantization": result.quantization}
            saved.write_text(json.dumps(facts, indent=1))
    _build_extra(model, info, work, data, let_through, log)
    facts["gates"] = {}
    for file, (variant, runtime) in GATED_FILES.items():
        if (work / file).is_file():
            verdict = accuracy_gate.judge(variant, "int8", work / file, data, accuracy_gate.AccuracyGate(),
                                          runtime=runtime)
            facts["gates"][file] = verdict.summary()
    facts["gate_images"] = len(data.inputs)
    facts["pytorch_fp32_accuracy"] = float((data.reference.argmax(1) == data.labels).mean())
    return facts


def _build_extra(model: Any, info: Any, work: Path, data: Any, let_through: Any, log: Callable[[str], None]) -> None:
    """The candidates that are not rows of the variant table."""
    import shutil

    from vitdeploy.exporting import graphs as graph_variants
    from vitdeploy.exporting import ladder as precision

    calibration = precision.calibration_inputs(info)
    if not (work / "dynamic" / "model.int8.onnx").is_file():
        log("building dynamic INT8")
        (work / "dynamic").mkdir(exist_ok=True)
        shutil.copy(work / "model.onnx", work / "dynamic" / "model.onnx")
        precision.export_variants(model, info, work / "dynamic" / "model.onnx", ["int8"], let_through, data,
                                  int8_method="dynamic")
    if not (work / "qop" / "model.int8.onnx").is_file():
        log("building QOperator INT8")
        (work / "qop").mkdir(exist_ok=True)
        proto = _int8_qoperator(work / "model.onnx", calibration, work / "qop")
        _save_described(proto, work, "qop/model.int8.onnx", "int8", {"format": "QOperator"})
    if not (work / "mnb8" / "model.int8.onnx").is_file():
        log("building MatMulNBits 8-bit")
        (work / "mnb8").mkdir(exist_ok=True)
        _save_described(_matmul_8bits(work / "model.onnx"), work, "mnb8/model.int8.onnx", "int8",
                        {"format": "MatMulNBits", "bits": 8, "block_size": 32, "accuracy_level": 4})
    if not (work / "all" / "model.ov-int8-bf16.onnx").is_file():
        log("building NNCF INT8 on everything")
        (work / "all").mkdir(exist_ok=True)
        proto, settings = graph_variants.to_ov_int8(work / "model.onnx", calibration, work / "all", kept=[])
        _save_described(proto, work, "all/model.ov-int8-bf16.onnx", "ov-int8-bf16", settings)


def _save_described(proto: Any, work: Path, file: str, variant: str, quantization: dict[str, Any]) -> None:
    from vitdeploy.exporting.ladder import describe_variant
    from vitdeploy.files.onnx_file import read_metadata, save_onnx

    describe_variant(proto, read_metadata(work / "model.onnx"), variant, None, quantization)
    save_onnx(proto, work / file)


def _matmul_8bits(base: Path) -> Any:
    """ORT's weight-only MatMulNBits at 8 bits; accuracy_level 4 lets the CPU kernel quantize activations to int8
    per block and use its int8 dot products."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(os.fspath(base)), bits=8, block_size=32, is_symmetric=True,
                                     accuracy_level=4)
    quantizer.process()
    return quantizer.model.model


def _int8_qoperator(base: Path, calibration: np.ndarray, workdir: Path) -> Any:
    """vitdeploy's static INT8 (same nodes, per-channel weights, uint8 activations) in ORT's QOperator format."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from vitdeploy.exporting.graphs import calibration_reader, linear_matmuls

    _, products = linear_matmuls(onnx.load(os.fspath(base)))
    out = workdir / "qop.onnx"
    quantize_static(os.fspath(base), os.fspath(out), calibration_reader(calibration), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                    nodes_to_exclude=products, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return onnx.load(os.fspath(out))


# ---------------------------------------------------------------------------------------------------- timing


def time_blocks(runs: dict[str, Callable[[np.ndarray], np.ndarray]], batch: np.ndarray, blocks: int,
                block_seconds: float) -> dict[str, list[float]]:
    """Seconds per call for each variant: blocks of calls, the variants alternating block by block."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(blocks):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))  # neither always follows the same one
        for name in order:
            time.sleep(PAUSE_S)
            runs[name](batch)  # untimed: the pools wake up
            end = time.perf_counter() + block_seconds
            while True:
                start = time.perf_counter()
                runs[name](batch)
                times[name].append(time.perf_counter() - start)
                if start > end:
                    break
    return times


def measure(work: Path, candidates: list[Candidate], batch_sizes: list[int], threads: int, args: Any,
            inputs: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for batch_size in batch_sizes:
        batch = np.ascontiguousarray(np.resize(inputs, (batch_size, *inputs.shape[1:])), np.float32)
        chosen = [c for c in candidates if c.batch_sizes is None or batch_size in c.batch_sizes]
        runs = {c.name: c.open(work, threads) for c in chosen}
        for run in range(args.runs):
            load = os.getloadavg()[0]
            times = time_blocks(runs, batch, args.blocks, args.block_seconds)
            p50 = {name: statistics.median(t) for name, t in times.items()}
            for name, t in times.items():
                rows.append({"variant": name, "batch_size": batch_size, "run": run, "calls": len(t),
                             "p50_ms": round(1000 * p50[name], 3), "images_per_s": round(batch_size / p50[name], 1),
                             "vs_ort_fp32": round(p50["ort-fp32"] / p50[name], 3), "load_1min": load})
            print(f"batch {batch_size} run {run}: " + ", ".join(
                f"{n} {p50['ort-fp32'] / p:.2f}x" for n, p in p50.items()), file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------- profiles


def profiles(work: Path, threads: int, inputs: np.ndarray, batch_sizes: list[int]) -> list[dict[str, Any]]:
    return [profile(work, threads, np.ascontiguousarray(np.resize(inputs, (b, *inputs.shape[1:])), np.float32))
            for b in batch_sizes]


def profile(work: Path, threads: int, batch: np.ndarray) -> dict[str, Any]:
    """Per-op-type time: OpenVINO's PERF_COUNT (ov-int8-bf16, by layer type and kernel) and ORT's profiler (fp32)."""
    import onnxruntime as ort
    import openvino as ov

    from vitdeploy.files.onnx_file import INPUT_NAME, OUTPUT_NAME
    from vitdeploy.runtimes.openvino import core

    result: dict[str, Any] = {"batch_size": len(batch)}
    for file, hint in (("model.ov-int8-bf16.onnx", "bf16"), ("all/model.ov-int8-bf16.onnx", "bf16")):
        compiled = core().compile_model(core().read_model(os.fspath(work / file)), "CPU", {
            "PERF_COUNT": True, "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads})
        request = compiled.create_infer_request()
        for _ in range(3):
            request.infer({INPUT_NAME: batch})
        by_kind: Counter[str] = Counter()
        for info in request.get_profiling_info():
            if info.status == ov.ProfilingInfo.Status.EXECUTED:
                by_kind[f"{info.node_type} [{info.exec_type}]"] += info.real_time.total_seconds() * 1000
        total = sum(by_kind.values())
        result[file] = {"total_ms": round(total, 2), "top": {k: round(v, 2) for k, v in by_kind.most_common(12)}}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = os.fspath(work / "ort-profile")
    session = ort.InferenceSession(os.fspath(work / "model.onnx"), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"].get("op_name", "?")] += e["dur"] / 1000 / 3
    result["ort-fp32"] = {"total_ms": round(sum(by_op.values()), 2),
                          "top": {k: round(v, 2) for k, v in by_op.most_common(8)}}
    return result


# ---------------------------------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    versions = env.get("versions") or {}
    lines = [
        "# Faster gated variants on CPU (issue 18, section 2)",
        "",
        f"Generated by `{report['command']}`. {env.get('cpu', '?')}, {report['threads']} threads, "
        f"OpenVINO CPU capabilities {', '.join(env.get('openvino_cpu_capabilities') or [])}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if k.startswith(VERSIONS_SHOWN))
        + f". Load average before: {', '.join(f'{x:.1f}' for x in env.get('load_average') or [])} "
        "(a shared 2-core machine: ratios are from one interleaved run each; absolute times are not comparable "
        "across runs). What the figures mean and what was kept: docs/precision-speed.md.",
        "",
        (f"Held-out images: {report['gate_images']}, PyTorch fp32 accuracy {report['pytorch_fp32_accuracy']:.2%}. "
        "Gate: <= 0.5 pt accuracy lost and >= 99% top-1 agreement with PyTorch fp32, on the runtime the file is for."),
        "",
        "| variant | what | gate | top-1 agree | change | " + " | ".join(
            f"b{b} x ORT fp32 (runs)" for b in report["batch_sizes"]) + " |",
        "|---|---|---|---|---|" + "---|" * len(report["batch_sizes"]),
    ]
    for c in report["candidates"]:
        gate = report["gates"].get(c["file"])
        verdict = "-" if gate is None else ("pass" if gate["passed"] else "**fail**")
        agree = "" if gate is None else f"{gate['top1_agreement']:.1%}"
        change = "" if gate is None else f"{-gate['accuracy_drop_pt']:+.2f} pt"
        cells = []
        for b in report["batch_sizes"]:
            ratios = [r["vs_ort_fp32"] for r in report["results"] if r["variant"] == c["name"] and r["batch_size"] == b]
            cells.append("" if not ratios else f"**{statistics.median(ratios):.2f}** ("
                         + ", ".join(f"{x:.2f}" for x in ratios) + ")")
        lines.append(f"| {c['name']} | {c['what']} | {verdict} | {agree} | {change} | " + " | ".join(cells) + " |")
    search = ((report.get("ov-int8-bf16") or {}).get("quantization") or {}).get("search")
    if search:
        lines += ["", (f"ov-int8-bf16's search (build {report['ov-int8-bf16']['build_seconds']:.0f} s in all, "
                  f"{search['seconds']:.0f} s of it searching, {search['evaluations']} evaluations on "
                  f"{search['search_images']} calibration images): kept in float "
                  f"{', '.join(search['kept_fp32']) or 'nothing'}; {search['quantized_macs_share']:.0%} of the "
                  f"multiply-accumulates in INT8; agreement on the search images: all quantized "
                  f"{search['agreement_all_quantized']:.1%}, chosen {search['agreement']:.1%}, re-quantized "
                  f"{search['agreement_requantized']:.1%}.")]
    for prof in report.get("profile") or []:
        lines += ["", f"Per-op time at batch {prof['batch_size']} (ms per call, one call, top op types):", ""]
        for what, entry in prof.items():
            if what != "batch_size":
                lines.append(f"- {what}: {entry['total_ms']:.1f} ms in all; " + ", ".join(
                    f"{op} {ms:.1f}" for op, ms in entry["top"].items()))
    lines += ["", "ORT fp32 p50 ms per run: " + "; ".join(
        f"b{r['batch_size']} run {r['run']}: {r['p50_ms']:.1f} (load {r['load_1min']:.1f})"
        for r in report["results"] if r["variant"] == "ort-fp32"), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vitdeploy-precision-speed"))
    parser.add_argument("--name", default=None, help="result name (default: the run folder's name)")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--block-seconds", type=float, default=1.5)
    parser.add_argument("--variants", default=None, help="comma list of candidates (default: all)")
    parser.add_argument("--profile", action="store_true", help="per-op profiles (OpenVINO PERF_COUNT, ORT profiler)")
    parser.add_argument("--profile-only", action="store_true", help="only add the profiles to the saved report")
    args = parser.parse_args()

    from vitdeploy.benchmark.environment import environment
    from vitdeploy.exporting.gate import gate_data
    from vitdeploy.files.bundle import load_bundle

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    name = args.name or args.bundle.resolve().parent.name
    if args.profile_only:  # add the profiles to the saved report of an earlier run
        report = json.loads((RESULTS / f"{name}.json").read_text())
        model, info = load_bundle(args.bundle)
        report["profile"] = profiles(args.work, args.threads, gate_data(model, info).inputs, report["batch_sizes"])
        return _write(name, report)
    args.work.mkdir(parents=True, exist_ok=True)
    env = environment(args.threads)
    facts = build(args.bundle, args.work, log)
    wanted = set(args.variants.split(",")) if args.variants else None
    candidates = [c for c in CANDIDATES if (args.work / c.file).is_file()
                  and (wanted is None or c.name in wanted or c.name == "ort-fp32")]
    model, info = load_bundle(args.bundle)
    inputs = gate_data(model, info).inputs
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = measure(args.work, candidates, batch_sizes, args.threads, args, inputs)
    report = {
        "schema": SCHEMA, "bundle": str(args.bundle), "threads": args.threads, "batch_sizes": batch_sizes,
        "environment": env, "command": " ".join(["python", "benchmarks/precision_speed.py", *sys.argv[1:]]),
        "candidates": [dataclasses.asdict(c) for c in candidates], "results": rows,
        **facts,
        "profile": profiles(args.work, args.threads, inputs, batch_sizes) if args.profile else None,
    }
    return _write(name, report)


def _write(name: str, report: dict[str, Any]) -> int:
    from vitdeploy.core.atomic import atomic_write_bytes, atomic_write_json

    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"{name}.json", report)
    atomic_write_bytes(HERE / "precision_speed.md", markdown(report).encode())
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
