"""predict on Ray Data against local predict on this machine, Ray's start-up cost, and per-core ViT-B/16 throughput.

    python benchmarks/scale.py                                   # vit-ti16, 32 and 96 JPEGs (640x480), 2 workers
    python benchmarks/scale.py --output benchmarks/results/scale-vit-ti16.json

What it measures, each figure with the load average just before it:
  - Ray start-up: ray.init(num_cpus=cores, include_dashboard=False) wall time, and the resident memory (RSS) of
    the processes it started (GCS, raylet, idle workers), summed over this process's children, before any actor;
  - local predict vs --engine ray on the same JPEGs (two sizes, so that the fixed cost -- Ray: actor start-up and
    model transfer -- and the per-image cost separate: per-image = (t_large - t_small) / (n_large - n_small));
    wall time and CPU seconds (this process and all below it: Ray's actors and daemons); both write Parquet; the
    Ray runs reuse the Ray started above, as a cluster would be already up, after one untimed first run; the
    engines alternate, --repeats times, and the median run of each is used;
  - ViT-B/16 (random weights, 224 px) on ONNX Runtime with 1 thread at batch 8: images/s per core and the RSS one
    session adds, for sizing a cluster on paper (benchmarks/scale.md).
Weights are random (speed does not depend on them); the images are scikit-learn's two photos, cropped into
distinct 640x480 JPEGs (benchmarks/predict_throughput.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from predict_throughput import export_random_model, make_jpegs  # noqa: E402

import vitdeploy  # noqa: E402
from vitdeploy.core.provenance import machine  # noqa: E402


def load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def children_rss_mb() -> float:
    import psutil

    total = 0
    for child in psutil.Process().children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:  # gone meanwhile
            continue
    return total / 2**20


def ray_startup(cpus: int) -> dict:
    import ray

    before = load()
    began = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    seconds = time.perf_counter() - began
    time.sleep(2)  # let the idle workers Ray prestarts come up, so their memory counts
    return {"seconds": round(seconds, 2), "children_rss_mb": round(children_rss_mb(), 1), "load_before": before}


class CpuMeter:
    """CPU seconds used by this process and every process below it (Ray's actors included), sampled every 0.2 s
    so that processes that exit before the end (Ray Data stops its actors) still count. On a shared machine CPU
    seconds per image are steadier than wall time, which depends on what else runs."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _snapshot(self) -> None:
        import psutil

        for child in self.me.children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.Error:  # gone meanwhile: its last sample stands
                continue
            self.seen[child.pid] = times.user + times.system

    def _sample(self) -> None:
        while not self.stop.wait(0.2):
            self._snapshot()

    def __enter__(self) -> CpuMeter:
        self._snapshot()
        self.base = dict(self.seen)
        times = self.me.cpu_times()
        self.own = times.user + times.system
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self._snapshot()
        times = self.me.cpu_times()
        self.seconds = (times.user + times.system - self.own) + sum(
            used - self.base.get(pid, 0.0) for pid, used in self.seen.items())


def timed_predict(files: list[Path], model: Path, out: Path, **engine) -> dict:
    before = load()
    began = time.perf_counter()
    with CpuMeter() as cpu:
        summary = vitdeploy.predict([str(f) for f in files], model=model, output_format="parquet", output=out,
                                    **engine)
    wall = time.perf_counter() - began
    assert summary.images_ok == len(files), summary.to_dict()
    return {"images": len(files), "wall_s": round(wall, 3), "images_per_s": round(len(files) / wall, 2),
            "cpu_s": round(cpu.seconds, 2), "load_before": before}


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (of an odd count; the faster middle one of an even count)."""
    return sorted(runs, key=lambda run: run["wall_s"])[(len(runs) - 1) // 2]


def per_image(small: dict, large: dict) -> dict:
    """Wall and CPU time per image (the slope between the two sizes) and the fixed cost (the intercept)."""
    images = large["images"] - small["images"]
    figures = {}
    for key in ("wall_s", "cpu_s"):
        slope = (large[key] - small[key]) / images
        figures[key.replace("_s", "_per_image_ms")] = round(1000 * slope, 2)
        figures[key.replace("_s", "_fixed_s")] = round(small[key] - slope * small["images"], 2)
    return figures


VIT_B_PROBE = """
import json, sys, time, numpy as np, psutil
from pathlib import Path
from vitdeploy.runtimes import open_runtime
path, batch, runs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
me = psutil.Process()
rss = me.memory_info().rss
session = open_runtime("ort", path, device="cpu", threads=1)
pixels = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
session.run(pixels)  # warm-up
began, cpu = time.perf_counter(), time.process_time()
for _ in range(runs):
    session.run(pixels)
wall, cpu = time.perf_counter() - began, time.process_time() - cpu
print(json.dumps({"images_per_s_per_core": round(batch * runs / wall, 2),
                  "images_per_cpu_s": round(batch * runs / cpu, 2),
                  "session_rss_mb": round((me.memory_info().rss - rss) / 2**20, 1)}))
"""


def vit_b_per_core(folder: Path, batch: int = 8, runs: int = 3) -> dict:
    """ViT-B/16 on ONNX Runtime with 1 thread, in a fresh process (so its RSS is the session's alone)."""
    path = export_random_model("vit-b16", folder / "vit-b16.onnx")
    before = load()
    done = subprocess.run([sys.executable, "-c", VIT_B_PROBE, str(path), str(batch), str(runs)],
                          capture_output=True, text=True, check=True)
    return {**json.loads(done.stdout.splitlines()[-1]), "batch": batch, "threads": 1,
            "file_mb": round(path.stat().st_size / 2**20, 1), "load_before": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vit-ti16")
    parser.add_argument("--sizes", type=int, nargs=2, default=(32, 96), help="two image counts")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (1 thread each)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine and size, interleaved")
    parser.add_argument("--skip-vit-b", action="store_true", help="skip the ViT-B/16 per-core measurement")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    import onnxruntime
    import pyarrow
    import ray

    cores = os.cpu_count() or 1
    report: dict = {"cpu": machine()["cpu"], "cores": cores, "python": platform.python_version(),
                    "versions": {"ray": ray.__version__, "pyarrow": pyarrow.__version__,
                                 "onnxruntime": onnxruntime.__version__, "vitdeploy": vitdeploy.__version__},
                    "preset": args.preset, "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = export_random_model(args.preset, folder / f"{args.preset}.onnx")
        files = make_jpegs(folder, max(args.sizes))
        small, large = files[: min(args.sizes)], files
        report["ray_startup"] = ray_startup(cores)
        engines = {"local": {"workers": 2}, "ray": {"engine": "ray", "workers": args.workers}}
        # One untimed Ray run first: the first actors on a fresh Ray pay for loading Python modules from a cold
        # disk cache (measured: 19.6 s for 32 images, then 10.7 s for 96), which no later run pays again.
        report["ray_first_run"] = timed_predict(small[:8], model, folder / "warm.parquet", **engines["ray"])
        runs: dict[str, dict[int, list[dict]]] = {name: {len(small): [], len(large): []} for name in engines}
        for repeat in range(args.repeats):  # interleaved, so that the machine's drift hits both engines alike
            for subset in (small, large):
                for name, engine in engines.items():
                    out = folder / f"{name}-{len(subset)}-{repeat}.parquet"
                    runs[name][len(subset)].append(timed_predict(subset, model, out, **engine))
        report["ray_rss_after_runs_mb"] = round(children_rss_mb(), 1)
        ray.shutdown()
        report["runs"] = runs
        report["per_image"] = {name: per_image(median_run(sizes[len(small)]), median_run(sizes[len(large)]))
                               for name, sizes in runs.items()}
        if not args.skip_vit_b:
            report["vit_b16"] = vit_b_per_core(folder)
    report["load_after"] = load()
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
