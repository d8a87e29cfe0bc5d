"""TorchScript vs dynamo exporter on one model: export time, graph size, ONNX Runtime fusions and parity.

    python benchmarks/exporters.py --preset vit-ti16 --rounds 3 --output benchmarks/results/exporters-vit-ti16.json

The two exporters run alternately (round-robin), so machine load hits both alike; the time reported per round is
the exporter call alone (trace + conversion, no metadata, checker or parity). Graph facts come from the last round:
raw node count, node count after ONNX Runtime's own graph optimizer (what a session really runs), the transformer
fusions that `export --optimize` gets from the file (Attention, SkipLayerNormalization, Gelu per block), and the
largest |logit difference| from PyTorch at batch 1 and 7 on seeded random inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from vitdeploy.core.atomic import atomic_write_json
from vitdeploy.core.config import get_preset
from vitdeploy.core.provenance import machine, now_iso, package_versions
from vitdeploy.exporting import exporter as export
from vitdeploy.exporting import graphs as graph_variants
from vitdeploy.files.bundle import BundleInfo
from vitdeploy.files.onnx_file import save_onnx
from vitdeploy.model.vit import build_model, logits_in_batches
from vitdeploy.runtimes import ort as runtime
from vitdeploy.runtimes.registry import open_runtime


def ort_optimized_nodes(path: Path) -> int:
    """Nodes left after ONNX Runtime's full graph optimization, read back from the file it writes."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(os.fspath(path), options, providers=[runtime.CPU])
        return len(onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vit-ti16")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    preset = get_preset(args.preset)
    torch.manual_seed(0)
    model = build_model(preset.model).eval()
    info = BundleInfo(model=preset.model, preprocess=preset.preprocess_spec(),
                      labels=[str(i) for i in range(preset.model.num_classes)])
    inputs = np.random.default_rng(0).standard_normal((7, 3, preset.model.image_size, preset.model.image_size),
                                                      dtype=np.float32)
    reference = logits_in_batches(model, inputs)
    times: dict[str, list[float]] = {e: [] for e in export.EXPORTERS}
    facts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for exporter in export.EXPORTERS:
                started = time.perf_counter()
                proto = export.run_exporter(exporter, model, info, args.opset)
                times[exporter].append(time.perf_counter() - started)
                print(f"round {round_ + 1}: {exporter} {times[exporter][-1]:.2f} s", file=sys.stderr, flush=True)
                if round_ == args.rounds - 1:
                    path = Path(tmp) / f"{exporter}.onnx"
                    save_onnx(proto, path)
                    _, fusions = graph_variants.fuse_transformer(path, preset.model)
                    session = open_runtime("ort", path, device="cpu")
                    parity = {b: float(np.abs(session.run_in_batches(inputs, b) - reference).max()) for b in (1, 7)}
                    facts[exporter] = {
                        "nodes": len(proto.graph.node),
                        "nodes_after_ort_optimizer": ort_optimized_nodes(path),
                        "file_bytes": path.stat().st_size,
                        "fusions": fusions.counts,
                        "fusion_shortfalls": fusions.shortfalls(),
                        "max_abs_diff_vs_pytorch": parity,
                    }
    report = {
        "created_at": now_iso(),
        "preset": args.preset,
        "opset": args.opset,
        "machine": machine(),
        "versions": package_versions(),
        "load_average": list(os.getloadavg()),
        "rounds": args.rounds,
        "export_seconds": {e: [round(t, 3) for t in ts] for e, ts in times.items()},
        "median_export_seconds": {e: round(statistics.median(ts), 3) for e, ts in times.items()},
        "dynamo_over_torchscript_time": round(statistics.median(
            d / t for d, t in zip(times["dynamo"], times["torchscript"])), 2),
        "graphs": facts,
    }
    print(json.dumps(report, indent=2))
    if args.output:
        atomic_write_json(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
