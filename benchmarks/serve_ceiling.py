"""`vitdeploy serve` against the model's own ceiling: open-loop and closed-loop load, with the ceiling measured in
the same sitting.

    python benchmarks/serve_ceiling.py --output benchmarks/results/serve-ceiling-vit-ti16.json
    python benchmarks/serve_ceiling.py --model model.int8.onnx --endpoint classify --rounds 2

The ceiling is the model alone, opened as serve opens it (runtime layer, ONNX Runtime idle threads not spinning,
the same --threads), at its best batch size of --ceiling-batches: images/s of back-to-back runs, no HTTP, no
decode. It is measured before and after every round, with the server idle, and the round is judged against their
mean. One round, for each server (--servers: a label=PYTHONPATH pair per server, to compare code or packages in
one sitting; default: this checkout):

    closed loop   C clients (--clients, default 1,4,16,64), each sending its next request when its answer came
    open loop     requests sent at a fixed rate of F x the ceiling (--rates, default 0.5,1,2), whatever the answers
                  do; a bounded number of requests (--requests), so 2x ends instead of queueing forever

A request is one image: a preprocessed tensor in the binary tensor extension on /v2/models/NAME/infer (what
tritonclient sends), or with --endpoint classify a JPEG (the model's size plus a margin, decoded and preprocessed by
the server) on /classify. The load generator is one asyncio loop in this process, on raw keep-alive sockets with
the request bytes built beforehand (about 0.2 ms of CPU per request here), on the same CPU as the server.

Per phase: requests/s, p50 / p99 latency (send to last byte), failed requests, the batch sizes the server ran (its
stats endpoint), and CPU time per request (ms) of the server's event loop thread, of its other threads (the
inference worker with the runtime's threads, and the decoders), and of this client, read from /proc. The machine,
versions and load average go into the report.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from serve import environment, export_model, percentile  # noqa: E402  (the other serve benchmark's helpers)

from vitdeploy.serving.protocol import build_infer_request  # noqa: E402

# ------------------------------------------------------------------------------------------- the server


class Server:
    """`vitdeploy serve` as a subprocess on a free loopback port, with PYTHONPATH `path`."""

    def __init__(self, label: str, path: str, model: Path, args: list[str]):
        self.label = label
        command = [sys.executable, "-m", "vitdeploy", "serve", str(model), "--name", "model", "--port", "0",
                   "--device", "cpu", *args]
        # cwd: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(),
                                     env={**os.environ, "PYTHONPATH": path})
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("serving "):
                self.port = int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1])
                return
        raise SystemExit(f"{label}: the server did not start: {self.proc.communicate()}")

    def stats(self) -> dict[str, Any]:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        conn.request("GET", "/v2/models/stats")
        return json.loads(conn.getresponse().read())["model_stats"][0]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=300)
        return self.proc.returncode


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of process `pid`: its main thread (the event loop) and the sum of every other thread."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"event_loop": 0.0, "other_threads": 0.0}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out["event_loop" if tid == str(pid) else "other_threads"] += (int(fields[11]) + int(fields[12])) / tick
    return out


def batch_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[int, int]:
    counts = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    return {b["batch_size"]: b["compute_infer"]["count"] - counts.get(b["batch_size"], 0)
            for b in after["batch_stats"] if b["compute_infer"]["count"] > counts.get(b["batch_size"], 0)}


# ------------------------------------------------------------------------------------------- the load


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    return (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection; reopened after an error."""

    def __init__(self, port: int):
        self.port, self.streams = port, None

    async def send(self, data: bytes) -> int:
        """The response's status (0: the connection failed). A connection the server closed while it sat idle
        (uvicorn closes keep-alive connections after 5 s) fails before any byte of an answer: the request is sent
        again once on a new connection, as HTTP clients do."""
        reused = self.streams is not None
        status = await self._send(data)
        if status == -1 and reused:
            status = await self._send(data)
        return max(status, 0)

    async def _send(self, data: bytes) -> int:
        """The status; -1 when the connection ended before any byte of the answer, 0 after some."""
        started = False
        try:
            if self.streams is None:
                self.streams = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = self.streams
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            started = True
            length = next((int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:"),
                          0)
            await reader.readexactly(length)
            return int(head.split(b" ", 2)[1])
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            if self.streams is not None:
                self.streams[1].close()
            self.streams = None
            nothing = not started and (not isinstance(e, asyncio.IncompleteReadError) or not e.partial)
            return -1 if nothing else 0


async def closed_loop(port: int, requests: list[bytes], clients: int, count: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    failed = 0
    sent = 0

    async def client() -> None:
        nonlocal sent, failed
        connection = Connection(port)
        while sent < count:
            sent += 1
            started = time.perf_counter()
            status = await connection.send(requests[sent % len(requests)])
            latencies.append(time.perf_counter() - started)
            failed += status != 200

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, latencies, failed


async def open_loop(port: int, requests: list[bytes], rate: float, count: int) -> tuple[float, list[float], int]:
    """Request i leaves at start + i / rate on an idle connection (a new one when none is idle)."""
    latencies: list[float] = []
    failed = 0
    idle: list[Connection] = []

    async def one(i: int) -> None:
        nonlocal failed
        connection = idle.pop() if idle else Connection(port)
        started = time.perf_counter()
        status = await connection.send(requests[i % len(requests)])
        latencies.append(time.perf_counter() - started)
        failed += status != 200
        idle.append(connection)

    started = time.perf_counter()
    tasks = []
    for i in range(count):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - started, latencies, failed


def build_requests(endpoint: str, size: int, n: int = 8) -> list[bytes]:
    rng = np.random.default_rng(0)
    if endpoint == "infer":
        return [http_request("/v2/models/model/infer",
                             *build_infer_request(rng.standard_normal((1, 3, size, size)).astype(np.float32)))
                for _ in range(n)]
    from PIL import Image

    out = []
    for i in range(n):  # a photo-sized JPEG: decode and resize are part of the work, as for a real upload
        pixels = rng.integers(0, 256, (size * 2, size * 2 + 32 * i, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        out.append(http_request("/classify", buffer.getvalue(), {"content-type": "image/jpeg"}))
    return out


# ------------------------------------------------------------------------------------------- the ceiling


def ceiling(session: Any, size: int, batches: list[int], seconds: float) -> dict[str, Any]:
    """images/s of the model alone at each batch size (at least `seconds` of back-to-back runs each), the best,
    batch 1's median latency, and the CPU time per image (this process: the runtime's threads) at each size."""
    rng = np.random.default_rng(1)
    per_batch, cpu_ms, batch1_ms = {}, {}, None
    for b in batches:
        x = rng.standard_normal((b, 3, size, size)).astype(np.float32)
        session.run(x)  # warm-up
        times = []
        cpu_before = os.times()
        while sum(times) < seconds or len(times) < 2:
            started = time.perf_counter()
            session.run(x)
            times.append(time.perf_counter() - started)
        cpu_after = os.times()
        per_batch[b] = b * len(times) / sum(times)
        cpu_ms[b] = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) * 1000 / (b * len(times))
        if b == 1:
            batch1_ms = float(np.median(times) * 1000)
    best = max(per_batch, key=per_batch.get)
    return {"images_per_s": {str(b): round(v, 2) for b, v in per_batch.items()}, "best_batch": best,
            "best_images_per_s": round(per_batch[best], 2), "batch1_median_ms": batch1_ms,
            "cpu_ms_per_image": {str(b): round(v, 2) for b, v in cpu_ms.items()}}


# ------------------------------------------------------------------------------------------- a run


def phase(server: Server, requests: list[bytes], kind: str, value: float, count: int) -> dict[str, Any]:
    before, cpu_before, me_before = server.stats(), thread_cpu(server.proc.pid), os.times()
    failed_before = before["inference_stats"]["fail"]["count"] + before.get("refused_requests", 0)
    load = (closed_loop(server.port, requests, int(value), count) if kind == "closed"
            else open_loop(server.port, requests, value, count))
    wall, latencies, failed = asyncio.run(load)
    after, cpu_after, me_after = server.stats(), thread_cpu(server.proc.pid), os.times()
    n = len(latencies)
    client_cpu = (me_after.user + me_after.system - me_before.user - me_before.system)
    return {
        "requests": n, "failed": failed, "wall_s": round(wall, 3), "requests_per_s": round(n / wall, 2),
        "failed_in_server": after["inference_stats"]["fail"]["count"] + after.get("refused_requests", 0) - failed_before,
        "p50_ms": round(percentile(latencies, 50) * 1000, 1), "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "batch_sizes_run": {str(k): v for k, v in sorted(batch_delta(before, after).items())},
        "cpu_ms_per_request": {
            "server_event_loop": round((cpu_after["event_loop"] - cpu_before["event_loop"]) * 1000 / n, 2),
            "server_other_threads": round((cpu_after["other_threads"] - cpu_before["other_threads"]) * 1000 / n, 2),
            "client": round(client_cpu * 1000 / n, 2)},
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The load table of a report: one row per round, server and phase, the round's ceiling beside it."""
    rows = ["| round | server | load | requests/s | / ceiling | p50 ms | p99 ms | failed | batch size: runs | CPU ms/request "
            "(event loop / model threads / client) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, record in enumerate(report["rounds"], 1):
        before, after = record["ceiling_before"], record["ceiling_after"]
        ceiling = (before["best_images_per_s"] + after["best_images_per_s"]) / 2
        rows.append(f"| {i} | ceiling (model alone) | before / after | {before['best_images_per_s']} / "
                    f"{after['best_images_per_s']} (batch {before['best_batch']} / {after['best_batch']}) | 1 | "
                    f"batch 1: {before['batch1_median_ms']:.0f} / {after['batch1_median_ms']:.0f} | | | | "
                    f"per image: {before['cpu_ms_per_image']} / {after['cpu_ms_per_image']} |")
        for label in report["servers"]:
            for name, r in record[label].items():
                if not isinstance(r, dict):
                    continue
                load = name.replace("closed_", "closed loop, ").replace("open_", "open loop, ")
                load += " clients" if name.startswith("closed") else f" ({r['rate_per_s']}/s)"
                cpu = r["cpu_ms_per_request"]
                rows.append(f"| {i} | {label} | {load} | {r['requests_per_s']} | {r['requests_per_s'] / ceiling:.2f} | "
                            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['failed']} | "
                            f"{', '.join(f'{k}: {v}' for k, v in r['batch_sizes_run'].items())} | "
                            f"{cpu['server_event_loop']} / {cpu['server_other_threads']} / {cpu['client']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="An exported .onnx (default: a random-init --preset export)")
    parser.add_argument("--preset", default="vit-ti16")
    parser.add_argument("--endpoint", choices=["infer", "classify"], default="infer")
    parser.add_argument("--servers", default=f"this={REPO}",
                        help="label=PYTHONPATH[=serve options][,...]: the servers to compare, each run per round, "
                        "e.g. 'main=/src/main,small=.=--max-batch-size 8'")
    parser.add_argument("--server-args", default="", help="extra `vitdeploy serve` options, e.g. '--threads 2'")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--rates", default="0.5,1,2", help="open-loop rates, as multiples of the ceiling")
    parser.add_argument("--requests", type=int, default=64, help="requests per phase (closed loop: at least "
                        "4 per client)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--ceiling-batches", default="1,8,16,32")
    parser.add_argument("--ceiling-seconds", type=float, default=2.0, help="timed seconds per ceiling batch size")
    parser.add_argument("--threads", type=int, help="the runtime's threads, for the ceiling and every server")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--table", type=Path, help="only print the markdown load table of this earlier report")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    servers = [(item.split("=")[0], item.split("=")[1], item.split("=", 2)[2].split() if item.count("=") > 1 else [])
               for item in args.servers.split(",")]
    server_args = args.server_args.split() + (["--threads", str(args.threads)] if args.threads else [])

    with tempfile.TemporaryDirectory(prefix="vitdeploy-serve-ceiling-") as tmp:
        model = args.model or export_model(args.preset, Path(tmp))
        from vitdeploy.runtimes import open_runtime

        session = open_runtime(None, model, "cpu", threads=args.threads, spin=False)  # as serve opens it
        size = session.preprocess.image_size
        requests = build_requests(args.endpoint, size)
        batches = [int(b) for b in args.ceiling_batches.split(",")]
        rounds = []
        load_before = list(os.getloadavg())
        for round_index in range(args.rounds):
            record: dict[str, Any] = {"ceiling_before": ceiling(session, size, batches, args.ceiling_seconds)}
            print(f"round {round_index + 1}: ceiling {record['ceiling_before']}", file=sys.stderr)
            rate = record["ceiling_before"]["best_images_per_s"]
            order = servers if round_index % 2 == 0 else list(reversed(servers))
            for label, path, own_args in order:
                server = Server(label, path, model, server_args + own_args)
                try:
                    asyncio.run(closed_loop(server.port, requests, 4, 8))  # warm-up, not counted
                    results = {}
                    for clients in (int(c) for c in args.clients.split(",")):
                        results[f"closed_{clients}"] = phase(server, requests, "closed", clients,
                                                             max(args.requests, 4 * clients))
                        print(f"  {label} closed {clients}: {results[f'closed_{clients}']}", file=sys.stderr)
                    for factor in (float(f) for f in args.rates.split(",")):
                        results[f"open_{factor:g}x"] = phase(server, requests, "open", factor * rate, args.requests)
                        results[f"open_{factor:g}x"]["rate_per_s"] = round(factor * rate, 2)
                        print(f"  {label} open {factor:g}x: {results[f'open_{factor:g}x']}", file=sys.stderr)
                finally:
                    results["exit_code"] = server.stop()
                record[label] = results
            record["ceiling_after"] = ceiling(session, size, batches, args.ceiling_seconds)
            mean_ceiling = (record["ceiling_before"]["best_images_per_s"]
                            + record["ceiling_after"]["best_images_per_s"]) / 2
            for label, _, _ in servers:
                saturated = max(r["requests_per_s"] for k, r in record[label].items() if k.startswith("closed"))
                record[label]["best_closed_loop_over_ceiling"] = round(saturated / mean_ceiling, 3)
            print(f"round {round_index + 1}: ceiling after {record['ceiling_after']}", file=sys.stderr)
            rounds.append(record)

    report = {
        "what": "vitdeploy serve against the model's own ceiling (benchmarks/serve_ceiling.py)",
        "model": f"preset:{args.preset} (random weights)" if args.model is None else str(args.model),
        "endpoint": args.endpoint,
        "servers": {label: {"pythonpath": path, "serve_options": own} for label, path, own in servers},
        "server_args": server_args,
        "rounds": rounds,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "environment": environment(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    print(markdown_table(report), file=sys.stderr)


if __name__ == "__main__":
    main()
