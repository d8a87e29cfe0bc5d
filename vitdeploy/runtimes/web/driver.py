"""A headless Chromium driven over loopback: a local HTTP server sends the page, onnxruntime-web and the model with
the cross-origin isolation headers (which multithreaded WebAssembly needs), and the page takes jobs from it and
posts results back. No browser-automation library: the page polls `api/next`, like any web client.

    with Browser(files, "harness.html?threads=2") as browser:   # waits for the page's `api/ready`
        header, body = browser.call({"op": "run", ...}, blob=tensor_bytes)
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from vitdeploy.errors import DeviceError, PageError

log = logging.getLogger(__name__)

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
                 ".wasm": "application/wasm", ".json": "application/json"}
# Flags that work on these machines (no GPU, no network, no display); a fresh profile per browser.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--enable-logging=stderr",
                  "--v=0")
NO_GPU_FLAGS = ("--disable-gpu",)
WEBGPU_FLAGS = ("--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-angle=vulkan")
POLL_S = 5.0  # how long the page's api/next waits for a job before it asks again
STARTUP_TIMEOUT_S = 180.0  # loading a ViT-B file in WebAssembly on 2 busy cores takes tens of seconds
STOP_TIMEOUT_S = 5.0
# A live page claims a job within POLL_S (it is always waiting in api/next between jobs); one that has not claimed
# it after two polls is hung or frozen (a script stuck in a loop, a tab the browser stopped) and never will.
CLAIM_TIMEOUT_S = 2 * POLL_S + 5.0
# The watchdog: a small process, in a session of its own (a signal to vitdeploy's group does not reach it), that
# reads a pipe from vitdeploy. End of file without "closed" first means vitdeploy ended without closing the browser
# (SIGKILL, SIGTERM, a crash): it ends the browser's process group and removes the profile folder.
WATCHDOG = """
import os, shutil, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
group, profile = int(sys.argv[1]), sys.argv[2]
if sys.stdin.buffer.read() != b"closed":
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
shutil.rmtree(profile, ignore_errors=True)
"""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("web server: " + format, *args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].lstrip("/") or "index.html"
        if path == "api/next":
            return self._send(*self.server.broker.next_job())
        if path.startswith("api/blob/"):
            return self._send(200, self.server.broker.blob(path.removeprefix("api/blob/")))
        source = self.server.files.get(path)
        if source is None:
            return self._send(404, b"not found")
        self._send(200, source if isinstance(source, bytes) else Path(source).read_bytes(),
                   CONTENT_TYPES.get(Path(path).suffix, "application/octet-stream"))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.lstrip("/")
        kind, _, job_id = path.removeprefix("api/").partition("/")
        self.server.broker.answer(kind, job_id, body, self.headers.get("X-Result"))
        self._send(204, b"")

    def _send(self, status: int, body: bytes, content_type: str = "application/octet-stream") -> None:
        self.send_response(status)
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


class _Broker:
    """Jobs for the page, and the futures their answers resolve."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[dict] = queue.Queue()
        self.blobs: dict[str, bytes] = {}
        self.pending: dict[str, concurrent.futures.Future] = {}
        self.ready: concurrent.futures.Future = concurrent.futures.Future()
        self.claimed: set[str] = set()  # the jobs the page has taken from api/next
        self._ids = itertools.count(1)

    def submit(self, job: dict, blob: bytes | None) -> tuple[str, concurrent.futures.Future]:
        job_id = str(next(self._ids))
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.pending[job_id] = future
        if blob is not None:
            self.blobs[job_id] = blob
        self.jobs.put({**job, "id": job_id})
        return job_id, future

    def next_job(self) -> tuple[int, bytes, str]:
        try:
            job = self.jobs.get(timeout=POLL_S)
        except queue.Empty:
            return 204, b"", "application/json"
        self.claimed.add(job["id"])
        return 200, json.dumps(job).encode(), "application/json"

    def blob(self, job_id: str) -> bytes:
        return self.blobs.get(job_id, b"")

    def answer(self, kind: str, job_id: str, body: bytes, header: str | None) -> None:
        if kind in ("ready", "fatal"):
            if not self.ready.done():
                if kind == "ready":
                    self.ready.set_result(json.loads(body))
                else:
                    self.ready.set_exception(PageError(json.loads(body).get("message", "the page failed")))
            return
        future = self.pending.pop(job_id, None)
        self.blobs.pop(job_id, None)
        if future is None:
            return
        if kind == "result":
            future.set_result((json.loads(header or "{}"), body))
        else:
            future.set_exception(PageError(json.loads(body).get("message", "the page failed")))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: Mapping[str, Path | bytes], broker: _Broker):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = dict(files)
        self.broker = broker

    def handle_error(self, request: object, client_address: object) -> None:
        """A page that went away mid-request (the browser closed, a renderer ended) resets its connection: that is
        how every run ends, not an error to print as a traceback. Anything else is logged as the server's error."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("web server: %s went away: %s", client_address, error)
        else:
            log.error("web server: a request from %s failed", client_address, exc_info=error)


class Browser:
    """One headless Chromium on one page of a loopback server that serves `files` (URL path -> file or bytes)."""

    def __init__(self, executable: str, files: Mapping[str, Path | bytes], page: str, gpu: bool = False,
                 startup_timeout: float = STARTUP_TIMEOUT_S):
        self.broker = _Broker()
        self.server = _Server(files, self.broker)
        threading.Thread(target=self.server.serve_forever, name="vitdeploy-web-server", daemon=True).start()
        self.profile = tempfile.mkdtemp(prefix="vitdeploy-chromium-")
        self.log_path = Path(self.profile) / "browser.log"
        url = f"http://127.0.0.1:{self.server.server_address[1]}/{page}"
        flags = (*CHROMIUM_FLAGS, *(WEBGPU_FLAGS if gpu else NO_GPU_FLAGS), f"--user-data-dir={self.profile}")
        with open(self.log_path, "wb") as browser_log:
            # Its own process group: close() ends the browser and every process it started (renderers, a
            # wrapper script's child), never anything else.
            self.process = subprocess.Popen([executable, *flags, url], stdin=subprocess.DEVNULL,
                                            stdout=browser_log, stderr=browser_log, start_new_session=True)
        self.watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(self.process.pid), self.profile],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self.info: dict = self._wait_ready(startup_timeout)
            # The page's renderer: when it ends (a crash, the OOM killer), the page can never answer again.
            self.renderers = [pid for pid, args in group_processes(self.process.pid) if "--type=renderer" in args]
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.broker.ready.result(timeout=0.2)
            except concurrent.futures.TimeoutError:
                if self.process.poll() is not None:
                    raise DeviceError(f"the browser exited ({self.process.returncode}) before the page was ready: "
                                      f"{self.log_tail()}") from None
        raise DeviceError(f"the page was not ready after {timeout:.0f} s: {self.log_tail()}")

    def call(self, job: dict, blob: bytes | None = None, timeout: float | None = None) -> tuple[dict, bytes]:
        """Run one job on the page; its header and binary body. PageError when the page reports an error."""
        job_id, future = self.broker.submit(job, blob)
        submitted = time.monotonic()
        deadline = None if timeout is None else submitted + timeout
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if self.process.poll() is not None:
                    raise DeviceError(f"the browser exited ({self.process.returncode}): {self.log_tail()}") from None
                if self.renderers and not any(_alive(pid) for pid in self.renderers):
                    raise DeviceError(f"the page's renderer process ended (crashed or killed) during a "
                                      f"{job.get('op')} job: {self.log_tail()}") from None
                if job_id not in self.broker.claimed and time.monotonic() - submitted > CLAIM_TIMEOUT_S:
                    raise DeviceError(f"the page stopped asking for work: a {job.get('op')} job waited "
                                      f"{CLAIM_TIMEOUT_S:.0f} s unclaimed (its script is hung or the browser froze "
                                      f"it): {self.log_tail()}") from None
                if deadline is not None and time.monotonic() > deadline:
                    raise DeviceError(f"the page did not answer a {job.get('op')} job in {timeout:.0f} s") from None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no browser log)"
        return " / ".join(text[-lines:]) or "(the browser said nothing)"

    def close(self) -> None:
        if getattr(self, "process", None) is not None:
            self.broker.jobs.put({"op": "stop", "id": "0"})
            _end_group(self.process)
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.profile, ignore_errors=True)
        if getattr(self, "watchdog", None) is not None and self.watchdog.poll() is None:
            try:
                self.watchdog.communicate(b"closed", timeout=STOP_TIMEOUT_S)  # the browser is gone: it only exits
            except (subprocess.TimeoutExpired, OSError):
                self.watchdog.kill()
                self.watchdog.wait()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _end_group(process: subprocess.Popen) -> None:
    """SIGTERM to the browser's process group, then SIGKILL to whatever of it is left. The browser is reaped only
    at the end, so that its pid (the group's id) cannot be reused by another process in between."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
        time.sleep(0.05)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # renderers and helpers that outlived the browser
    except ProcessLookupError:
        pass
    process.wait()


def group_processes(group: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes in process group `group` (Linux /proc; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")))
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def page_files(assets: Path, dist: Path, model: Path | bytes, names: tuple[str, ...]) -> dict[str, Path | bytes]:
    """The URL layout every page uses (the runtime's and the folder `vitdeploy web` writes): the page and its
    module at the root, onnxruntime-web under ort/, the model as model.onnx."""
    files: dict[str, Path | bytes] = {name: assets / name for name in os.listdir(assets)}
    files.update({f"ort/{name}": dist / name for name in names})
    files["model.onnx"] = model
    return files
