"""What the web runtime needs on this machine: a headless Chromium, and onnxruntime-web's files from npm.

onnxruntime-web is pinned (ORT_WEB_VERSION) and installed with npm into a cache folder the first time it is needed;
nothing is ever fetched from a CDN at run time. The browser comes from the system (Debian:
`apt-get install chromium-headless-shell`), or from VITDEPLOY_BROWSER.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from vitdeploy.core.extras import MissingExtra

log = logging.getLogger(__name__)

ORT_WEB_VERSION = "1.31.1"
# The files a page needs: the ES module (WebAssembly + WebGPU through JSEP) and the WebAssembly build it loads.
ORT_WEB_FILES = ("ort.min.mjs", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm")
BROWSER_ENV = "VITDEPLOY_BROWSER"
# The binaries before the /usr/bin wrappers: Debian's wrapper scripts run the browser as their child (no exec).
BROWSER_CANDIDATES = ("/usr/lib/chromium/chromium-headless-shell", "/usr/lib/chromium/headless_shell",
                      "chromium-headless-shell", "/usr/lib/chromium/chromium", "chromium", "chromium-browser",
                      "google-chrome")
BROWSER_INSTALL = "apt-get install -y chromium-headless-shell"
NPM_INSTALL_TIMEOUT_S = 600


def cache_dir() -> Path:
    """Where onnxruntime-web is installed: $XDG_CACHE_HOME/vitdeploy/web/onnxruntime-web-<version>."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "vitdeploy" / "web" / f"onnxruntime-web-{ORT_WEB_VERSION}"


def npm_command() -> str:
    return f"npm install --prefix {cache_dir()} onnxruntime-web@{ORT_WEB_VERSION}"


def install_commands() -> str:
    return f"{BROWSER_INSTALL}; and node with npm (vitdeploy then runs `{npm_command()}` on first use)"


def find_browser() -> str | None:
    """The Chromium binary to drive: VITDEPLOY_BROWSER, else the first candidate found."""
    named = os.environ.get(BROWSER_ENV)
    if named:
        return named if Path(named).is_file() or shutil.which(named) else None
    for candidate in BROWSER_CANDIDATES:
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
    return None


def ort_web_dist() -> Path | None:
    """onnxruntime-web's dist folder in the cache, when every file a page needs is there."""
    dist = cache_dir() / "node_modules" / "onnxruntime-web" / "dist"
    return dist if all((dist / name).is_file() for name in ORT_WEB_FILES) else None


def missing_parts() -> list[str]:
    """What keeps the web runtime from running here (empty when nothing does): a browser, and onnxruntime-web or
    npm to install it."""
    missing = []
    if find_browser() is None:
        missing.append(f"a Chromium browser ({BROWSER_INSTALL}, or set {BROWSER_ENV})")
    if ort_web_dist() is None and shutil.which("npm") is None:
        missing.append(f"onnxruntime-web {ORT_WEB_VERSION} (not in {cache_dir()}, and no npm to install it)")
    return missing


def ensure_ort_web() -> Path:
    """onnxruntime-web's dist folder, installed with npm into the cache first when it is not there yet. The install
    goes to a temporary folder beside the cache, renamed into place once its files are checked."""
    dist = ort_web_dist()
    if dist is not None:
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise MissingExtra(f"the web runtime needs onnxruntime-web {ORT_WEB_VERSION}: install node and npm, "
                           f"then `{npm_command()}`")
    target = cache_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("installing onnxruntime-web %s into %s (once)", ORT_WEB_VERSION, target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".install-") as staging:
        command = [npm, "install", "--prefix", staging, "--no-audit", "--no-fund", f"onnxruntime-web@{ORT_WEB_VERSION}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=NPM_INSTALL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise MissingExtra(f"`{' '.join(command)}` did not finish in {NPM_INSTALL_TIMEOUT_S} s") from None
        staged = Path(staging) / "node_modules" / "onnxruntime-web" / "dist"
        if done.returncode != 0 or not all((staged / name).is_file() for name in ORT_WEB_FILES):
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise MissingExtra(f"could not install onnxruntime-web {ORT_WEB_VERSION} with npm (exit "
                               f"{done.returncode}): {' / '.join(tail)}; run `{npm_command()}` by hand")
        if not target.exists():
            os.replace(staging, target)
            Path(staging).mkdir()  # TemporaryDirectory removes what is at its path on exit
    dist = ort_web_dist()
    if dist is None:
        raise MissingExtra(f"{target} holds no complete onnxruntime-web {ORT_WEB_VERSION}: remove it and retry")
    return dist
