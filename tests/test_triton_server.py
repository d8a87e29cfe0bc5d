"""A real Triton server loads what `vitdeploy triton --backend python` writes and answers as `vitdeploy predict` does.

The server is tritonserver 2.51 with its Python backend, from the nvidia-pytriton wheel, installed by .ci/run (with
--no-deps, beside the environment: its requirements pin numpy < 2) into $XDG_CACHE_HOME/vitdeploy/tritonserver, or
wherever VITDEPLOY_TRITONSERVER points. Where it is not installed or cannot start here, the test skips and says why.
Nothing is installed at run time. It runs on loopback, on free ports, and is stopped (SIGTERM) with every Python
backend stub it started.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from builders import smooth_rgb

from vitdeploy.prediction.local import load_model_input, open_model
from vitdeploy.requests import TritonOptions
from vitdeploy.serving.triton import write_triton_repository

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
INSTALL = Path(os.environ.get("VITDEPLOY_TRITONSERVER") or CACHE / "vitdeploy" / "tritonserver")
SERVER_HOME = INSTALL / "pytriton" / "tritonserver"
STUB = SERVER_HOME / "backends" / "python" / "triton_python_backend_stub"
START_DEADLINE_S = 180  # a cold start on 2 busy cores: the server, then the stub importing vitdeploy and ONNX Runtime
# The queue delay of the test's repository: long enough that concurrent requests share batches on a loaded machine.
QUEUE_DELAY_MS = 50


def server_problem() -> str | None:
    """Why the real server cannot run here, or None."""
    if not (SERVER_HOME / "bin" / "tritonserver").is_file():
        return (f"no tritonserver under {INSTALL}: `pip install --no-deps --target {INSTALL} nvidia-pytriton==0.7.0` "
                "(as .ci/run does)")
    if not STUB.is_file():
        version = "%d.%d" % sys.version_info[:2]
        return (f"no Python backend stub at {STUB}: copy it from "
                f"{SERVER_HOME}/python_backend_stubs/{version}/ (as .ci/run does)")
    linked = subprocess.run(["ldd", str(STUB)], capture_output=True, text=True).stdout
    missing = [line.split()[0] for line in linked.splitlines() if "not found" in line]
    if missing:
        return f"the Python backend stub cannot load {', '.join(missing)} (Debian: apt-get install libpython3.X)"
    return None


PROBLEM = server_problem()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the Python backend's stubs, for the server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@dataclass
class RunningTriton:
    process: subprocess.Popen
    http_url: str
    grpc_url: str
    log: Path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("triton-images")
    paths = []
    for i in range(6):
        path = folder / f"img{i}.{'jpg' if i % 2 else 'png'}"
        smooth_rgb(30 + 7 * i, 24 + 5 * i, seed=i).save(path)
        paths.append(path)
    return paths


# The models the test repository holds: name -> (file, the runtime model.py opens it with). "tiny" as written (the
# file's own runtime, ONNX Runtime), "tiny-openvino" the same file with config.pbtxt's runtime parameter set to
# OpenVINO, "tome" the token merging variant (model.tome.onnx), an ordinary graph served like any other.
MODELS = {"tiny": ("tiny", "ort"), "tome": ("tome", "ort")}
if importlib.util.find_spec("openvino"):
    MODELS["tiny-openvino"] = ("tiny", "openvino")


@pytest.fixture(scope="module")
def repository(tiny_onnx: Path, tome_onnx: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton-python-repo") / "repo"
    files = {"tiny": tiny_onnx, "tome": tome_onnx}
    for name, (file, runtime) in MODELS.items():
        write_triton_repository(files[file], out, TritonOptions(name=name, backend="python", max_batch_size=8,
                                                                max_queue_delay_ms=QUEUE_DELAY_MS))
        config = out / name / "config.pbtxt"
        config.write_text(config.read_text().replace('string_value: "ort"', f'string_value: "{runtime}"'))
    return out


@pytest.fixture(scope="module")
def triton(repository: Path, tmp_path_factory) -> Iterator[RunningTriton]:
    import tritonclient.http as httpclient

    http_port, grpc_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [str(SERVER_HOME / "bin" / "tritonserver"), "--model-repository", str(repository),
             "--backend-directory", str(SERVER_HOME / "backends"), "--http-address", "127.0.0.1",
             "--http-port", str(http_port), "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port),
             "--allow-metrics", "false"],
            stdout=sink, stderr=subprocess.STDOUT)
    running = RunningTriton(process, f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log)
    client = httpclient.InferenceServerClient(running.http_url)
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if all(client.is_model_ready(name) for name in MODELS):
                    break
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        else:
            errors = [line for line in log.read_text().splitlines() if line.startswith("E") or "rror" in line]
            pytest.fail(f"tritonserver did not get the model ready (exit code {process.poll()}):\n"
                        + "\n".join(errors)[-4000:])
        client.close()  # an open keep-alive connection would hold the server's shutdown for its exit timeout
        yield running
    finally:  # the last test stops it and checks how; this is for a run that failed before
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def reference(model: Path, images: list[Path], runtime: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, logits) as `vitdeploy predict [--runtime R]` computes them: its decoder and its session."""
    session = open_model(model, runtime, "cpu", None)
    pixels = np.stack([load_model_input(path, session.preprocess) for path in images])
    return pixels, session.run(pixels)


def predicted_labels(model: Path, images: list[Path], tmp_path: Path) -> list[str]:
    out = tmp_path / "rows.jsonl"
    subprocess.run([sys.executable, "-m", "vitdeploy", "predict", *map(str, images), "--model", str(model),
                    "--format", "jsonl", "-o", str(out)], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    rows = {Path(row["path"]).name: row for row in map(json.loads, out.read_text().splitlines())}
    return [rows[path.name]["label"] for path in images]


def test_the_real_server_answers_as_predict_over_http_and_grpc(triton: RunningTriton, repository: Path,
                                                               images: list[Path], tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(triton.http_url)
    grpc = grpcclient.InferenceServerClient(triton.grpc_url)
    predicted_by_file: dict[str, list[str]] = {}
    for name, (file, runtime) in MODELS.items():
        model = repository / name / "1" / "model.onnx"
        labels = (repository / name / "labels.txt").read_text().splitlines()
        if file not in predicted_by_file:
            predicted_by_file[file] = predicted_labels(model, images, tmp_path)
        predicted = predicted_by_file[file]
        pixels, expected = reference(model, images, runtime)  # predict's answer on the runtime model.py uses
        assert [labels[i] for i in expected.argmax(axis=1)] == predicted
        metadata = http.get_model_metadata(name)
        assert metadata["platform"] == "python" and metadata["inputs"][0]["shape"] == [-1, *pixels.shape[1:]]
        for module, client in ((httpclient, http), (grpcclient, grpc)):
            for batch in (pixels[:1], pixels):  # one image, and every image in one request
                tensor = module.InferInput("pixel_values", list(batch.shape), "FP32")
                tensor.set_data_from_numpy(batch)
                got = client.infer(name, [tensor]).as_numpy("logits")
                want = expected[: len(batch)]
                assert got.shape == want.shape
                assert [labels[i] for i in got.argmax(axis=1)] == predicted[: len(batch)]
                assert np.abs(got - want).max() <= 1e-5, (name, module.__name__)
    http.close()
    grpc.close()
    assert "Traceback" not in triton.log.read_text()  # nothing went wrong quietly inside the stub


@pytest.mark.parametrize("name", ["tiny", "tome"])
def test_concurrent_requests_are_batched_by_the_server(triton: RunningTriton, repository: Path,
                                                       images: list[Path], name: str) -> None:
    """Requests batched together get their own answers: for the merged file too (merging never mixes images)."""
    import tritonclient.http as httpclient

    pixels, expected = reference(repository / name / "1" / "model.onnx", images)

    def one(i: int) -> float:
        client = httpclient.InferenceServerClient(triton.http_url)
        tensor = httpclient.InferInput("pixel_values", [1, *pixels.shape[1:]], "FP32")
        tensor.set_data_from_numpy(pixels[i % len(pixels)][None])
        got = client.infer(name, [tensor]).as_numpy("logits")
        client.close()
        return float(np.abs(got[0] - expected[i % len(pixels)]).max())

    with ThreadPoolExecutor(16) as pool:
        differences = list(pool.map(one, range(48)))
    assert max(differences) <= 1e-5  # a request's answer does not depend on the batch it shared
    client = httpclient.InferenceServerClient(triton.http_url)
    stats = client.get_inference_statistics(name)["model_stats"][0]
    client.close()
    batches = {entry["batch_size"]: entry["compute_infer"]["count"] for entry in stats["batch_stats"]}
    assert max(batches) > 1, f"no batch of more than one request: {batches}"
    assert int(stats["inference_stats"]["fail"]["count"]) == 0


def test_the_server_stops_cleanly_with_its_stubs(triton: RunningTriton) -> None:
    """Run last in this module: stops the module's server itself, then checks what is left."""
    process = triton.process
    stubs = children(process.pid)
    assert stubs, "the Python backend runs the model in a stub process of the server"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in stubs):
        time.sleep(0.1)
    left = [pid for pid in stubs if Path(f"/proc/{pid}").exists()
            and "triton" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    assert left == [], f"stub processes left after the server stopped: {left}"
