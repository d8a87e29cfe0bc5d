"""Read a page's text in a headless Chromium while it runs, over the DevTools protocol on a pipe.

`--dump-dom` reads a page when its *virtual* time budget runs out, and WebAssembly compiling in worker threads does
not hold virtual time back: on a busy machine the dump comes before the model has loaded, whatever the budget. This
polls in real time instead. `--remote-debugging-pipe` makes Chromium read commands on fd 3 and write answers on fd 4,
each a JSON object ended by a NUL byte; the standard library is enough to speak it.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


class DevToolsError(RuntimeError):
    """Chromium answered a command with an error."""


class DevToolsPage:
    """One page at `url` in a fresh Chromium; `text(js)` evaluates an expression in it and returns its value."""

    def __init__(self, browser: str, url: str, profile: Path) -> None:
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()
        # Above fd 10 so that placing them at 3 and 4 in the child cannot overwrite one with the other.
        child_ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_read, answers_write)]
        os.close(commands_read)
        os.close(answers_write)

        # A Python trampoline puts them at 3 and 4 and execs Chromium (preexec_fn is unsafe beside threads).
        trampoline = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); " \
                     "os.execv(sys.argv[3], sys.argv[3:])"
        self._process = subprocess.Popen(
            [sys.executable, "-c", trampoline, *map(str, child_ends), browser, *FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=child_ends)
        for fd in child_ends:
            os.close(fd)
        self._ids = itertools.count(1)
        self._buffer = b""
        try:
            target = self._send("Target.createTarget", {"url": url})["targetId"]
            self._session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        except BaseException:
            self.close()
            raise

    def text(self, expression: str) -> str:
        answer = self._send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                            session=self._session)
        return str(answer["result"].get("value"))

    def wait_for(self, expression: str, wanted: str, timeout_s: float) -> str:
        """Poll `expression` until it contains `wanted` or `timeout_s` passes; returns the last value read."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = self.text(expression)
            except DevToolsError as error:
                if "execution context" not in str(error):
                    raise
                value = str(error)  # the page is still navigating
            if wanted in value or time.monotonic() > deadline:
                return value
            time.sleep(0.25)

    def _send(self, method: str, params: dict, session: str | None = None, timeout_s: float = 60.0) -> dict:
        message_id = next(self._ids)
        message = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") != message_id:
                    continue  # an event, or the answer to another command
                if "error" in answer:
                    raise DevToolsError(f"DevTools {method}: {answer['error']}")
                return answer["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                raise TimeoutError(f"DevTools {method}: no answer in {timeout_s:.0f} s")
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed the DevTools pipe (exit code {self._process.poll()})")
            self._buffer += chunk

    def close(self) -> None:
        for fd in (self._commands, self._answers):
            os.close(fd)
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> DevToolsPage:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
