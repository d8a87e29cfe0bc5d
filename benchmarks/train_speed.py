"""The newcomer's first minute: the default `vitdeploy train`, timed as a whole command (imports included).

Each run is a fresh `python -m vitdeploy train --seed S` process; the runs of all seeds (and of another checkout,
with --before) start together, so that a comparison shares one sitting and one load. Wall time and the CPU time
of the process (user + system, its threads summed) come from the OS; the accuracy from the run's JSON summary.
On a shared machine wall time is the load's as much as the run's: compare the CPU times, and read the CPU time
of a one-thread run as its wall time on an idle core.

    python benchmarks/train_speed.py --seeds 0,1,2 --before /tmp/old-checkout --output train_speed.json
    OMP_NUM_THREADS=1 python benchmarks/train_speed.py ...   # every run on one intra-op thread

Needs the training extra.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vitdeploy.core.provenance import machine, package_versions

REPO = Path(__file__).resolve().parents[1]


def start(checkout: Path, seed: int, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, "-m", "vitdeploy", "train", "--seed", str(seed), "--out", str(out), "--json"]
    return subprocess.Popen(command, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)


def finish_all(procs: dict[tuple[str, int], subprocess.Popen], started: float) -> list[dict]:
    """Reap the runs as they end: each one's wall time, CPU time (os.wait4's rusage) and its JSON summary."""
    by_pid = {proc.pid: (key, proc) for key, proc in procs.items()}
    runs = []
    while by_pid:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in by_pid:
            continue
        (name, seed), proc = by_pid.pop(pid)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"vitdeploy train ({name}, seed {seed}) exited {proc.returncode}")
        summary = json.loads(proc.stdout.read())
        runs.append({"checkout": name, "seed": seed, "wall_s": round(wall, 1),
                     "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "training_s": round(summary["seconds"], 1),
                     "val_accuracy": summary["val_accuracy"], "epochs": summary["epochs"]})
    return sorted(runs, key=lambda run: (run["checkout"], run["seed"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--before", type=Path, help="another checkout of vitdeploy to run beside this one")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    checkouts = {"this": REPO, **({"before": args.before.resolve()} if args.before else {})}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        procs = {(name, seed): start(path, seed, Path(work) / f"{name}-{seed}")
                 for name, path in checkouts.items() for seed in seeds}
        runs = finish_all(procs, started)
    report = {"machine": machine(), "versions": package_versions(("torch", "numpy")),
              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "load_before": load_before,
              "load_after": os.getloadavg(), "runs": runs}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
