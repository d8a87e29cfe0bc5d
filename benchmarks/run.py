"""Reproduce the headline comparisons: PyTorch eager against ONNX Runtime on the standard ViT presets.

    python benchmarks/run.py cpu            # vit-ti16 and vit-s16 on this CPU, batch 1, 8 and 32
    python benchmarks/run.py gpu            # vit-ti16, vit-s16 and vit-b16 with the CUDA variants as well
    python benchmarks/run.py cpu --threads 1 --presets vit-ti16 --min-seconds 5

A thin driver over vitdeploy.benchmark (the same code as `vitdeploy bench --preset NAME`). Random weights: speed does
not depend on them. Each preset's report goes to results/<suite>-<preset>[-t<threads>].json, and every report in
results/ is summarised in results/README.md, which names the machine, the load and the library versions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitdeploy import benchmark as bench
from vitdeploy.benchmark.render import plot_report
from vitdeploy.core.atomic import atomic_write_bytes, atomic_write_json
from vitdeploy.core.config import parse_batch_sizes

RESULTS = Path(__file__).resolve().parent / "results"
SUITES = {
    "cpu": (("vit-ti16", "vit-s16"), ("torch", "ort-cpu", "ort-cpu-fused", "ort-cpu-int8")),
    "gpu": (("vit-ti16", "vit-s16", "vit-b16"),
            ("torch", "ort-cpu", "torch-cuda", "ort-cuda", "ort-cuda-graph", "ort-cuda-fp16")),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--presets", help="comma-separated subset of the suite's presets")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--threads", type=int, help="default: one per CPU core")
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--min-iters", type=int, default=10)
    parser.add_argument("--table-only", action="store_true", help="only rewrite results/README.md")
    args = parser.parse_args()

    presets, variants = SUITES[args.suite]
    if not args.table_only:
        settings = bench.BenchSettings(
            batch_sizes=parse_batch_sizes(args.batch_sizes), variants=variants,
            min_seconds=args.min_seconds, min_iters=args.min_iters, warmup_seconds=2.0, threads=args.threads,
        )
        for preset in bench.parse_variants(args.presets) or presets:
            report = bench.run_bench(None, None, preset, settings)
            suffix = f"-t{args.threads}" if args.threads else ""
            atomic_write_json(RESULTS / f"{args.suite}-{preset}{suffix}.json", report.to_dict())
            plot_report(report, RESULTS / f"{args.suite}-{preset}{suffix}.png")
    atomic_write_bytes(RESULTS / "README.md", markdown_summary(sorted(RESULTS.glob("*.json"))).encode())
    return 0


def markdown_summary(paths: list[Path]) -> str:
    """One section per report: the machine, then p50 / p99 / images/s / speed-up / MFU per variant and batch."""
    lines = ["# Benchmark results", "",
             "Written by `python benchmarks/run.py`; figures are medians and percentiles of interleaved runs "
             "(see ../README.md for the protocol). Speed-up is against PyTorch eager on the same device in the "
             "same run; MFU is against the fp32 matmul peak sampled all through the same run (see ../README.md).", ""]
    for path in paths:
        report = json.loads(path.read_text())
        env, settings = report["environment"], report["settings"]
        versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        gpus = "; ".join(f"{g['name']} (driver {g['driver']})" for g in env.get("gpus") or []) or "none"
        load = ", ".join(f"{x:.2f}" for x in env.get("load_average") or [])
        peaks = ", ".join(f"{device} {gflops:.0f} GFLOP/s" for device, gflops in report["peak_gflops"].items())
        lines += [
            f"## {report['model']['source']} ({report['model']['macs_per_image']['gmacs']:.3f} GMACs/image) - "
            f"{path.name}",
            "",
            f"{report['created_at']}; CPU {env['cpu']} ({env['cpu_count']} cores), threads: {settings['threads']}; "
            f"GPU {gpus}; load average before the run {load}; fp32 matmul peak {peaks}. {versions}.",
            "",
            "| variant | batch | p50 ms | p99 ms | images/s | × eager | MFU | providers |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in report["results"]:
            speedup = f"{row['speedup_vs_eager']:.2f}" if row["speedup_vs_eager"] else "-"
            mfu = f"{row['mfu']:.0%}" if row["mfu"] is not None else "-"
            providers = report["variants"][row["variant"]]["providers"][0]
            lines.append(f"| {row['variant']} | {row['batch_size']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                         f"{row['images_per_s']:.1f} | {speedup} | {mfu} | {providers} |")
        if report["skipped"]:
            lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())]
        fused = report["variants"].get("ort-cpu-fused", {}).get("graph_ops")
        if fused:
            shown = ("Attention", "SkipLayerNormalization", "BiasGelu", "LayerNormalization", "MatMul", "Softmax")
            lines += ["", "Fused graph ops: " + ", ".join(f"{op} {fused.get(op, 0)}" for op in shown)]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
