"""End-to-end predict throughput (decode + preprocess + model) against model-only throughput, on one device.

    python benchmarks/predict_throughput.py                      # vit-ti16, 640x480 JPEGs, batch 32, CPU
    python benchmarks/predict_throughput.py --output benchmarks/results/predict-throughput-vit-ti16.json
    python benchmarks/predict_throughput.py --workers 1 2 --repeats 9 --json   # compare decoding pools

Model-only: ONNX Runtime on ready-made (32, 3, 224, 224) float32 batches (the same images, preprocessed once),
measured twice: with ORT's default session (idle threads spin) and with predict's session (no spinning, so that
decoding threads get the CPU); the better of the two is the reference. End-to-end: predict.run_pipeline on the
JPEG files with predict's session (thread-pool decoding one batch ahead, inference, softmax, top-k, rows written
to /dev/null). All three see the same images and batches and are interleaved repeat by repeat, in a rotating
order, so that the machine's drift (other processes, clock) hits them alike; the figure to read is the median
of the per-repeat ratios end-to-end / best model-only. The weights are random (speed does not depend on
them); the images are the two real photos scikit-learn ships, cropped and flipped into distinct 640x480 JPEGs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vitdeploy.core import images
from vitdeploy.core.config import get_preset
from vitdeploy.prediction import local as predict
from vitdeploy.runtimes import Session, open_runtime
from vitdeploy.runtimes import ort as runtime


def make_jpegs(folder: Path, count: int, size: tuple[int, int] = (640, 480), quality: int = 90) -> list[Path]:
    from sklearn.datasets import load_sample_image

    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]  # 640x427 each
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        photo = photos[i % 2]
        scale = rng.uniform(1.15, 1.6)  # enlarge, then crop a random 640x480 window
        big = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BICUBIC)
        left, top = int(rng.integers(0, big.width - size[0] + 1)), int(rng.integers(0, big.height - size[1] + 1))
        img = big.crop((left, top, left + size[0], top + size[1]))
        if i % 4 >= 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"photo_{i:04d}.jpg"
        img.save(path, "JPEG", quality=quality)
        paths.append(path)
    return paths


def export_random_model(preset: str, out: Path) -> Path:
    import torch

    from vitdeploy.exporting.exporter import export_model
    from vitdeploy.files.bundle import BundleInfo
    from vitdeploy.model.vit import build_model

    chosen = get_preset(preset)
    torch.manual_seed(0)
    labels = [str(i) for i in range(chosen.model.num_classes)]
    info = BundleInfo(model=chosen.model, preprocess=chosen.preprocess_spec(), labels=labels)
    export_model(build_model(chosen.model), info, out, verify=False)
    return out


def time_model_only(model: Session, batches: list[np.ndarray]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) to run every batch."""
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        runtime.run_batch(model.session, batch)  # the InferenceSession itself, as predict's OrtSession runs it
    return time.perf_counter() - wall, time.process_time() - cpu


def time_end_to_end(model: Session, paths: list[Path], batch_size: int, workers: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for predict's pipeline on the files."""
    request = predict.PredictRequest(inputs=[], batch_size=batch_size, workers=workers, output_format="jsonl")
    summary = predict.PredictSummary(model=str(model.info.path), provider=model.provider)
    with open(os.devnull, "w") as sink:
        writer = predict.RowWriter(sink, "jsonl", summary.model, summary.provider)
        wall, cpu = time.perf_counter(), time.process_time()
        predict.run_pipeline(paths, model, request, writer, summary)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert summary.images_ok == len(paths), "every benchmark image must decode"
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vit-ti16")
    parser.add_argument("--model", type=Path, help="an exported .onnx (default: export --preset with random weights)")
    parser.add_argument("--images", type=int, default=128, help="JPEGs per timed run (a multiple of the batch)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="predict's decoding threads "
                        "(several values: one end-to-end variant each, interleaved)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ORT's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds of every variant")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    parser.add_argument("--output", type=Path, help="also write the JSON result to this file, e.g. "
                        "benchmarks/results/predict-throughput-vit-ti16.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vitdeploy-bench-") as tmp:
        folder = Path(tmp)
        model_path = args.model or export_random_model(args.preset, folder / f"{args.preset}.onnx")
        paths = make_jpegs(folder, args.images)
        model = open_runtime("ort", model_path, args.device, threads=args.threads, spin=False)  # as predict opens it
        spinning = open_runtime("ort", model_path, args.device, threads=args.threads, spin=True)
        spec = model.preprocess
        inputs = np.stack([predict.load_model_input(p, spec) for p in paths])
        batches = [inputs[i : i + args.batch_size] for i in range(0, len(inputs), args.batch_size)]
        for warm in (model, spinning):  # warm-up: first-run allocations and kernel selection
            time_model_only(warm, batches[:1])
        decode_started = time.thread_time()
        for p in paths:
            images.preprocess(images.decode_image(p), spec)
        decode_ms = (time.thread_time() - decode_started) / len(paths) * 1e3
        load_before = os.getloadavg()[0]

        runs = {
            "model_only_spinning": lambda: time_model_only(spinning, batches),
            "model_only_predict_session": lambda: time_model_only(model, batches),
            **{
                f"end_to_end_workers_{w}": lambda w=w: time_end_to_end(model, paths, args.batch_size, w)
                for w in args.workers
            },
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}  # (wall, cpu) seconds
        names = list(runs)
        for repeat in range(args.repeats):
            # Rotate the order, so that none always inherits another's cache or clock state.
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                times[name].append(runs[name]())

    n = len(paths)
    best_model_wall = [min(a[0], b[0]) for a, b in zip(times["model_only_spinning"], times["model_only_predict_session"])]
    # throughput ratio end-to-end / best model-only = inverse ratio of wall times, per repeat
    ratios = {
        name: [m / e[0] for m, e in zip(best_model_wall, t)] for name, t in times.items() if name.startswith("end_")
    }
    result = {
        "preset": args.preset,
        "images": len(paths),
        "image_size": "640x480 JPEG q90",
        "batch_size": args.batch_size,
        "workers": args.workers,
        "ort_threads": args.threads or "default",
        "provider": model.provider,
        "repeats": args.repeats,
        "images_per_s": {name: [round(n / wall, 1) for wall, _ in t] for name, t in times.items()},
        "ratio_per_repeat": {name: [round(r, 3) for r in rs] for name, rs in ratios.items()},
        "ratio_median": {name: round(statistics.median(rs), 3) for name, rs in ratios.items()},
        # CPU seconds our process used per image (all threads): less sensitive to other processes than wall time
        "cpu_ms_per_image_median": {
            name: round(statistics.median(cpu for _, cpu in t) / n * 1e3, 1) for name, t in times.items()
        },
        "decode_preprocess_cpu_ms_per_image": round(decode_ms, 2),
        # other processes compete for the cores: the 1-minute load average before and after the timed runs
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "onnxruntime": runtime.ort.__version__},
    }
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:45s} {value}", file=sys.stderr)


if __name__ == "__main__":
    main()
