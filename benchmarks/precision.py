"""The precision ladder on trained bundles: speed and held-out accuracy of every variant, in one interleaved run.

    python benchmarks/precision.py models/digits/best                     # the default bundle
    python benchmarks/precision.py /tmp/ti16/best --batch-sizes 1,32 --min-seconds 3

For each bundle: export model.onnx and its variants exactly as `vitdeploy export --optimize --precision fp16,int8`
does (each judged by the accuracy gate on the held-out images), plus dynamic INT8 for comparison; then time
PyTorch eager, ONNX Runtime fp32 (plain and fused), INT8 (static and dynamic) and fp16 in alternating blocks on the same
batch (vitdeploy.benchmark's runners and its public protocol, measure_points). fp16 is timed on ORT's CPU provider only to show what it costs
there: it is a GPU format. Writes benchmarks/precision/<name>.json and regenerates benchmarks/precision.md.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from bundle_runs import bundle_parser, named_bundles

from vitdeploy import benchmark as bench
from vitdeploy.benchmark.artifacts import ModelUnderTest
from vitdeploy.benchmark.environment import environment
from vitdeploy.benchmark.protocol import measure_points
from vitdeploy.benchmark.runners import OrtCpuRunner, TorchRunner
from vitdeploy.benchmark.timing import Runner, torch_threads
from vitdeploy.benchmark.variants import VARIANTS, VariantSpec
from vitdeploy.core.atomic import atomic_write_bytes, atomic_write_json
from vitdeploy.core.config import parse_batch_sizes
from vitdeploy.exporting import exporter as export
from vitdeploy.exporting import gate as accuracy_gate
from vitdeploy.exporting import ladder as precision
from vitdeploy.files.bundle import load_bundle, read_bundle_info

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "precision"
SCHEMA = "vitdeploy.exporting.ladder/1"
# Timed variant -> the file it runs (relative to the work folder) and what it is.
FILES = {
    "ort-fp32": ("model.onnx", "fp32", "ONNX Runtime CPU, the plain export (ORT's own optimizations: ALL)"),
    "ort-fp32-fused": ("model.fp32-opt.onnx", "fp32", "ONNX Runtime CPU, transformer fusions applied offline"),
    "ort-int8-static": ("model.int8.onnx", "int8", "static QDQ INT8 (vitdeploy's default), per-channel weights"),
    "ort-int8-dynamic": ("dynamic/model.int8.onnx", "int8", "dynamic INT8 of the fused graph"),
    "ort-fp16-on-cpu": ("model.fp16.onnx", "fp16", "fp16 graph on ORT's CPU provider (a GPU format)"),
}


def measure(bundle: Path, settings: bench.BenchSettings, log: Any) -> dict[str, Any]:
    model, info = load_bundle(bundle)
    threads = settings.thread_count
    with tempfile.TemporaryDirectory(prefix="vitdeploy-precision-") as tmp:
        work = Path(tmp)
        log(f"{bundle}: exporting model.onnx and the variants (each through the accuracy gate)")
        data = accuracy_gate.gate_data(model, info)
        # Built with a gate that lets everything through, so that a variant the default gate refuses is still
        # timed; each is then judged against the default gate, and the report says which would be refused.
        let_through = accuracy_gate.AccuracyGate(max_accuracy_drop=100.0, min_top1_agreement=0.0)
        exported = export.export_onnx(bundle, out=work / "model.onnx", variants=["fp32-opt", "fp16", "int8"],
                                      gate=let_through)
        (work / "dynamic").mkdir()
        shutil.copy(work / "model.onnx", work / "dynamic" / "model.onnx")
        results = exported.variants + precision.export_variants(
            model, info, work / "dynamic" / "model.onnx", ["int8"], let_through, data, int8_method="dynamic")
        gates: dict[str, Any] = {}
        for r in results:
            name = "ort-int8-dynamic" if r.quantization and r.quantization["method"] == "dynamic" else {
                "fp32-opt": "ort-fp32-fused", "fp16": "ort-fp16-on-cpu", "int8": "ort-int8-static"}[r.variant]
            verdict = dataclasses.replace(r.gate, gate=accuracy_gate.AccuracyGate())
            gates[name] = {**r.to_dict(), "gate": verdict.summary(), "passes_default_gate": verdict.passed}
        gates["ort-fp32"] = {"size_bytes": (work / "model.onnx").stat().st_size,
                             "parity": exported.parity.summary() if exported.parity else None}

        under_test = ModelUnderTest(work / "model.onnx", info.model, str(bundle), bundle=bundle)
        runners: list[Runner] = [TorchRunner(VARIANTS["torch"], under_test)]
        for name, (file, file_precision, description) in FILES.items():
            if (work / file).is_file():
                spec = VariantSpec(name, "ort", "cpu", file_precision, description)
                runners.append(OrtCpuRunner(spec, work / file, threads))

        def batch_for(batch_size: int) -> np.ndarray:
            """The first `batch_size` held-out images, each repeated when there are fewer."""
            if len(data.inputs) >= batch_size:
                return data.inputs[:batch_size]
            return data.inputs.repeat(-(-batch_size // len(data.inputs)), axis=0)[:batch_size]

        def point_started(batch_size: int, names: list[str]) -> None:
            log(f"batch {batch_size}: timing {', '.join(names)} in alternating blocks")

        with torch_threads(threads):
            env = environment(threads)
            for runner in runners:
                runner.create()
            points = measure_points(runners, settings, batch_for, on_point=point_started)
    rows = []
    for point in points:
        same_batch = {p.variant: p for p in points if p.batch_size == point.batch_size}
        rows.append({
            **point.to_dict(),
            "vs_torch": round(same_batch["torch"].mean_s / point.mean_s, 3),
            "vs_ort_fp32": round(same_batch["ort-fp32"].mean_s / point.mean_s, 3),
        })
    bundle_info = read_bundle_info(bundle)
    return {
        "schema": SCHEMA,
        "bundle": str(bundle),
        "model": info.model.to_dict(),
        "dataset": bundle_info.dataset,
        "bundle_val_accuracy": bundle_info.metrics.get("val_accuracy"),
        "gate_images": len(data.inputs),
        "pytorch_fp32_accuracy": float((data.reference.argmax(1) == data.labels).mean()),
        "variants": gates,
        "results": rows,
        "settings": settings.to_dict(),
        "environment": env,
        "command": " ".join(["python", "benchmarks/precision.py", *sys.argv[1:]]),
    }


def markdown(reports: list[dict[str, Any]]) -> str:
    lines = [
        "# Precision ladder: speed and accuracy",
        "",
        "Generated by `benchmarks/precision.py` from `benchmarks/precision/*.json` (the command, machine, load and",
        "versions are in each JSON). Throughput ratios are from one interleaved run; absolute img/s vary 25%+",
        "between runs on this shared machine. Accuracy: the bundle's held-out images, PyTorch fp32 as reference.",
        "",
    ]
    for r in reports:
        env = r["environment"]
        lines += [
            f"## {r['bundle']}",
            "",
            f"{_describe_model(r)}; held-out: {r['gate_images']} images, PyTorch fp32 accuracy "
            f"{r['pytorch_fp32_accuracy']:.2%}. {env.get('cpu', '')} {r['settings']['threads']} threads, "
            f"load average before the run {', '.join(f'{x:.1f}' for x in env.get('load_average') or [])}.",
            "",
            "| variant | batch | img/s | p50 ms | × ORT fp32 | × PyTorch | accuracy | change | top-1 agree | max abs diff |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in r["results"]:
            gate = (r["variants"].get(row["variant"]) or {}).get("gate")
            accuracy = ("| " + " | ".join([
                f"{gate['accuracy']:.2%}", f"{100 * (gate['accuracy'] - gate['reference_accuracy']):+.2f} pt",
                f"{gate['top1_agreement']:.2%}", f"{gate['max_abs']:.2e}"]) + " |") if gate else "| | | | |"
            refused = gate is not None and not r["variants"][row["variant"]]["passes_default_gate"]
            lines.append(
                f"| {row['variant']}{' (refused by the gate)' if refused else ''} | {row['batch_size']} | {row['images_per_s']:.1f} | {row['p50_ms']:.2f} | "
                f"{row['vs_ort_fp32']:.2f} | {row['vs_torch']:.2f} {accuracy}"
            )
        fused = (r["variants"].get("ort-fp32-fused") or {}).get("fusions") or {}
        if fused:
            lines += ["", f"Fusions: {', '.join(f'{op} {n}' for op, n in fused['counts'].items())}"
                      f" (short of a full fusion: {fused['shortfalls'] or 'none'}; exact rewrites applied first: "
                      f"{fused['rewrites']})."]
        lines.append("")
    return "\n".join(lines)


def _describe_model(report: dict[str, Any]) -> str:
    m = report["model"]
    source = report["dataset"].get("source", "?")
    return (f"{m['image_size']} px, patch {m['patch_size']}, dim {m['dim']}, depth {m['depth']}, "
            f"{m['num_heads']} heads, trained on {source}")


def main() -> int:
    args = bundle_parser(__doc__, "precision.md").parse_args()
    settings = bench.BenchSettings(batch_sizes=parse_batch_sizes(args.batch_sizes),
                                   threads=args.threads, min_seconds=args.min_seconds, min_iters=args.min_iters,
                                   warmup_seconds=1.0)
    for name, bundle in named_bundles(args):
        report = measure(bundle, settings, lambda message: print(message, file=sys.stderr, flush=True))
        atomic_write_json(RESULTS / f"{name}.json", report)
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    atomic_write_bytes(HERE / "precision.md", markdown(reports).encode())
    print((HERE / "precision.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
