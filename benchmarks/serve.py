"""`vitdeploy serve` under load on loopback: dynamic batching against batch-size-1 serving, same model, same clients.

    python benchmarks/serve.py                       # vit-ti16 (random weights), 16 clients x 8 requests, 3 rounds
    python benchmarks/serve.py --output benchmarks/results/serve-vit-ti16.json
    python benchmarks/serve.py --model my.onnx --clients 16 --requests 8 --rounds 3 --max-queue-delay-ms 2

Two servers run side by side as `vitdeploy serve` processes on 127.0.0.1 (the CLI, as users run it): one with
--max-batch-size 32 and the queue delay given, one with --max-batch-size 1. Each round loads one, then the other
(the order alternates), with the same closed-loop clients: `--clients` threads, each sending `--requests`
requests one after another on its own keep-alive connection; a request is one preprocessed image (the model's
input size) in the binary tensor form Triton's client uses. Throughput = requests / wall time of the round; latency = send to last
byte of the answer, as the client sees it. Both servers get a warm-up of one request per client first, which is
not counted. The figures to read: the median of the per-round throughput ratios (dynamic / batch 1), and p50/p99
over every request of each mode. The batch sizes each server ran come from its stats endpoint. For scale, each
round also times the model alone (ONNX Runtime as serve opens it, servers idle): `--clients` runs of batch 1
against one run of batch `--clients`, the most dynamic batching could gain. The run stops by itself: a fixed
number of requests, then both servers get SIGTERM and must exit 0.

The clients run in this process, the servers in theirs, all on the same CPU: on a 2-core machine the clients'
own work (about 1 ms of CPU per request) is part of what is measured, for both modes alike.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from vitdeploy.serving.protocol import HEADER_LENGTH, build_infer_request, parse_infer_response

REPO = Path(__file__).resolve().parents[1]


class Server:
    def __init__(self, model: Path, label: str, max_batch_size: int, delay_ms: float, threads: int | None):
        args = [sys.executable, "-m", "vitdeploy", "serve", str(model), "--name", "model", "--port", "0", "--device", "cpu",
                "--max-batch-size", str(max_batch_size), "--max-queue-delay-ms", str(delay_ms)]
        if threads:
            args += ["--threads", str(threads)]
        self.label, self.max_batch_size, self.delay_ms = label, max_batch_size, delay_ms
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("serving "):
                url = line.split(" on ")[1].split()[0]
                host, port = url.removeprefix("http://").rsplit(":", 1)
                self.host, self.port = host, int(port)
                return
        raise SystemExit(f"{label}: the server did not start: {self.proc.communicate()}")

    def stats(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        conn.request("GET", "/v2/models/stats")
        return json.loads(conn.getresponse().read())["model_stats"][0]

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, err


def load(server: Server, bodies: list[tuple[bytes, dict[str, str]]], clients: int, requests: int,
         classes: int) -> tuple[float, list[float], int]:
    """(wall seconds, per-request latencies in ms, failed requests) of `clients` closed-loop clients."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failed = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=300)
        barrier.wait()
        for r in range(requests):
            body, headers = bodies[(c * requests + r) % len(bodies)]
            started = time.perf_counter()
            try:
                conn.request("POST", "/v2/models/model/infer", body=body, headers=headers)
                response = conn.getresponse()
                content = response.read()
                ok = response.status == 200 and parse_infer_response(content, response.getheader(HEADER_LENGTH)).shape == (1, classes)
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(server.host, server.port, timeout=300)
            latencies[c].append((time.perf_counter() - started) * 1000)
            failed[c] += not ok
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - started, [x for per in latencies for x in per], sum(failed)


def model_only(session: Any, pixels: np.ndarray, clients: int) -> dict[str, float]:
    """images/s of the model alone, in this process with the servers idle: `clients` runs of batch 1, then one
    run of batch `clients` (what dynamic batching can at best turn 16 waiting requests into)."""
    from vitdeploy.runtimes.ort import run_batch

    one, many = pixels[:1], np.repeat(pixels[:1], clients, axis=0)
    started = time.perf_counter()
    for _ in range(clients):
        run_batch(session, one)
    batch1 = clients / (time.perf_counter() - started)
    started = time.perf_counter()
    run_batch(session, many)
    return {"batch1": batch1, f"batch{clients}": clients / (time.perf_counter() - started)}


def batch_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[int, int]:
    counts = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    return {b["batch_size"]: b["compute_infer"]["count"] - counts.get(b["batch_size"], 0)
            for b in after["batch_stats"] if b["compute_infer"]["count"] > counts.get(b["batch_size"], 0)}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def environment() -> dict[str, Any]:
    import importlib.metadata

    from vitdeploy.core.provenance import git_commit, machine, package_versions

    versions = package_versions()
    for name in ("uvicorn", "starlette", "tritonclient"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                     None)
    except OSError:
        model = None
    return {**machine(), "lscpu_model_name": model, "versions": versions, "git_commit": git_commit()}


def export_model(preset: str, folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from builders import make_bundle

    from vitdeploy.core.config import get_preset
    from vitdeploy.exporting.exporter import export_onnx

    bundle = make_bundle(folder / "bundle", get_preset(preset).model)
    return export_onnx(bundle, folder / "model.onnx", verify=False).path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="An exported .onnx (default: a random-init --preset export)")
    parser.add_argument("--preset", default="vit-ti16")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads in each server (default: one per core)")
    parser.add_argument("--output", type=Path, help="write the JSON report here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vitdeploy-serve-bench-") as tmp:
        model = args.model or export_model(args.preset, Path(tmp))
        from vitdeploy.runtimes import read_model_info
        from vitdeploy.runtimes.ort import make_session

        info = read_model_info(model)
        shape, classes = (1, 3, info.preprocess.image_size, info.preprocess.image_size), len(info.labels)
        rng = np.random.default_rng(0)
        bodies = [build_infer_request(rng.standard_normal(shape).astype(np.float32)) for _ in range(16)]
        load_before = list(os.getloadavg())
        servers = {
            "dynamic": Server(model, "dynamic", args.max_batch_size, args.max_queue_delay_ms, args.threads),
            "batch1": Server(model, "batch1", 1, 0.0, args.threads),
        }
        results: dict[str, dict[str, Any]] = {name: {"throughput": [], "latency_ms": [], "failed": 0,
                                                     "batch_sizes": {}} for name in servers}
        session = make_session(model, device="cpu", threads=args.threads, spin=False)[0]  # as serve opens it
        reference = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        model_only(session, reference, args.clients)  # warm-up
        references: list[dict[str, float]] = []
        try:
            for server in servers.values():
                load(server, bodies, args.clients, 1, classes)  # warm-up, not counted
            for round_index in range(args.rounds):
                order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
                for name in order:
                    server = servers[name]
                    before = server.stats()
                    wall, latencies, failed = load(server, bodies, args.clients, args.requests, classes)
                    delta = batch_delta(before, server.stats())
                    result = results[name]
                    result["throughput"].append(args.clients * args.requests / wall)
                    result["latency_ms"].extend(latencies)
                    result["failed"] += failed
                    for size, count in delta.items():
                        result["batch_sizes"][size] = result["batch_sizes"].get(size, 0) + count
                    print(f"round {round_index + 1} {name}: {args.clients * args.requests / wall:.1f} requests/s, "
                          f"p50 {percentile(latencies, 50):.0f} ms, p99 {percentile(latencies, 99):.0f} ms, "
                          f"batch sizes {dict(sorted(delta.items()))}", file=sys.stderr)
                references.append(model_only(session, reference, args.clients))
                print(f"round {round_index + 1} model only (images/s): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in references[-1].items()), file=sys.stderr)
        finally:
            exits = {name: server.stop() for name, server in servers.items()}
        load_after = list(os.getloadavg())

    ratios = [d / b for d, b in zip(results["dynamic"]["throughput"], results["batch1"]["throughput"])]
    summary = {
        name: {
            "requests_per_s_median": round(statistics.median(r["throughput"]), 2),
            "requests_per_s_rounds": [round(x, 2) for x in r["throughput"]],
            "p50_ms": round(percentile(r["latency_ms"], 50), 1),
            "p99_ms": round(percentile(r["latency_ms"], 99), 1),
            "requests": len(r["latency_ms"]),
            "failed": r["failed"],
            "batch_sizes_run": {str(k): v for k, v in sorted(r["batch_sizes"].items())},
            "exit_code": exits[name][0],
        }
        for name, r in results.items()
    }
    report = {
        "what": "vitdeploy serve under load: dynamic batching vs batch-size-1 serving (benchmarks/serve.py)",
        "model": f"preset:{args.preset} (random weights)" if args.model is None else str(args.model),
        "settings": {"clients": args.clients, "requests_per_client_per_round": args.requests, "rounds": args.rounds,
                     "max_batch_size": args.max_batch_size, "max_queue_delay_ms": args.max_queue_delay_ms,
                     "threads": args.threads, "request": f"{' x '.join(map(str, shape))} FP32, binary tensor extension"},
        "throughput_ratio_median": round(statistics.median(ratios), 3),
        "throughput_ratio_rounds": [round(x, 3) for x in ratios],
        "modes": summary,
        "model_only_images_per_s_median": {key: round(statistics.median(r[key] for r in references), 2)
                                           for key in references[0]},
        "model_only_ratio_median": round(statistics.median(
            r[f"batch{args.clients}"] / r["batch1"] for r in references), 3),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "environment": environment(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    if any(s["failed"] or s["exit_code"] for s in summary.values()):
        raise SystemExit("requests failed or a server did not exit 0")


if __name__ == "__main__":
    main()
