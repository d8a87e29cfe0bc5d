"""Token merging's accuracy / speed curve (issue 29): r tokens merged per block, each file judged by the accuracy
gate against the unmerged PyTorch fp32 model on the bundle's held-out images, on ONNX Runtime and OpenVINO (f32
pinned), and timed against r = 0 (model.onnx) in one run, interleaved in blocks.

    python benchmarks/tome.py /tmp/ti16regions/best --work /tmp/tome-ti --name vit-ti16-regions
    python benchmarks/tome.py BUNDLE --r 0,4,8,13,16 --batch-sizes 1,32 --blocks 3 --block-seconds 1.5

Builds in --work (kept: a second invocation only judges and times): WORK/r<R>/model.tome.onnx for each r > 0, the
bundle's model with merging on, through export's exporter and its parity check against PyTorch with the same
merging, whatever the gate says (its verdict, 0.5 pt and 99% top-1 agreement against the unmerged model, is
measured and reported), and with --search WORK/search/: what export's own search (no --tome-r) picks. Timing: per
batch size, each file on each runtime runs for a block of --block-seconds after one untimed call, the blocks
alternate over every file and runtime, --blocks rounds, with a pause between blocks (DESIGN.md fact 12); p50 over
every timed call. Writes benchmarks/tome/<name>.json; benchmarks/tome.md holds the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vitdeploy.core.flops import count_macs

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "tome"
PAUSE_S = 0.3  # between blocks: longer than ORT's and OpenVINO's spin-wait before their threads sleep


def build(bundle: Path, work: Path, rs: list[int], search: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Each r's file (r = 0: model.onnx), its gate numbers on ORT and OpenVINO, and the searched setting."""
    from vitdeploy.exporting.exporter import export_model, export_onnx
    from vitdeploy.exporting.gate import AccuracyGate, gate_data, judge
    from vitdeploy.files.bundle import load_bundle
    from vitdeploy.model import tome

    model, info = load_bundle(bundle)
    data = gate_data(model, info)
    let_through = AccuracyGate(max_accuracy_drop=100.0, min_top1_agreement=0.0)  # write it; judge it below
    default_gate = AccuracyGate()
    points: dict[str, Any] = {}
    for r in rs:
        path = work / f"r{r}" / ("model.onnx" if r == 0 else "model.tome.onnx")
        merge = tome.schedule(info.model, r)
        if not path.is_file():
            started = time.perf_counter()
            # export's exporter and its parity check against PyTorch with the same merging (the tome variant's
            # file without the variant's metadata; the search's files are export's own, in WORK/search)
            with tome.merging(model, merge):
                export_model(model, info, path, verify=True)
            log(f"r={r}: exported and parity-checked in {time.perf_counter() - started:.0f} s")
        verdicts = {}
        for runtime in ("ort", "openvino"):
            result = judge(f"r{r}", "fp32", path, data, default_gate, "cpu", None, runtime=runtime)
            verdicts[runtime] = {"accuracy": result.accuracy, "reference_accuracy": result.reference_accuracy,
                                 "top1_agreement": result.top1_agreement, "accuracy_drop_pt": result.accuracy_drop_pt,
                                 "max_abs_logit_diff": result.max_abs,
                                 "passed": result.passed, "failures": result.failures(), "images": result.images}
        full = count_macs(info.model).total
        points[f"r{r}"] = {"r": r, "file": str(path.relative_to(work)), "per_block": list(merge.per_block),
                           "tokens_out": merge.tokens(info.model)[-1],
                           "macs_share": count_macs(info.model, merge.per_block).total / full, "gate": verdicts}
        log(f"r={r}: ORT agreement {verdicts['ort']['top1_agreement']:.3f} drop "
            f"{verdicts['ort']['accuracy_drop_pt']:.2f} pt {'passed' if verdicts['ort']['passed'] else 'FAILED'}")
    searched = None
    if search:
        path = work / "search" / "model.tome.onnx"
        if not path.is_file():
            started = time.perf_counter()
            export_onnx(bundle, work / "search" / "model.onnx", variants=["tome"], gate=let_through)
            log(f"search: built in {time.perf_counter() - started:.0f} s")
        merging = _metadata(path)["token_merging"]
        gate = judge("tome", "fp32", path, data, default_gate, "cpu", None, runtime="ort")
        searched = {"chosen": {k: merging[k] for k in ("r", "first_block", "per_block", "tokens_out", "macs_share")},
                    "search_seconds": merging["seconds"], "curve": merging["curve"],
                    "gate": {"accuracy_drop_pt": gate.accuracy_drop_pt, "top1_agreement": gate.top1_agreement,
                             "passed": gate.passed, "failures": gate.failures()}}
    return {"points": points, "search": searched, "held_out_images": len(data.inputs), "source": data.source,
            "reference_accuracy": float(np.mean(data.reference.argmax(1) == data.labels))}


def _metadata(path: Path) -> dict[str, Any]:
    from vitdeploy.files.onnx_file import read_metadata

    return json.loads(read_metadata(path).get("vitdeploy.export", "{}"))


def open_session(path: Path, runtime: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    from vitdeploy.runtimes import open_runtime

    return open_runtime(runtime, path, device="cpu", threads=threads).run


def measure(work: Path, built: dict[str, Any], batch_sizes: list[int], threads: int, blocks: int,
            block_seconds: float, image_size: int) -> dict[str, Any]:
    """p50 ms per batch for every (r, runtime), interleaved in blocks."""
    runs = {f"{name}:{runtime}": open_session(work / point["file"], runtime, threads)
            for name, point in built["points"].items() for runtime in ("ort", "openvino")}
    rng = np.random.default_rng(0)
    timings: dict[str, Any] = {}
    for batch_size in batch_sizes:
        batch = rng.standard_normal((batch_size, 3, image_size, image_size), dtype=np.float32)
        latencies: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(blocks):
            for name, run in runs.items():
                time.sleep(PAUSE_S)
                run(batch)  # untimed: the first call after a pause wakes the thread pool
                started = time.perf_counter()
                while time.perf_counter() - started < block_seconds:
                    call = time.perf_counter()
                    run(batch)
                    latencies[name].append(time.perf_counter() - call)
        timings[str(batch_size)] = {name: {"p50_ms": 1e3 * statistics.median(values), "calls": len(values)}
                                    for name, values in latencies.items()}
    return timings


def environment() -> dict[str, Any]:
    from vitdeploy.core.provenance import package_versions

    model = next((line.split(":", 1)[1].strip() for line in
                  subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if line.startswith("Model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "load_average": list(os.getloadavg()),
            "versions": {k: v for k, v in package_versions().items()
                         if k in ("onnxruntime", "openvino", "torch", "onnx")}}


def markdown(report: dict[str, Any]) -> str:
    """The curve: one row per r, gate and speed on both runtimes."""
    lines = ["| r | tokens out | MACs | ORT agreement | ORT acc. drop | gate (ORT) | OpenVINO agreement | gate (OV) | "
             + " | ".join(f"ORT x r0 @{b} | OV x ORT r0 @{b}" for b in report["timings"]) + " |",
             "|---" * (8 + 2 * len(report["timings"])) + "|"]
    for name, point in report["build"]["points"].items():
        ort_gate, ov_gate = point["gate"]["ort"], point["gate"]["openvino"]
        cells = [str(point["r"]), str(point["tokens_out"]), f"{point['macs_share']:.0%}",
                 f"{ort_gate['top1_agreement']:.1%}", f"{ort_gate['accuracy_drop_pt']:.2f} pt",
                 "passed" if ort_gate["passed"] else "FAILED", f"{ov_gate['top1_agreement']:.1%}",
                 "passed" if ov_gate["passed"] else "FAILED"]
        for timing in report["timings"].values():
            base = timing["r0:ort"]["p50_ms"]
            cells += [f"{base / timing[f'{name}:ort']['p50_ms']:.2f}", f"{base / timing[f'{name}:openvino']['p50_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--r", default="0,4,8,13,16")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--block-seconds", type=float, default=1.5)
    parser.add_argument("--search", action="store_true", help="also run export's own search (no --tome-r)")
    args = parser.parse_args()
    rs = [int(r) for r in args.r.split(",")]
    if 0 not in rs:
        rs.insert(0, 0)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    before = environment()
    built = build(args.bundle, args.work, rs, args.search, log)
    from vitdeploy.files.bundle import read_bundle_info

    image_size = read_bundle_info(args.bundle).model.image_size
    log("timing")
    timings = measure(args.work, built, [int(b) for b in args.batch_sizes.split(",")], args.threads, args.blocks,
                      args.block_seconds, image_size)
    report = {"schema": "vitdeploy.tome/1", "bundle": str(args.bundle), "environment_before": before,
              "environment_after": environment(), "threads": args.threads, "blocks": args.blocks,
              "block_seconds": args.block_seconds, "build": built, "timings": timings}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
