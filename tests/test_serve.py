"""`vitdeploy serve` end to end on loopback: Triton's own client against it, the image endpoint against predict,
16 concurrent clients batched without a request lost, every bad input refused with a 4xx while the server keeps
serving, and Ctrl-C / SIGTERM draining requests in flight before exiting 0."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import encoded, png_header_only, running_server, smooth_rgb, without_modules
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.errors import EXIT_BAD_INPUT
from vitdeploy.serving.protocol import HEADER_LENGTH, build_infer_request, parse_infer_response

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

REPO = Path(__file__).resolve().parents[1]
MAX_BATCH = 8
MAX_BODY_MB = 0.25  # 262144 bytes: a tiny model's largest request is 8 x 3 x 16 x 16 x 4 = 24576 bytes
DEADLINE_S = 60  # bounds every wait on the server; no test measures time


@pytest.fixture(scope="module")
def server(tiny_onnx: Path):
    """One in-process server on an ephemeral loopback port for the module, stopped at the end."""
    with running_server(tiny_onnx, DEADLINE_S, max_batch_size=MAX_BATCH, max_queue_delay_ms=20,
                        max_body_mb=MAX_BODY_MB) as prepared:
        yield prepared


@pytest.fixture(scope="module")
def session(tiny_onnx: Path):
    from vitdeploy.runtimes.ort import make_session

    return make_session(tiny_onnx, device="cpu", threads=1)[0]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (w, h, fmt) in enumerate([(64, 48, "PNG"), (50, 80, "JPEG"), (33, 33, "WEBP"), (120, 40, "PNG")]):
        path = folder / f"img{i}.{fmt.lower()}"
        smooth_rgb(w, h, seed=i).save(path, fmt)
        paths.append(path)
    return paths


def hostport(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def request(server, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*hostport(server), timeout=DEADLINE_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def stats(server) -> dict[str, Any]:
    return stats_of(server, "tiny")


def stats_of(server, name: str) -> dict[str, Any]:
    status, _, body = request(server, "GET", f"/v2/models/{name}/stats")
    assert status == 200
    return json.loads(body)["model_stats"][0]


def preprocessed(paths: list[Path], tiny_onnx: Path) -> np.ndarray:
    from vitdeploy.prediction.local import load_model_input
    from vitdeploy.runtimes import read_model_info

    spec = read_model_info(tiny_onnx).preprocess
    return np.stack([load_model_input(p, spec) for p in paths])


def predict_rows(paths: list[Path], tiny_onnx: Path) -> list[dict]:
    import vitdeploy

    return vitdeploy.predict(paths, model=tiny_onnx, device="cpu", threads=1, top_k=3).rows


# ------------------------------------------------------------------------------------- Triton's client


def test_tritons_client_sees_a_live_ready_server_and_the_model_metadata(server) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    assert not client.is_model_ready("other")
    client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritons_client_infer_gives_the_logits_of_run_batch_and_the_labels_of_predict(
        server, session, image_files: list[Path], tiny_onnx: Path, binary: bool) -> None:
    import tritonclient.http as triton

    from vitdeploy.runtimes.ort import run_batch

    batch = preprocessed(image_files, tiny_onnx)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    pixels = triton.InferInput("pixel_values", list(batch.shape), "FP32")
    pixels.set_data_from_numpy(batch, binary_data=binary)
    result = client.infer("tiny", [pixels], outputs=[triton.InferRequestedOutput("logits", binary_data=binary)])
    logits = result.as_numpy("logits")
    client.close()

    np.testing.assert_allclose(logits, run_batch(session, batch), rtol=0, atol=1e-5)
    labels = ["cat", "dog", "bird"]
    assert [labels[i] for i in logits.argmax(axis=1)] == [row["label"] for row in predict_rows(image_files, tiny_onnx)]


# ------------------------------------------------------------------------------------- image endpoint


def multipart(files: list[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{p.name}\"\r\n"
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + p.read_bytes() + b"\r\n" for p in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_the_image_endpoint_returns_the_labels_of_predict(server, image_files: list[Path], tiny_onnx: Path) -> None:
    expected = predict_rows(image_files, tiny_onnx)
    raw = []
    for path in image_files:
        status, _, body = request(server, "POST", "/classify?top_k=3", path.read_bytes())
        assert status == 200, body
        raw.extend(json.loads(body)["predictions"])
    form, content_type = multipart(image_files)
    status, _, body = request(server, "POST", "/classify?top_k=3", form, {"Content-Type": content_type})
    assert status == 200, body
    uploaded = json.loads(body)["predictions"]
    assert [row["path"] for row in uploaded] == [p.name for p in image_files]
    for rows in (raw, uploaded):
        assert [[t["label"] for t in r["top_k"]] for r in rows] == [[t["label"] for t in r["top_k"]] for r in expected]
        for got, want in zip(rows, expected):
            np.testing.assert_allclose([t["probability"] for t in got["top_k"]],
                                       [t["probability"] for t in want["top_k"]], atol=2e-6)


# --------------------------------------------------------------------------------------- concurrency


def test_sixteen_concurrent_clients_are_batched_and_no_request_is_lost(server, session) -> None:
    from vitdeploy.runtimes.ort import run_batch

    clients, per_client = 16, 4
    rng = np.random.default_rng(1)
    inputs = rng.standard_normal((clients, per_client, 1, 3, 16, 16)).astype(np.float32)
    answers: dict[tuple[int, int], np.ndarray] = {}
    failures: list[str] = []
    start = threading.Barrier(clients)
    before = stats(server)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(*hostport(server), timeout=DEADLINE_S)  # one keep-alive connection
        try:
            start.wait(DEADLINE_S)
            for r in range(per_client):
                body, headers = build_infer_request(inputs[c, r])
                conn.request("POST", "/v2/models/tiny/infer", body=body, headers=headers)
                response = conn.getresponse()
                content = response.read()
                if response.status != 200:
                    failures.append(f"client {c} request {r}: {response.status} {content[:200]!r}")
                    continue
                answers[(c, r)] = parse_infer_response(content, response.getheader(HEADER_LENGTH))
        except Exception as e:  # noqa: BLE001 - reported below, with the client that saw it
            failures.append(f"client {c}: {type(e).__name__}: {e}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    assert not failures, failures
    assert len(answers) == clients * per_client

    expected = run_batch(session, inputs.reshape(-1, 3, 16, 16)).reshape(clients, per_client, 1, 3)
    for (c, r), logits in answers.items():
        np.testing.assert_allclose(logits, expected[c, r], rtol=0, atol=1e-5)

    after = stats(server)
    answered = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    assert answered == clients * per_client and after["inference_stats"]["fail"] == before["inference_stats"]["fail"]
    ran = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    ran_before = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    new = {size: count - ran_before.get(size, 0) for size, count in ran.items() if count > ran_before.get(size, 0)}
    assert sum(size * count for size, count in new.items()) == clients * per_client
    assert max(new) > 1, f"no batching under {clients} concurrent clients: batch sizes run {new}"
    assert max(new) <= MAX_BATCH


def test_a_merged_file_is_served_like_any_other_and_batching_does_not_change_its_answers(
        tome_onnx: Path, image_files: list[Path]) -> None:
    """Token merging (model.tome.onnx) is an ordinary graph: concurrent requests batched together get each image's
    own answer (merging never mixes the images of a batch), and /classify gives predict's labels, on both runtimes."""
    import vitdeploy
    from vitdeploy.runtimes import open_runtime

    expected_rows = vitdeploy.predict(image_files, model=tome_onnx, device="cpu", threads=1, top_k=3).rows
    inputs = np.random.default_rng(2).standard_normal((12, 1, 3, 16, 16)).astype(np.float32)
    runtimes = ["ort"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for runtime in runtimes:
        alone = open_runtime(runtime, tome_onnx, "cpu")
        expected = np.concatenate([alone.run(x) for x in inputs])  # each image in a batch of its own
        with running_server(tome_onnx, DEADLINE_S, runtime=runtime, max_batch_size=MAX_BATCH,
                            max_queue_delay_ms=50) as served:
            def infer(i: int) -> np.ndarray:
                status, headers, content = request(served, "POST", "/v2/models/model.tome/infer",
                                                   *build_infer_request(inputs[i]))
                assert status == 200, content
                return parse_infer_response(content, headers.get(HEADER_LENGTH.lower()))

            with ThreadPoolExecutor(len(inputs)) as pool:
                answers = np.concatenate(list(pool.map(infer, range(len(inputs)))))
            ran = {b["batch_size"] for b in stats_of(served, "model.tome")["batch_stats"]}
            form, content_type = multipart(image_files)
            status, _, body = request(served, "POST", "/classify?top_k=3", form, {"Content-Type": content_type})
        # the same arithmetic on other batch sizes; merging picks the same tokens (fp32 tolerance)
        np.testing.assert_allclose(answers, expected, rtol=0, atol=1e-5, err_msg=runtime)
        assert max(ran) > 1, f"{runtime}: no request shared a batch: {ran}"
        assert status == 200, body
        rows = json.loads(body)["predictions"]
        assert [[t["label"] for t in r["top_k"]] for r in rows] == \
            [[t["label"] for t in r["top_k"]] for r in expected_rows], runtime


def test_the_default_largest_batch_is_the_one_measured_for_the_device(tiny_onnx: Path) -> None:
    from vitdeploy.requests import SERVE_MAX_BATCH

    largest = SERVE_MAX_BATCH["cpu"]
    with running_server(tiny_onnx, DEADLINE_S) as served:
        assert served.summary.max_batch_size == largest
        x = np.zeros((largest + 1, 3, 16, 16), np.float32)
        status, _, content = request(served, "POST", "/v2/models/tiny/infer", *build_infer_request(x))
        assert status == 400 and str(largest) in json.loads(content)["error"]
        status, _, _ = request(served, "POST", "/v2/models/tiny/infer", *build_infer_request(x[:largest]))
        assert status == 200


def test_a_file_whose_answers_depend_on_the_batch_is_served_one_request_at_a_time(dynamic_int8_onnx: Path) -> None:
    """Dynamic INT8 (ORT issue 10111): a batch's activation range scales every image in it, so batching requests
    would let one client's image change another's answer. serve serves the file, says so, and never batches it."""
    from builders import captured_notes

    from vitdeploy.runtimes import open_runtime

    session = open_runtime(None, dynamic_int8_onnx, "cpu", threads=1)
    rng = np.random.default_rng(3)
    inputs = rng.standard_normal((12, 1, 3, 16, 16)).astype(np.float32)
    inputs[::3] *= 8  # images with a wide range next to narrow ones: what moves the others' scales in one batch
    alone = [session.run(x) for x in inputs]
    together = session.run(inputs[:, 0])
    assert max(float(np.abs(together[i] - alone[i][0]).max()) for i in range(len(inputs))) > 1e-4  # it is batch-dependent
    with captured_notes() as notes, running_server(dynamic_int8_onnx, DEADLINE_S, max_batch_size=MAX_BATCH,
                                                   max_queue_delay_ms=50) as served:
        assert served.summary.batching.startswith("off: dynamic INT8")
        answers: dict[int, np.ndarray] = {}

        def client(i: int) -> None:
            body, headers = build_infer_request(inputs[i])
            status, response_headers, content = request(served, "POST", "/v2/models/tiny.int8/infer", body, headers)
            assert status == 200, content
            answers[i] = parse_infer_response(content, response_headers.get(HEADER_LENGTH.lower()))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE_S)
        ran = {b["batch_size"]: b["compute_infer"]["count"] for b in stats_of(served, "tiny.int8")["batch_stats"]}
    assert ran == {1: len(inputs)}
    for i, logits in answers.items():
        np.testing.assert_array_equal(logits, alone[i])  # exactly its answer alone, whoever else was waiting
    assert any("each request runs alone" in note for note in notes), notes


# ---------------------------------------------------------------------------------------- bad inputs


def _json_infer(**changes) -> bytes:
    tensor = {"name": "pixel_values", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.5] * 768}
    tensor.update(changes)
    return json.dumps({"inputs": [tensor]}).encode()


def _png_bytes() -> bytes:
    return encoded(smooth_rgb(40, 30))


def _bomb(tmp: Path) -> bytes:
    return png_header_only(tmp / "bomb.png", 20000, 20000).read_bytes()


INFER = "/v2/models/tiny/infer"
BINARY = build_infer_request(np.zeros((1, 3, 16, 16), np.float32))
BAD_REQUESTS = {
    "malformed JSON": ("POST", INFER, lambda tmp: b'{"inputs": [', {}, 400),
    "wrong shape": ("POST", INFER, lambda tmp: _json_infer(shape=[1, 3, 16, 15], data=[0.5] * 720), {}, 400),
    "batch over the limit": ("POST", INFER, lambda tmp: _json_infer(shape=[9, 3, 16, 16], data=[0.5] * 6912), {}, 400),
    "wrong datatype": ("POST", INFER, lambda tmp: _json_infer(datatype="INT64"), {}, 400),
    "wrong element count": ("POST", INFER, lambda tmp: _json_infer(data=[0.5] * 700), {}, 400),
    "not numbers": ("POST", INFER, lambda tmp: _json_infer(data=[None] * 768), {}, 400),
    "NaN": ("POST", INFER, lambda tmp: _json_infer(data=[float("nan")] * 768), {}, 400),
    "binary data cut short": ("POST", INFER, lambda tmp: BINARY[0][:-4], BINARY[1], 400),
    "unknown model": ("POST", "/v2/models/resnet/infer", lambda tmp: _json_infer(), {}, 404),
    "unknown version": ("GET", "/v2/models/tiny/versions/7", lambda tmp: b"", {}, 404),
    "empty body": ("POST", INFER, lambda tmp: b"", {}, 400),
    "empty upload": ("POST", "/classify", lambda tmp: b"", {}, 400),
    "truncated image": ("POST", "/classify", lambda tmp: _png_bytes()[:80], {}, 400),
    "not an image": ("POST", "/classify", lambda tmp: b"%PDF-1.7 not an image", {}, 400),
    "decompression bomb": ("POST", "/classify", _bomb, {}, 400),
    "bad top_k": ("POST", "/classify?top_k=-1", lambda tmp: _png_bytes(), {}, 400),
    "body over the limit": ("POST", INFER, lambda tmp: b"0" * (round(MAX_BODY_MB * 2**20) + 1), {}, 413),
    "unknown route": ("GET", "/v1/models/tiny", lambda tmp: b"", {}, 404),
    "wrong method": ("GET", INFER, lambda tmp: b"", {}, 405),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_every_bad_request_gets_a_4xx_with_a_json_error_and_the_server_keeps_serving(
        server, tmp_path: Path, case: str) -> None:
    method, path, make_body, headers, expected = BAD_REQUESTS[case]
    status, response_headers, body = request(server, method, path, make_body(tmp_path), headers)
    assert status == expected, body
    assert response_headers["content-type"] == "application/json"
    assert json.loads(body)["error"]
    if case == "decompression bomb":
        assert json.loads(body)["kind"] == "decompression_bomb"

    ok, _, answer = request(server, "POST", INFER, _json_infer())
    assert ok == 200 and len(json.loads(answer)["outputs"][0]["data"]) == 3


def test_clients_that_disconnect_mid_request_leave_the_server_serving(server) -> None:
    before = stats(server)["client_disconnects"]
    body, headers = build_infer_request(np.zeros((1, 3, 16, 16), np.float32))
    host, port = hostport(server)
    # 1. gone while sending the body
    with socket.create_connection((host, port), timeout=DEADLINE_S) as sock:
        head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(head.encode() + body[: len(body) // 2])
    # 2. gone while its request waits for the model
    with socket.create_connection((host, port), timeout=DEADLINE_S) as sock:
        sock.sendall(head.encode() + body)
    deadline = time.monotonic() + DEADLINE_S
    while stats(server)["client_disconnects"] == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stats(server)["client_disconnects"] == before + 1
    status, _, answer = request(server, "POST", INFER, _json_infer())
    assert status == 200, answer


# -------------------------------------------------------------------------------------- the command


def start_cli_server(tiny_onnx: Path, *args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitdeploy", "serve", str(tiny_onnx), "--port", "0", "--device", "cpu",
         "--threads", "1", *args],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # the first line names the URL; the loop ends if the process dies first
        if line.startswith("serving "):
            return proc, line.split(" on ")[1].split()[0]
    proc.kill()
    raise AssertionError(f"the server did not start: {proc.communicate(timeout=DEADLINE_S)}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_the_requests_in_flight_and_exits_0(tiny_onnx: Path, sig: signal.Signals) -> None:
    # A long queue delay keeps the requests waiting in the server when the signal arrives.
    proc, url = start_cli_server(tiny_onnx, "--max-batch-size", "8", "--max-queue-delay-ms", "1500")
    host, port = url.removeprefix("http://").rsplit(":", 1)
    fake = type("Server", (), {"url": url})()
    results: list[int] = []

    def client() -> None:
        status, _, _ = request(fake, "POST", INFER, _json_infer())
        results.append(status)

    try:
        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + DEADLINE_S
        while stats(fake)["pending_requests"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(sig)
        for t in threads:
            t.join(DEADLINE_S)
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert results == [200, 200]
    assert proc.returncode == 0, err
    assert "draining" in err and "stopped: 2 requests answered" in err and "Traceback" not in err


def test_an_unknown_runtime_exits_2_naming_the_supported_ones(tiny_onnx: Path) -> None:
    result = runner.invoke(app, ["serve", str(tiny_onnx), "--runtime", "tflite", "--port", "0"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "unknown runtime 'tflite'; choose from: ort, openvino, reference" in result.output


def test_the_server_runs_on_openvino_through_the_runtime_layer(tiny_onnx: Path, image_files: list[Path]) -> None:
    pytest.importorskip("openvino")
    body = image_files[0].read_bytes()
    labels = {}
    for name in ("ort", "openvino"):
        with running_server(tiny_onnx, DEADLINE_S, runtime=name) as served:
            status, _, answer = request(served, "POST", "/classify?top_k=3", body, {"content-type": "image/png"})
            assert status == 200
            row = json.loads(answer)["predictions"][0]
            assert row["runtime"] == name
            labels[name] = [t["label"] for t in row["top_k"]]
    assert labels["openvino"] == labels["ort"]


def test_a_port_in_use_exits_2(tiny_onnx: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", str(tiny_onnx), "--port", str(port), "--device", "cpu"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


@pytest.mark.slow
def test_serve_without_the_extra_says_how_to_install_it_and_predict_and_export_do_not_need_it(
        tiny_onnx: Path, tiny_bundle: Path, image_files: list[Path], tmp_path: Path) -> None:
    code = without_modules("starlette", "uvicorn", "python_multipart", "tritonclient", why="no [serve] extra")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    served = subprocess.run([sys.executable, "-c", code, "serve", str(tiny_onnx)], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=120)
    assert served.returncode == EXIT_BAD_INPUT, served.stderr
    assert 'pip install "vitdeploy[serve]"' in served.stderr and "Traceback" not in served.stderr
    predicted = subprocess.run([sys.executable, "-c", code, "predict", str(image_files[0]), "--model", str(tiny_onnx),
                                "--device", "cpu", "--format", "jsonl"], capture_output=True, text=True, cwd=tmp_path,
                               env=env, timeout=120)
    assert predicted.returncode == 0, predicted.stderr
    exported = subprocess.run([sys.executable, "-c", code, "export", str(tiny_bundle), "--out", str(tmp_path / "m.onnx"),
                               "--no-verify"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert exported.returncode == 0, exported.stderr


runner = CliRunner()
