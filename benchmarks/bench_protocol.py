"""A benchmark of the benchmark: does timing one variant beside others change its figure? (issue 18, section 1)

    python benchmarks/bench_protocol.py spin MODEL_DIR          # how long each runtime's pool keeps the CPU busy
    python benchmarks/bench_protocol.py cause MODEL_DIR         # per-call alternation with ORT spinning on / off
    python benchmarks/bench_protocol.py inproc MODEL_DIR --before OLD_TREE --repeats 8
    python benchmarks/bench_protocol.py compare MODEL_DIR --before OLD_TREE --repeats 3
    python benchmarks/bench_protocol.py interleaved MODEL_DIR --repeats 3 --cycles 4
    python benchmarks/bench_protocol.py summary                 # the tables of bench_protocol.md, from the JSON

MODEL_DIR holds model.onnx and model.int8.onnx as `vitdeploy export BUNDLE --precision int8` leaves them (a
ViT-Ti/16 trained briefly on benchmarks/photo_regions.py's folder is enough: the speed does not depend on the
weights).

spin: after one batch-1 inference, the process's CPU time is sampled every 5 ms (CLOCK_PROCESS_CPUTIME_ID counts
every thread) while the calling thread sleeps: cores busy per window, i.e. the pool's threads still spinning with
nothing to do. For ORT with spinning on (its default) and off (session.intra_op.allow_spinning=0), OpenVINO
(f32 pinned), PyTorch eager, and the peak GEMMs bench times beside the variants (numpy's is OpenBLAS).

cause: in one process, ORT fp32's batch-1 latency (median of 60 calls) alone, alternating call by call with ORT
int8 and OpenVINO (the old protocol), and in blocks of 20 calls after 0.1 s idle (the new protocol), with ORT's
threads spinning (its default); alone and call by call with spinning off (session.intra_op.allow_spinning=0). If
spinning is the cause, call by call costs nothing over alone when nothing spins. Repeated --repeats times, the
order of the modes rotated.

inproc: the same question in one process, so that the runs compared follow each other within seconds: the runners
and peak GEMMs `vitdeploy bench` creates, timed by the old protocol's measure() (loaded from OLD_TREE's
vitdeploy/benchmark/protocol.py) and by this tree's, each variant alone and the three together, default settings
(warm-up 3 runs and 1 s, at least 10 runs and 2 s), batch 1. The order of old and new, and of alone and together,
alternates per repeat.

compare: `vitdeploy bench MODEL --batch-sizes 1` run as a subprocess, each variant alone and the three together
(ort-cpu, ort-cpu-int8, ov-cpu: two runtimes), with the package of the tree given by --before (the old per-call
round-robin: an export of main at c9361bf) and of this tree (blocks). Runs alternate between trees and between
alone and together, so the machine's drift hits both; each repeat reports together/alone of every variant's p50,
from the same repeat.

interleaved: this tree's protocol only, alone and together measured as bench measures variants: in short points
that alternate (a cycle: the three together, then each alone, the order of the alone points rotating), --cycles
times per repeat, each variant's latencies pooled over the cycles per side. A slow phase of the machine (a second
or two at 1.5x, seen here on a quiet machine) then falls on both sides instead of on one alone point; inproc's
single points cannot tell it from a disturbance by the other variants. Each run is appended to benchmarks/results/bench_protocol.json under its mode.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
VITDEPLOY = Path(sys.executable).parent / "vitdeploy"
VARIANTS = ("ort-cpu", "ort-cpu-int8", "ov-cpu")
WINDOW_S = 0.005


def busy_after_call(run: Any, calls: int = 20, horizon_s: float = 0.4) -> list[float]:
    """Cores busy (CPU seconds / wall seconds) in each WINDOW_S window after a call, the median over `calls`
    calls, the first window starting as the call returns."""
    run()  # warm
    profiles = []
    for _ in range(calls):
        run()
        last_cpu, last_wall = time.process_time(), time.perf_counter()
        profile = []
        while len(profile) < horizon_s / WINDOW_S:
            time.sleep(WINDOW_S)
            cpu, wall = time.process_time(), time.perf_counter()
            profile.append((cpu - last_cpu) / (wall - last_wall))
            last_cpu, last_wall = cpu, wall
        profiles.append(profile)
        time.sleep(0.3)
    return [round(float(x), 2) for x in np.median(np.asarray(profiles), axis=0)]


def spin(model_dir: Path, threads: int) -> dict[str, Any]:
    from vitdeploy.files.bundle import load_bundle
    from vitdeploy.files.onnx_file import INPUT_NAME
    from vitdeploy.runtimes import open_runtime
    from vitdeploy.runtimes.ort import make_session

    batch = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    runs: dict[str, Any] = {}
    for spinning in (True, False):
        session, _ = make_session(model_dir / "model.onnx", device="cpu", threads=threads, spin=spinning)
        runs[f"ort-cpu spin={'on' if spinning else 'off'}"] = lambda s=session: s.run(None, {INPUT_NAME: batch})
    ov = open_runtime("openvino", model_dir / "model.onnx", "cpu", threads=threads)
    runs["ov-cpu"] = lambda: ov.run(batch)
    import torch

    torch.set_num_threads(threads)
    model = load_bundle(model_dir)[0].eval()
    tensor = torch.from_numpy(batch)

    def eager() -> None:
        with torch.inference_mode():
            model(tensor)

    runs["torch"] = eager
    from vitdeploy.benchmark.peak import gemm_runners

    for gemm in gemm_runners({"cpu"}, {"fp32", "int8"}, threads, True, True):  # the peak GEMMs behind MFU
        gemm.create()
        runs[gemm.spec.name] = gemm.infer
    result = {}
    for name, run in runs.items():
        profile = busy_after_call(run)
        quiet = next((i for i, busy in enumerate(profile) if all(b < 0.1 for b in profile[i:])), len(profile))
        result[name] = {"busy_cores_per_5ms": profile, "busy_until_ms": round(quiet * WINDOW_S * 1e3, 1)}
        print(f"{name}: busy until {quiet * WINDOW_S * 1e3:.0f} ms after the call; first windows "
              f"{profile[:12]}", flush=True)
    return result


def sessions(model_dir: Path, threads: int, spin: bool) -> dict[str, Any]:
    """name -> one batch-1 inference: ORT fp32 and int8 (spinning as asked) and OpenVINO f32."""
    from vitdeploy.files.onnx_file import INPUT_NAME
    from vitdeploy.runtimes import open_runtime
    from vitdeploy.runtimes.ort import make_session

    batch = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    calls: dict[str, Any] = {}
    for name, file in (("ort-cpu", "model.onnx"), ("ort-cpu-int8", "model.int8.onnx")):
        session, _ = make_session(model_dir / file, device="cpu", threads=threads, spin=spin)
        calls[name] = lambda s=session: s.run(None, {INPUT_NAME: batch})
    ov = open_runtime("openvino", model_dir / "model.onnx", "cpu", threads=threads)
    calls["ov-cpu"] = lambda: ov.run(batch)
    return calls


def timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def cause(model_dir: Path, threads: int, repeats: int, calls: int = 60) -> dict[str, Any]:
    """ORT fp32's p50 (ms) alone, per call beside ORT int8 and OpenVINO (spinning on, off), and in blocks."""
    spinning, quiet = sessions(model_dir, threads, True), sessions(model_dir, threads, False)
    for run in [*spinning.values(), *quiet.values()]:
        for _ in range(5):
            run()

    def alone(runs: dict[str, Any]) -> list[float]:
        return [timed(runs["ort-cpu"]) for _ in range(calls)]

    def per_call(runs: dict[str, Any]) -> list[float]:
        out = []
        for _ in range(calls):
            for name, run in runs.items():
                latency = timed(run)
                if name == "ort-cpu":
                    out.append(latency)
        return out

    def blocks(block: int = 20) -> list[float]:
        out = []
        for _ in range(calls // block):
            for name, run in spinning.items():
                time.sleep(0.1)
                run()
                latencies = [timed(run) for _ in range(block)]
                if name == "ort-cpu":
                    out += latencies
        return out

    modes = {"alone": lambda: alone(spinning), "per call, spinning on": lambda: per_call(spinning),
             "blocks, spinning on": blocks, "alone, spinning off": lambda: alone(quiet),
             "per call, spinning off": lambda: per_call(quiet)}
    results: list[dict[str, Any]] = []
    for repeat in range(repeats):
        order = list(modes)[repeat % len(modes):] + list(modes)[:repeat % len(modes)]
        entry: dict[str, Any] = {"load_before": os.getloadavg()}
        for mode in order:
            entry[mode] = round(float(np.median(modes[mode]())) * 1e3, 2)
        # Spinning off changes ORT's speed itself: each mode against alone with the same spinning.
        entry["over_alone"] = {m: round(entry[m] / entry["alone, spinning off" if "off" in m else "alone"], 3)
                               for m in modes}
        entry["load_after"] = os.getloadavg()
        print(f"repeat {repeat + 1}: ort-cpu p50 " + ", ".join(f"{m} {entry[m]:.2f} ms ({entry['over_alone'][m]:.2f}x)"
                                                               for m in modes), flush=True)
        results.append(entry)
    return {"threads": threads, "calls": calls, "repeats": results}


def inproc(model_dir: Path, before: Path, repeats: int, threads: int) -> dict[str, Any]:
    """variant -> p50 alone and together, per protocol and repeat, and their ratio."""
    import importlib.util

    from vitdeploy.benchmark.protocol import measure
    from vitdeploy.benchmark.variants import VARIANTS

    spec = importlib.util.spec_from_file_location("old_protocol", before / "vitdeploy/benchmark/protocol.py")
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_protocol"] = old  # dataclasses look their module up there
    spec.loader.exec_module(old)
    protocols = {"before": old.measure, "after": measure}
    with bench_points(model_dir, threads) as point:

        def p50s(measure: Any, names: tuple[str, ...]) -> dict[str, float]:
            return {n: round(float(np.median(t)) * 1e3, 2) for n, t in point(measure, names).items()}

        out = []
        for repeat in range(repeats):
            entry: dict[str, Any] = {"load_before": os.getloadavg()}
            order = list(protocols) if repeat % 2 == 0 else list(reversed(protocols))
            for label in order:
                # Alone first in every other repeat, so that a load rising (or falling) through a repeat does not
                # always favour the same side.
                if repeat % 2:
                    alone = {v: p50s(protocols[label], (v,))[v] for v in VARIANTS}
                    together = p50s(protocols[label], VARIANTS)
                else:
                    together = p50s(protocols[label], VARIANTS)
                    alone = {v: p50s(protocols[label], (v,))[v] for v in VARIANTS}
                ratio = {v: round(together[v] / alone[v], 3) for v in VARIANTS}
                entry[label] = {"alone_p50_ms": alone, "together_p50_ms": together, "together_over_alone": ratio}
                print(f"repeat {repeat + 1} {label}: " + ", ".join(
                    f"{v} alone {alone[v]:.2f} ms, together {together[v]:.2f} ms ({ratio[v]:.2f}x)"
                    for v in VARIANTS), flush=True)
            entry["load_after"] = os.getloadavg()
            out.append(entry)
    return {"variants": list(VARIANTS), "threads": threads, "before": os.fspath(before), "repeats": out}


@contextlib.contextmanager
def bench_points(model_dir: Path, threads: int) -> Iterator[Callable[[Any, tuple[str, ...]], dict[str, list[float]]]]:
    """The runners of VARIANTS and the peak GEMMs `vitdeploy bench` creates, created and cold-started as it does;
    yields point(measure, names): one batch-1 point of that protocol's `measure` on those variants, beside the GEMMs
    bench would pick for them -> variant -> latencies (s)."""
    from vitdeploy import benchmark as bench
    from vitdeploy.benchmark.artifacts import model_from_files
    from vitdeploy.benchmark.peak import gemm_runners
    from vitdeploy.benchmark.protocol import cold_start
    from vitdeploy.benchmark.runners import make_runner
    from vitdeploy.benchmark.timing import input_batch, torch_threads
    from vitdeploy.benchmark.variants import VARIANTS

    settings = bench.BenchSettings(batch_sizes=(1,), threads=threads)
    model = model_from_files(model_dir / "model.onnx", None)
    batch = input_batch(model.config, 1, settings.seed)
    runners = {name: make_runner(VARIANTS[name], model, threads) for name in VARIANTS}
    with torch_threads(threads):
        for runner in runners.values():
            cold_start(runner, batch)
        gemms = gemm_runners({"cpu"}, {"fp32", "int8"}, threads, True, True)
        for gemm in gemms:
            gemm.create()

        def point(measure: Any, names: tuple[str, ...]) -> dict[str, list[float]]:
            precisions = {runners[n].spec.precision for n in names}
            companions = [g for g in gemms if g.precision in precisions]  # as bench picks them
            timed = measure([runners[n] for n in names], settings, companions)
            return {n: timed[n] for n in names}

        yield point


def interleaved(model_dir: Path, repeats: int, threads: int, cycles: int) -> dict[str, Any]:
    """variant -> pooled p50 alone and together, alone and together points alternating `cycles` times a repeat."""
    from vitdeploy.benchmark.protocol import measure
    from vitdeploy.benchmark.variants import VARIANTS

    with bench_points(model_dir, threads) as measured:

        def point(names: tuple[str, ...]) -> dict[str, list[float]]:
            return measured(measure, names)

        out = []
        for repeat in range(repeats):
            entry: dict[str, Any] = {"load_before": os.getloadavg(), "cycles": []}
            pooled: dict[str, dict[str, list[float]]] = {"alone": {v: [] for v in VARIANTS},
                                                         "together": {v: [] for v in VARIANTS}}
            for cycle in range(cycles):
                shift = cycle % len(VARIANTS)
                alone_order = [*VARIANTS[shift:], *VARIANTS[:shift]]
                together = point(VARIANTS)
                alone = {v: point((v,))[v] for v in alone_order}
                for v in VARIANTS:
                    pooled["together"][v] += together[v]
                    pooled["alone"][v] += alone[v]
                entry["cycles"].append({v: round(float(np.median(together[v]) / np.median(alone[v])), 3)
                                        for v in VARIANTS})
            p50 = {side: {v: round(float(np.median(pooled[side][v])) * 1e3, 2) for v in VARIANTS}
                   for side in pooled}
            ratio = {v: round(p50["together"][v] / p50["alone"][v], 3) for v in VARIANTS}
            entry.update({"alone_p50_ms": p50["alone"], "together_p50_ms": p50["together"],
                          "together_over_alone": ratio, "load_after": os.getloadavg()})
            print(f"repeat {repeat + 1}: " + ", ".join(
                f"{v} alone {p50['alone'][v]:.2f} ms, together {p50['together'][v]:.2f} ms ({ratio[v]:.2f}x)"
                for v in VARIANTS), flush=True)
            out.append(entry)
    return {"variants": list(VARIANTS), "threads": threads, "cycles": cycles, "idle": "fixed", "repeats": out}


def bench_once(tree: Path, model_dir: Path, variants: tuple[str, ...], threads: int) -> dict[str, float]:
    """variant -> batch-1 p50 (ms) of one `vitdeploy bench` run with the package in `tree`."""
    command = [os.fspath(VITDEPLOY), "bench", os.fspath(model_dir / "model.onnx"), "--variants", ",".join(variants),
               "--batch-sizes", "1", "--threads", str(threads), "--json"]
    env = {**os.environ, "PYTHONPATH": os.fspath(tree)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    return {row["variant"]: row["p50_ms"] for row in report["results"]}


def compare(model_dir: Path, before: Path, after: Path, repeats: int, threads: int) -> dict[str, Any]:
    trees = {"before": before, "after": after}
    repeats_out = []
    for repeat in range(repeats):
        entry: dict[str, Any] = {"load_before": os.getloadavg()}
        for label, tree in trees.items():
            if repeat % 2:  # alone first in every other repeat, as in inproc
                alone = {v: bench_once(tree, model_dir, (v,), threads)[v] for v in VARIANTS}
                together = bench_once(tree, model_dir, VARIANTS, threads)
            else:
                together = bench_once(tree, model_dir, VARIANTS, threads)
                alone = {v: bench_once(tree, model_dir, (v,), threads)[v] for v in VARIANTS}
            ratio = {v: round(together[v] / alone[v], 3) for v in VARIANTS}
            entry[label] = {"alone_p50_ms": alone, "together_p50_ms": together, "together_over_alone": ratio}
            print(f"repeat {repeat + 1} {label}: " + ", ".join(
                f"{v} alone {alone[v]:.2f} ms, together {together[v]:.2f} ms ({ratio[v]:.2f}x)" for v in VARIANTS),
                flush=True)
        entry["load_after"] = os.getloadavg()
        repeats_out.append(entry)
        trees = dict(reversed(list(trees.items())))  # the other tree first next time
    return {"variants": list(VARIANTS), "threads": threads, "trees": {k: os.fspath(v) for k, v in trees.items()},
            "repeats": repeats_out}


def load(entry: dict[str, Any]) -> str:
    return f"{entry['load_before'][0]:.1f} / {entry['load_after'][0]:.1f}"


def summary(results: dict[str, Any]) -> str:
    """Markdown: per run of inproc and compare, each repeat's together/alone ratio per variant and protocol, and
    the median over repeats; per run of cause, each mode against alone."""
    lines = []
    for mode in ("inproc", "compare"):
        for n, run in enumerate(results.get(mode, []), start=1):
            variants = run["variants"]
            lines += [f"\n### {mode}, run {n} ({len(run['repeats'])} repeats, {run['threads']} threads)\n",
                      "| repeat | load 1-min before / after | " + " | ".join(
                          f"{v} {label}" for label in ("before", "after") for v in variants) + " |",
                      "|---" * (2 + 2 * len(variants)) + "|"]
            for i, entry in enumerate(run["repeats"], start=1):
                lines.append(f"| {i} | {load(entry)} | " + " | ".join(
                    f"{entry[label]['together_over_alone'][v]:.2f}" for label in ("before", "after")
                    for v in variants) + " |")
            lines.append("| **median** | | " + " | ".join(
                f"**{np.median([e[label]['together_over_alone'][v] for e in run['repeats']]):.2f}**"
                for label in ("before", "after") for v in variants) + " |")
    for n, run in enumerate(results.get("interleaved", []), start=1):
        variants = run["variants"]
        lines += [(f"\n### interleaved, run {n} ({len(run['repeats'])} repeats of {run['cycles']} cycles, "
                   f"{run['threads']} threads, idle {run.get('idle', 'fixed')}; pooled p50 together / alone, ms)\n"),
                  "| repeat | load 1-min before / after | " + " | ".join(variants) + " | per cycle |",
                  "|---" * (3 + len(variants)) + "|"]
        for i, entry in enumerate(run["repeats"], start=1):
            per_cycle = "; ".join(" / ".join(f"{c[v]:.2f}" for v in variants) for c in entry["cycles"])
            lines.append(f"| {i} | {load(entry)} | " + " | ".join(
                f"{entry['together_p50_ms'][v]:.1f} / {entry['alone_p50_ms'][v]:.1f} = "
                f"**{entry['together_over_alone'][v]:.2f}x**" for v in variants) + f" | {per_cycle} |")
    for n, run in enumerate(results.get("cause", []), start=1):
        modes = list(run["repeats"][0]["over_alone"])
        lines += [f"\n### cause, run {n} (ORT fp32 p50 in ms, and x its figure alone with the same spinning)\n",
                  "| repeat | load 1-min before / after | " + " | ".join(modes) + " |",
                  "|---" * (2 + len(modes)) + "|"]
        for i, entry in enumerate(run["repeats"], start=1):
            lines.append(f"| {i} | {load(entry)} | " + " | ".join(
                f"{entry[m]:.1f} ({entry['over_alone'][m]:.2f}x)" for m in modes) + " |")
        lines.append("| **median** | | " + " | ".join(
            f"**{np.median([e[m] for e in run['repeats']]):.1f} "
            f"({np.median([e['over_alone'][m] for e in run['repeats']]):.2f}x)**" for m in modes) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    from vitdeploy.core.provenance import machine as describe
    from vitdeploy.core.provenance import package_versions

    return {**describe(), "versions": package_versions(), "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("spin", "cause", "inproc", "compare", "interleaved", "summary"))
    parser.add_argument("model_dir", type=Path, nargs="?")
    parser.add_argument("--before", type=Path, help="compare: the tree of the old package (e.g. git archive c9361bf)")
    parser.add_argument("--after", type=Path, default=REPO, help="compare: the tree of the new package (default: "
                        "this one; a frozen copy, e.g. git archive HEAD, keeps edits out of a long run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cycles", type=int, default=4, help="interleaved: alone/together cycles per repeat")
    args = parser.parse_args()
    out = REPO / "benchmarks" / "results" / "bench_protocol.json"
    if args.what == "summary":
        print(summary(json.loads(out.read_text())))
        return
    if not args.model_dir:
        parser.error(f"{args.what} needs MODEL_DIR")
    if args.what in ("inproc", "compare") and not args.before:
        parser.error(f"{args.what} needs --before")
    if args.what == "spin":
        result = spin(args.model_dir, args.threads)
    elif args.what == "cause":
        result = cause(args.model_dir, args.threads, args.repeats)
    elif args.what == "interleaved":
        result = interleaved(args.model_dir, args.repeats, args.threads, args.cycles)
    elif args.what == "inproc":
        result = inproc(args.model_dir, args.before, args.repeats, args.threads)
    else:
        result = compare(args.model_dir, args.before, args.after, args.repeats, args.threads)
    results = json.loads(out.read_text()) if out.exists() else {}  # every run of every mode is kept
    results.setdefault(args.what, []).append({"machine": machine(), **result})
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
