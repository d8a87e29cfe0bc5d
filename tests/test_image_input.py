"""export --image-input: THE preprocessing inside the graph (exporting/image_input.py), against images.preprocess."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitdeploy.core.config import PreprocessSpec
from vitdeploy.core.images import preprocess, to_rgb

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

# width x height: shrinking and enlarging, portrait and landscape, odd sizes, the crop's own size, extreme ratios
SIZES = ((20, 20), (33, 64), (64, 64), (73, 73), (640, 480), (480, 640), (100, 37), (17, 500), (301, 299), (81, 80))


def _levels(got: np.ndarray, expected: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """|got - expected| in levels of 1/255 (both normalized, in spec.channel_order)."""
    std = np.asarray(spec.std, np.float32)[::-1 if spec.channel_order == "BGR" else 1]
    return np.abs(got - expected) * std[:, None, None] * 255


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("resize_mode", ["shorter_side", "stretch"])
def test_the_graph_preprocesses_as_images_preprocess(interpolation, resize_mode):
    from vitdeploy.exporting.image_input import preprocessing_model

    spec = PreprocessSpec(image_size=32, resize_size=37, interpolation=interpolation, resize_mode=resize_mode)
    hwc, chw = _session(preprocessing_model(spec, "hwc")), _session(preprocessing_model(spec, "chw", dtype="float32"))
    planar = _session(preprocessing_model(spec, "chw"))  # export --image-layout nchw: uint8 channels first
    narrow = _session(preprocessing_model(spec, "chw", wide=False, dtype="float32"))  # float32 weights: the web file
    rng = np.random.default_rng(0)
    differing = total = narrow_differing = 0
    for width, height in SIZES:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)  # noise: the hardest case for rounding
        expected = preprocess(Image.fromarray(image), spec)
        from_hwc = hwc.run(None, {"image": image[None]})[0][0]
        from_chw = chw.run(None, {"pixel_values": image.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
        np.testing.assert_array_equal(from_hwc, from_chw)
        np.testing.assert_array_equal(from_hwc, planar.run(None, {"image": image.transpose(2, 0, 1)[None].copy()})[0][0])
        levels = _levels(from_hwc, expected, spec)
        from_narrow = narrow.run(None, {"pixel_values": image.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
        narrow_levels = _levels(from_narrow, expected, spec)
        if interpolation != "nearest":  # float32 positions drift from Pillow's float64 ones: the web folder keeps
            assert narrow_levels.max() <= 1.0 + 1e-3, (width, height)  # nearest models' own file
            narrow_differing += int((narrow_levels > 0.5).sum())
        # ONNX Runtime computes Pillow's float64 weights; vitdeploy's own box shortcut rounds a few values the
        # other way (measured: a handful per 100,000): one level at most, in a tiny share of the values
        assert levels.max() <= 1.0 + 1e-3, (width, height)
        differing += int((levels > 0.5).sum())
        total += levels.size
    assert differing <= total * 1e-3
    # float32 positions and weights: measured 0 to 0.5% of the values one level apart (noise, the worst case)
    assert narrow_differing <= total * 1e-2, narrow_differing / total


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "RGB"])
def test_grey_and_transparency_as_to_rgb(mode):
    """1-4 channels: grey copied to RGB, transparency composited on white, as predict's decoder does."""
    from vitdeploy.exporting.image_input import preprocessing_model

    spec = PreprocessSpec(image_size=16, resize_size=18)
    session = _session(preprocessing_model(spec, "hwc"))
    rng = np.random.default_rng(1)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    raw = rng.integers(0, 256, (40, 50, channels), dtype=np.uint8)
    image = Image.fromarray(raw[..., 0] if channels == 1 else raw, mode)
    got = session.run(None, {"image": raw[None]})[0][0]
    assert _levels(got, preprocess(to_rgb(image), spec), spec).max() <= 1.0 + 1e-3


def test_bgr_and_a_batch_of_one_size():
    from vitdeploy.exporting.image_input import preprocessing_model

    spec = PreprocessSpec(image_size=16, resize_size=20, channel_order="BGR", mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1))
    session = _session(preprocessing_model(spec, "hwc"))
    images = np.random.default_rng(2).integers(0, 256, (3, 30, 45, 3), dtype=np.uint8)
    got = session.run(None, {"image": images})[0]
    for image, row in zip(images, got):
        assert _levels(row, preprocess(Image.fromarray(image), spec), spec).max() <= 1.0 + 1e-3


@pytest.mark.slow
def test_export_image_input_writes_a_gated_raw_image_file(digits_bundle, tmp_path):
    """The variant is built, judged on raw held-out images (and their pixels at other sizes), written, and runs an
    image of a size the model was never trained at as model.onnx runs THE preprocessing's tensor."""
    import vitdeploy
    from vitdeploy.runtimes import open_runtime

    result = vitdeploy.export(digits_bundle, out=tmp_path / "model.onnx", image_input=True)
    [variant] = result.variants
    assert variant.variant == "image" and variant.written and variant.path == tmp_path / "model.image.onnx"
    gate = variant.gate.summary()
    assert gate["max_pixel_levels"] <= 1.0 + 1e-3 and gate["pixel_images"] > gate["samples"]["real"]
    assert variant.gate.top1_agreement >= 0.99
    raw = open_runtime("ort", variant.path, device="cpu")
    plain = open_runtime("ort", tmp_path / "model.onnx", device="cpu")
    assert raw.takes_images and not plain.takes_images and raw.input.name == "image"
    image = np.random.default_rng(3).integers(0, 256, (77, 123, 3), dtype=np.uint8)
    expected = plain.run(preprocess(Image.fromarray(image), plain.preprocess)[None])
    np.testing.assert_allclose(raw.run(image[None]), expected, atol=1e-4)


# --- served: the v2 protocol with raw uint8 images, and the image endpoint


@pytest.fixture(scope="module")
def tiny_image_onnx(tiny_onnx, tmp_path_factory):
    """The tiny model as a raw-image file (its graph built as export --image-input builds it, without the gate)."""
    import onnx

    from vitdeploy.exporting.image_input import with_image_input
    from vitdeploy.runtimes import read_model_info

    path = tmp_path_factory.mktemp("image") / "tiny.image.onnx"
    onnx.save(with_image_input(onnx.load(tiny_onnx), read_model_info(tiny_onnx).preprocess), path)
    return path


def test_a_v2_server_answers_raw_uint8_images_of_any_size_as_the_image_endpoint(tiny_onnx, tiny_image_onnx,
                                                                                 tmp_path):
    """Triton's client sends the decoded image (sizes the 16 px model never saw); the answers are model.onnx's on
    THE preprocessing's tensor, and the image endpoint of the raw-image model gives predict's labels."""
    pytest.importorskip("uvicorn")
    triton = pytest.importorskip("tritonclient.http")
    from builders import running_server, smooth_rgb

    import vitdeploy
    from vitdeploy.runtimes import open_runtime

    plain = open_runtime("ort", tiny_onnx, device="cpu")
    with running_server(tiny_image_onnx, 60, max_batch_size=4) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        metadata = client.get_model_metadata("tiny.image")
        assert metadata["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, -1]}]
        for width, height in ((37, 123), (640, 480), (5, 7)):
            image = np.asarray(smooth_rgb(width, height, seed=width))
            tensor = triton.InferInput("image", [1, height, width, 3], "UINT8")
            tensor.set_data_from_numpy(image[None], binary_data=True)
            logits = client.infer("tiny.image", [tensor]).as_numpy("logits")
            expected = plain.run(preprocess(Image.fromarray(image), plain.preprocess)[None])
            np.testing.assert_allclose(logits, expected, atol=1e-4)
        wrong = triton.InferInput("image", [1, 8, 8, 5], "UINT8")
        wrong.set_data_from_numpy(np.zeros((1, 8, 8, 5), np.uint8))
        with pytest.raises(Exception, match="1 to 4 channels"):
            client.infer("tiny.image", [wrong])
        client.close()
        files = []
        for i, (width, height) in enumerate(((64, 48), (50, 80))):
            files.append(tmp_path / f"img{i}.png")
            smooth_rgb(width, height, seed=i).save(files[-1])
        import http.client
        import json

        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        for path, row in zip(files, vitdeploy.predict(files, model=tiny_onnx, top_k=3).rows):
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("POST", "/classify?top_k=3", body=path.read_bytes())
            [got] = json.loads(conn.getresponse().read())["predictions"]
            conn.close()
            assert [t["label"] for t in got["top_k"]] == [t["label"] for t in row["top_k"]]
            np.testing.assert_allclose([t["probability"] for t in got["top_k"]],
                                       [t["probability"] for t in row["top_k"]], atol=1e-4)


def test_a_triton_repository_carries_the_raw_image_file(tiny_image_onnx, tmp_path):
    """`vitdeploy triton model.image.onnx`: UINT8 images of any size in config.pbtxt (checked against the graph as
    Triton loads it), and a README whose client sends a decoded image."""
    from typer.testing import CliRunner

    from vitdeploy.cli import app
    from vitdeploy.serving.repository_check import check_model_folder, parse_pbtxt

    out = tmp_path / "repo"
    result = CliRunner().invoke(app, ["triton", str(tiny_image_onnx), "--out", str(out), "--name", "tiny_image"])
    assert result.exit_code == 0, result.output
    config = parse_pbtxt((out / "tiny_image" / "config.pbtxt").read_text())
    assert config["input"] == [{"name": "image", "data_type": "TYPE_UINT8", "dims": [-1, -1, -1]}]
    check_model_folder(out / "tiny_image")
    readme = (out / "README.md").read_text()
    assert 'httpclient.InferInput("image", list(batch.shape), "UINT8")' in readme
    refused = CliRunner().invoke(app, ["triton", str(tiny_image_onnx), "--out", str(tmp_path / "gpu"),
                                       "--device", "gpu", "--tensorrt", "fp16"])
    assert refused.exit_code == 2 and "any size" in refused.output


# --- channels first: export --image-layout nchw


@pytest.fixture(scope="module")
def tiny_planar_onnx(tiny_onnx, tmp_path_factory):
    """The tiny model as a channels-first raw-image file (uint8 [batch, channels, height, width])."""
    import onnx

    from vitdeploy.exporting.image_input import with_image_input
    from vitdeploy.runtimes import read_model_info

    path = tmp_path_factory.mktemp("planar") / "tiny.image.onnx"
    onnx.save(with_image_input(onnx.load(tiny_onnx), read_model_info(tiny_onnx).preprocess, "chw"), path)
    return path


@pytest.mark.parametrize("runtime", ["ort", "openvino"])
def test_a_channels_first_file_answers_as_the_channels_last_one(tiny_image_onnx, tiny_planar_onnx, runtime):
    pytest.importorskip({"ort": "onnxruntime", "openvino": "openvino"}[runtime])
    from vitdeploy.runtimes import open_runtime

    last, first = open_runtime(runtime, tiny_image_onnx, device="cpu"), open_runtime(runtime, tiny_planar_onnx,
                                                                                     device="cpu")
    assert first.takes_images and first.info.image_input["layout"] == "chw"
    assert first.info.image_input["dtype"] == "uint8" and first.input.name == "image"
    if runtime == "ort":  # OpenVINO names no dynamic axis
        assert first.input_shape[1] == "channels"
    for channels in (1, 3, 4):
        images = np.random.default_rng(channels).integers(0, 256, (2, 45, 70, channels), dtype=np.uint8)
        np.testing.assert_array_equal(first.run(images.transpose(0, 3, 1, 2)), last.run(images))


def test_check_pixels_passes_the_channels_first_graph(tiny_onnx):
    import onnx

    from vitdeploy.exporting.image_input import check_pixels, with_image_input
    from vitdeploy.runtimes import read_model_info

    spec = read_model_info(tiny_onnx).preprocess
    assert check_pixels(with_image_input(onnx.load(tiny_onnx), spec, "chw"), spec, "chw") <= 1.0 + 1e-3


def test_the_export_gate_feeds_channels_first_images(tiny_onnx):
    """The gate's held-out images are HWC; a channels-first file gets them transposed (its pixels then match)."""
    import onnx

    from vitdeploy.exporting.gate import AccuracyGate, GateData, judge_image_input
    from vitdeploy.exporting.image_input import with_image_input, with_pixels_output
    from vitdeploy.runtimes import open_runtime, read_model_info

    spec = read_model_info(tiny_onnx).preprocess
    plain = open_runtime("ort", tiny_onnx, device="cpu")
    images = [np.asarray(Image.fromarray(np.random.default_rng(i).integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)))
              for i in range(3)]
    inputs = np.stack([preprocess(Image.fromarray(im), spec) for im in images])
    data = GateData(inputs=inputs, labels=np.zeros(3, np.int64), reference=plain.run(inputs), source="noise",
                    images=images)
    planar = with_pixels_output(with_image_input(onnx.load(tiny_onnx), spec, "chw")).SerializeToString()
    result = judge_image_input("image", planar, data, AccuracyGate(), spec)
    assert result.max_pixel_levels <= 1.0 + 1e-3 and result.top1_agreement == 1.0


def test_image_layout_is_refused_without_image_input_or_when_unknown(tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from vitdeploy.cli import app

    alone = CliRunner().invoke(app, ["export", str(tiny_bundle), "-o", str(tmp_path / "a.onnx"),
                                     "--image-layout", "nchw"])
    assert alone.exit_code == 2 and "add --image-input" in alone.output
    unknown = CliRunner().invoke(app, ["export", str(tiny_bundle), "-o", str(tmp_path / "b.onnx"), "--image-input",
                                       "--image-layout", "chwn"])
    assert unknown.exit_code == 2 and "nhwc, nchw" in unknown.output
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


def test_a_v2_server_and_triton_take_channels_first_images(tiny_onnx, tiny_planar_onnx, tmp_path):
    """The v2 server checks the channels on axis 1 and the image endpoint transposes; Triton's README says so."""
    pytest.importorskip("uvicorn")
    from builders import running_server, smooth_rgb
    from typer.testing import CliRunner

    import vitdeploy
    from vitdeploy.cli import app
    from vitdeploy.runtimes import open_runtime
    from vitdeploy.serving.protocol import build_infer_request

    plain = open_runtime("ort", tiny_onnx, device="cpu")
    image = np.asarray(smooth_rgb(37, 23, seed=1))
    expected = plain.run(preprocess(Image.fromarray(image), plain.preprocess)[None])
    with running_server(tiny_planar_onnx, 60, max_batch_size=2) as server:
        import http.client
        import json

        host, port = server.url.removeprefix("http://").rsplit(":", 1)

        def post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.status, response.read()
            conn.close()
            return answer

        status, answer = post("/v2/models/tiny.image/infer", *build_infer_request(
            image.transpose(2, 0, 1)[None], binary=False))
        assert status == 200, answer
        np.testing.assert_allclose(json.loads(answer)["outputs"][0]["data"], expected.ravel(), atol=1e-4)
        status, answer = post("/v2/models/tiny.image/infer", *build_infer_request(image[None], binary=False))
        assert status == 400 and b"[N, channels, height, width]" in answer  # channels last: 23 channels on axis 1
        smooth_rgb(37, 23, seed=1).save(tmp_path / "a.png")
        status, answer = post("/classify?top_k=2", (tmp_path / "a.png").read_bytes(), {})
        [row] = vitdeploy.predict([tmp_path / "a.png"], model=tiny_onnx, top_k=2).rows
        assert status == 200 and [t["label"] for t in json.loads(answer)["predictions"][0]["top_k"]] == [
            t["label"] for t in row["top_k"]]
    result = CliRunner().invoke(app, ["triton", str(tiny_planar_onnx), "--out", str(tmp_path / "repo"),
                                      "--name", "planar"])
    assert result.exit_code == 0, result.output
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert "UINT8 [batch, channels, height, width]" in readme and "batch.transpose(0, 3, 1, 2)" in readme


@pytest.mark.slow
def test_export_image_layout_nchw_writes_a_gated_channels_first_file(tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from vitdeploy.cli import app
    from vitdeploy.runtimes import open_runtime

    result = CliRunner().invoke(app, ["export", str(tiny_bundle), "-o", str(tmp_path / "model.onnx"),
                                      "--image-input", "--image-layout", "nchw"])
    assert result.exit_code == 0, result.output
    session = open_runtime("ort", tmp_path / "model.image.onnx", device="cpu")
    assert session.info.image_input["layout"] == "chw" and session.input_shape[1] == "channels"
    assert session.info.parity["max_pixel_levels"] <= 1.0 + 1e-3


def test_commands_that_feed_tensors_refuse_a_channels_first_file(tiny_planar_onnx, tmp_path):
    from builders import smooth_rgb
    from typer.testing import CliRunner

    from vitdeploy.cli import app

    smooth_rgb(30, 20, seed=0).save(tmp_path / "a.png")
    predicted = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), "--model", str(tiny_planar_onnx)])
    assert predicted.exit_code == 2 and "takes decoded images" in predicted.output
    verified = CliRunner().invoke(app, ["verify", str(tiny_planar_onnx)])
    assert verified.exit_code == 2 and "takes decoded images" in verified.output


# --- transformers.js in Node on `vitdeploy web`'s folder


TRANSFORMERS_JS = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitdeploy" / "web"
                   / "transformers-js-4.3.2")  # where .ci/run installs it
NODE_CLASSIFY = """
import { pipeline, env } from '@huggingface/transformers';
import path from 'node:path';
const [folder, ...files] = process.argv.slice(2);
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(folder)) + '/';
const classify = await pipeline('image-classification', path.basename(folder));
const rows = [];
for (const file of files) rows.push(Object.fromEntries((await classify(file, { top_k: 100 })).map((t) => [t.label, t.score])));
console.log(JSON.stringify(rows));
"""


@pytest.mark.skipif(not (TRANSFORMERS_JS / "node_modules" / "@huggingface" / "transformers").is_dir()
                    or shutil.which("node") is None,
                    reason=f"transformers.js is not installed in {TRANSFORMERS_JS} (ONNXRUNTIME_NODE_INSTALL=skip "
                           f"npm install --prefix {TRANSFORMERS_JS} @huggingface/transformers@4.3.2)")
@pytest.mark.slow
def test_transformers_js_in_node_answers_as_vitdeploy_predict(tiny_onnx, tmp_path):
    """pipeline('image-classification', folder) with no options, offline, on PNG, JPEG, grey and RGBA files of
    sizes the 16 px model never saw: the labels and probabilities of `vitdeploy predict`."""
    import json
    import subprocess

    from builders import smooth_rgb

    import vitdeploy

    folder = tmp_path / "site"
    vitdeploy.web(tiny_onnx, out=folder)
    files = []
    for i, (width, height, mode, suffix) in enumerate([(64, 48, "RGB", "png"), (23, 31, "RGB", "jpg"),
                                                        (300, 90, "L", "png"), (41, 77, "RGBA", "png")]):
        image = smooth_rgb(width, height, seed=i)
        if mode == "RGBA":
            image.putalpha(Image.fromarray(np.linspace(60, 255, width * height).reshape(height, width).astype(np.uint8)))
        files.append(tmp_path / f"image{i}.{suffix}")
        image.convert(mode).save(files[-1])
    script = TRANSFORMERS_JS / "vitdeploy_test_classify.mjs"  # beside its node_modules, so the import resolves
    script.write_text(NODE_CLASSIFY)
    out = subprocess.run(["node", str(script), str(folder), *map(str, files)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    node_rows = json.loads(out.stdout.strip().splitlines()[-1])
    for row, expected in zip(node_rows, vitdeploy.predict(files, model=tiny_onnx, top_k=3).rows):
        assert max(row, key=row.get) == expected["label"]
        # one level of 1/255 in a few pixels (float32 weights in the web file) moves probabilities by ~1e-4 here
        assert max(abs(row[t["label"]] - t["probability"]) for t in expected["top_k"]) <= 2e-3


def test_commands_that_feed_tensors_refuse_a_raw_image_file(tiny_image_onnx, tmp_path):
    """predict would hand it preprocessed tensors: refused with exit code 2, naming the file to give instead."""
    from builders import smooth_rgb
    from typer.testing import CliRunner

    from vitdeploy.cli import app

    smooth_rgb(30, 20, seed=0).save(tmp_path / "a.png")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), "--model", str(tiny_image_onnx)])
    assert result.exit_code == 2 and "takes decoded images" in result.output


@pytest.mark.slow
def test_an_imported_bundle_without_held_out_images_gets_its_raw_image_file(tiny_bundle, tmp_path):
    """No recorded dataset (an imported checkpoint): judged on seeded smooth images of 11 sizes instead."""
    import vitdeploy

    result = vitdeploy.export(tiny_bundle, out=tmp_path / "model.onnx", image_input=True)
    [variant] = result.variants
    assert variant.written and "seeded smooth random images" in variant.gate.image_source
    assert variant.gate.summary()["max_pixel_levels"] <= 1.0 + 1e-3


@pytest.mark.parametrize("runtime", ["openvino", "reference"])
def test_every_runtime_runs_the_raw_image_file(tiny_onnx, tiny_image_onnx, runtime):
    """The same answers as model.onnx on THE preprocessing's tensor (OpenVINO computes the weights in float32)."""
    pytest.importorskip({"openvino": "openvino", "reference": "onnx"}[runtime])
    from vitdeploy.runtimes import open_runtime

    plain = open_runtime("ort", tiny_onnx, device="cpu")
    image = np.random.default_rng(5).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    expected = plain.run(preprocess(Image.fromarray(image), plain.preprocess)[None])
    session = open_runtime(runtime, tiny_image_onnx, device="cpu")
    assert session.takes_images
    np.testing.assert_allclose(session.run(image[None]), expected, atol=2e-3)


@pytest.mark.slow
def test_a_real_triton_answers_raw_uint8_images_as_predict(tiny_onnx, tiny_image_onnx, tmp_path):
    """tritonserver 2.51 (Python backend, as tests/test_triton_server.py runs it) serves the raw-image file: decoded
    images of sizes the 16 px model never saw, one per request and two of one size in one request."""
    import signal
    import subprocess
    import time

    import test_triton_server as real
    import tritonclient.http as httpclient
    from builders import smooth_rgb

    from vitdeploy.requests import TritonOptions
    from vitdeploy.runtimes import open_runtime
    from vitdeploy.serving.triton import write_triton_repository

    if real.PROBLEM:
        pytest.skip(real.PROBLEM)
    write_triton_repository(tiny_image_onnx, tmp_path / "repo", TritonOptions(name="raw", backend="python"))
    port = real.free_port()
    with (tmp_path / "triton.log").open("w") as log:
        process = subprocess.Popen(
            [str(real.SERVER_HOME / "bin" / "tritonserver"), "--model-repository", str(tmp_path / "repo"),
             "--backend-directory", str(real.SERVER_HOME / "backends"), "--http-address", "127.0.0.1",
             "--http-port", str(port), "--grpc-port", str(real.free_port()), "--allow-metrics", "false"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + real.START_DEADLINE_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if client.is_model_ready("raw"):
                    break
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        assert client.is_model_ready("raw"), (tmp_path / "triton.log").read_text()[-3000:]
        plain = open_runtime("ort", tiny_onnx, device="cpu")
        for width, height, count in ((130, 90, 1), (41, 23, 2)):
            batch = np.stack([np.asarray(smooth_rgb(width, height, seed=i)) for i in range(count)])
            tensor = httpclient.InferInput("image", list(batch.shape), "UINT8")
            tensor.set_data_from_numpy(batch)
            got = client.infer("raw", [tensor]).as_numpy("logits")
            want = plain.run(np.stack([preprocess(Image.fromarray(image), plain.preprocess) for image in batch]))
            np.testing.assert_allclose(got, want, atol=1e-4)
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
