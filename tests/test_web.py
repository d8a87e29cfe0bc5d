"""The web runtime (onnxruntime-web in headless Chromium) and `vitdeploy web`: parity with PyTorch and ONNX Runtime,
the page's JavaScript preprocessing against images.preprocess on real photos, predict through the page, the
folder's contents, and what is refused. Tests that need a browser skip, with the reason, where there is none."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from builders import encoded
from devtools_page import DevToolsPage
from PIL import Image
from typer.testing import CliRunner

from vitdeploy import runtimes
from vitdeploy.cli import app
from vitdeploy.core import images
from vitdeploy.core.config import PreprocessSpec
from vitdeploy.core.extras import MissingExtra
from vitdeploy.errors import ConfigError, DeviceError, ModelFileError
from vitdeploy.runtimes import open_runtime
from vitdeploy.runtimes.web import limits as web_limits
from vitdeploy.runtimes.web import session as web_runtime
from vitdeploy.runtimes.web import toolchain

runner = CliRunner()
WEB_STATUS = runtimes.runtime_status("web")
# The tests never install anything: .ci/run does (apt-get, npm); where it could not, they skip and say why.
NO_ORT_WEB = f"onnxruntime-web is not in {toolchain.cache_dir()}: {toolchain.npm_command()}"
WEB_READY = WEB_STATUS.installed and toolchain.ort_web_dist() is not None
needs_browser = pytest.mark.skipif(not WEB_READY, reason=f"no web runtime here: {WEB_STATUS.reason or NO_ORT_WEB}")
needs_ort_web = pytest.mark.skipif(toolchain.ort_web_dist() is None, reason=NO_ORT_WEB)
# The preprocessing cases: both resize modes, both filters (and nearest), at ViT and digits scales.
SPECS = [PreprocessSpec(image_size=size, resize_size=resize, interpolation=interpolation, resize_mode=mode)
         for mode in ("shorter_side", "stretch") for interpolation in ("bilinear", "bicubic")
         for size, resize in ((224, 256), (16, 18))] + [PreprocessSpec(image_size=224, resize_size=256,
                                                                     interpolation="nearest")]


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """scikit-learn's two real JPEG photos, PNG copies of them, and PNG crops of other sizes and aspect ratios."""
    datasets = pytest.importorskip("sklearn.datasets")
    folder = Path(datasets.__file__).parent / "images"
    found: dict[str, bytes] = {}
    for path in sorted(folder.glob("*.jpg")):
        found[path.name] = path.read_bytes()
        rgb = Image.open(path).convert("RGB")
        found[f"{path.stem}.png"] = encoded(rgb)
        found[f"{path.stem}-portrait.png"] = encoded(rgb.crop((101, 7, 101 + 233, 7 + 377)))
    assert len(found) == 6, "scikit-learn ships two photos"
    return found


@pytest.fixture(scope="module")
def web_session(tiny_onnx):
    if not WEB_READY:
        pytest.skip(f"no web runtime here: {WEB_STATUS.reason or NO_ORT_WEB}")
    session = open_runtime("web", tiny_onnx, device="wasm", threads=1)
    yield session
    session.close()


def _python_crop(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    resize = images.stretched_center_crop if spec.resize_mode == "stretch" else images.resized_center_crop
    return np.asarray(resize(image, spec.resize_size, spec.image_size, spec.interpolation))


# --- no browser needed ---


def test_without_a_browser_the_runtime_is_not_installed_and_says_how(tiny_onnx, monkeypatch):
    monkeypatch.setattr(toolchain, "find_browser", lambda: None)
    with runtimes.assume(runtimes.machine.probe(runtimes.runtime_specs())):  # this machine, probed without it
        status = runtimes.runtime_status("web")
        assert not status.installed and not status.usable
        assert "apt-get install -y chromium-headless-shell" in status.reason
        assert "apt-get install" in runtimes.install_command("web")
        with pytest.raises(MissingExtra, match="chromium-headless-shell"):
            open_runtime("web", tiny_onnx)
        with pytest.raises(MissingExtra, match="chromium-headless-shell"):
            runtimes.select_runtimes(("web",))


def test_the_web_runtime_runs_only_when_named(monkeypatch):
    asked: list[str] = []
    real = runtimes.registry.runtime_status
    monkeypatch.setattr(runtimes.registry, "runtime_status", lambda name: asked.append(name) or real(name))
    assert "web" not in runtimes.select_runtimes(None)
    assert "web" not in asked  # not even asked about (where a GPU exists, that would start a browser)


def test_webgpu_is_not_usable_without_a_gpu(monkeypatch):
    monkeypatch.setattr(web_runtime, "GPU_DEVICE_NODES", ("/nonexistent/gpu",))
    web_runtime.webgpu_usable.cache_clear()
    try:
        assert not web_runtime.webgpu_usable()
    finally:
        web_runtime.webgpu_usable.cache_clear()


def _without_a_browser(monkeypatch) -> None:
    from vitdeploy.runtimes import registry

    missing = dataclasses.replace(WEB_STATUS, installed=False, usable=False, reason="no browser (faked)")
    real = registry.runtime_status
    monkeypatch.setattr(registry, "runtime_status", lambda name: missing if name == "web" else real(name))


@pytest.fixture(params=["as installed here", "not installed"])
def web_install(request, monkeypatch) -> None:
    """The refusals below hold whether or not a browser is installed: a file the web runtime could never run is
    refused before the install is asked for."""
    if request.param == "not installed":
        _without_a_browser(monkeypatch)


def test_a_runnable_file_without_a_browser_gets_the_install_command(tiny_onnx, monkeypatch):
    _without_a_browser(monkeypatch)
    with pytest.raises(MissingExtra, match="no browser"):
        open_runtime("web", tiny_onnx)


@pytest.mark.usefixtures("web_install")
def test_a_file_over_the_size_limit_is_refused_before_a_browser_starts(tiny_onnx, monkeypatch):
    monkeypatch.setattr(web_limits, "WEB_MAX_MODEL_BYTES", 1000)
    with pytest.raises(ModelFileError, match=r"onnxruntime-web loads at most"):
        open_runtime("web", tiny_onnx)


def _with_export_record(tiny_onnx: Path, folder: Path, **record: object) -> Path:
    import onnx

    from vitdeploy.files.onnx_file import META_EXPORT, set_metadata

    proto = onnx.load(tiny_onnx)
    current = json.loads({p.key: p.value for p in proto.metadata_props}.get(META_EXPORT, "{}"))
    set_metadata(proto, {META_EXPORT: {**current, **record}})
    path = folder / "variant.onnx"
    onnx.save(proto, path)
    return path


@pytest.mark.usefixtures("web_install")
def test_variants_it_cannot_run_are_refused(tiny_onnx, tmp_path):
    ov = _with_export_record(tiny_onnx, tmp_path, runtime="openvino", variant="ov-bf16", inference_precision="bf16")
    with pytest.raises(ConfigError, match="--runtime openvino"):
        open_runtime("web", ov)
    fp16 = _with_export_record(tiny_onnx, tmp_path, precision="fp16")
    with pytest.raises(ConfigError, match="fp16: the web runtime runs fp32, int8 files on wasm"):
        open_runtime("web", fp16, device="wasm")
    result = runner.invoke(app, ["web", str(fp16), "-o", str(tmp_path / "web")])
    assert result.exit_code == 2 and not (tmp_path / "web").exists()


@pytest.mark.usefixtures("web_install")
def test_a_file_with_external_data_is_refused(tiny_onnx, tmp_path):
    import onnx

    proto = onnx.load(tiny_onnx)
    onnx.save(proto, tmp_path / "split.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="split.onnx.data", size_threshold=0)
    with pytest.raises(ModelFileError, match="external data"):
        open_runtime("web", tmp_path / "split.onnx")


@needs_ort_web
def test_vitdeploy_web_writes_the_folder(tiny_onnx, tmp_path):
    out = tmp_path / "site"
    result = runner.invoke(app, ["web", str(tiny_onnx), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    expected = {"index.html", "vitdeploy.js", "serve.py", "README.md", "model.onnx", "onnx/model.onnx", "config.json",
                "preprocessor_config.json", ".vitdeploy", *(f"ort/{name}" for name in toolchain.ORT_WEB_FILES)}
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == expected
    assert (out / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "bird"} and config["model_type"] == "vit"
    assert config["transformers.js_config"]["dtype"] == "fp32"  # not the q8 file transformers.js looks for
    # transformers.js hands the decoded image over as it is; the model's graph does THE preprocessing
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert not any(processor[step] for step in ("do_resize", "do_center_crop", "do_rescale", "do_normalize",
                                                "do_convert_rgb", "do_pad"))
    raw = open_runtime("ort", out / "onnx" / "model.onnx", device="cpu")
    assert raw.takes_images and raw.input.name == "pixel_values" and raw.input.elem_type == "float32"
    assert raw.info.image_input["layout"] == "chw" and raw.labels == ["cat", "dog", "bird"]
    readme = (out / "README.md").read_text()
    assert "Cross-Origin-Opener-Policy: same-origin" in readme and "Cross-Origin-Embedder-Policy: require-corp" in readme
    assert "cdn" not in (out / "vitdeploy.js").read_text().lower()
    # a second run replaces its own folder; a folder it did not write is refused
    assert runner.invoke(app, ["web", str(tiny_onnx), "-o", str(out)]).exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = runner.invoke(app, ["web", str(tiny_onnx), "-o", str(other)])
    assert refused.exit_code == 2 and "keep.txt" in refused.output and not (other / "index.html").exists()
    # --force writes the folder's files beside the others, which are kept
    assert runner.invoke(app, ["web", str(tiny_onnx), "-o", str(other), "--force"]).exit_code == 0
    assert (other / "keep.txt").read_text() == "mine" and (other / "ort" / "ort.min.mjs").is_file()


@needs_ort_web
def test_a_merged_file_gets_a_folder_like_any_other_with_predicts_answers(tome_onnx, photos, tmp_path):
    """Token merging (model.tome.onnx) is an ordinary fp32 graph: `vitdeploy web` takes it, and the folder's
    image-input graph (onnx/model.onnx, the preprocessing inside) answers as the merged file does on predict's
    preprocessing."""
    out = tmp_path / "site"
    result = runner.invoke(app, ["web", str(tome_onnx), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").read_bytes() == tome_onnx.read_bytes()
    assert json.loads((out / "config.json").read_text())["id2label"] == {str(i): str(i) for i in range(10)}
    merged = open_runtime("ort", tome_onnx, device="cpu")
    raw = open_runtime("ort", out / "onnx" / "model.onnx", device="cpu")
    assert raw.takes_images
    for name, data in photos.items():
        decoded = images.decode_image(name, data=data)
        expected = merged.run(images.preprocess(decoded, merged.preprocess)[None])
        got = raw.run(np.asarray(decoded.convert("RGB"), np.float32).transpose(2, 0, 1)[None])  # as transformers.js
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=name)


@needs_browser
@pytest.mark.slow
def test_a_merged_file_runs_in_the_browser_as_onnx_runtime_runs_it(tome_onnx, photos, tmp_path):
    """The web runtime (a batch, each image its own answer) and the written folder's vitdeploy.js on a photo."""
    import onnxruntime as ort

    import vitdeploy
    from vitdeploy.runtimes.web.driver import Browser

    cpu = ort.InferenceSession(str(tome_onnx), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((5, 3, 16, 16)).astype(np.float32)
    alone = np.concatenate([cpu.run(None, {"pixel_values": x[i:i + 1]})[0] for i in range(len(x))])
    with open_runtime("web", tome_onnx, device="wasm", threads=1) as session:
        np.testing.assert_allclose(session.run(x), alone, atol=1e-5)
    folder = vitdeploy.web(tome_onnx, out=tmp_path / "site")
    files = {str(p.relative_to(folder.path)): p for p in folder.path.rglob("*") if p.is_file()}
    files.update({name: web_runtime.ASSETS / name for name in ("harness.html", "harness.js")})
    with Browser(toolchain.find_browser(), files, "harness.html?threads=1") as browser:
        _, body = browser.call({"op": "predict", "spec": None}, photos["china.jpg"])
    logits = np.frombuffer(body, np.float32)[-10:]
    spec = PreprocessSpec.from_dict(folder_spec(tome_onnx))
    python = images.preprocess(images.decode_image("china.jpg", data=photos["china.jpg"]), spec)
    expected = cpu.run(None, {"pixel_values": python[None]})[0][0]
    assert np.abs(logits - expected).max() <= 1e-5


@pytest.mark.parametrize("mode, interpolation, crop, processor, size", [
    ("shorter_side", "bicubic", True, "CLIPImageProcessor", {"shortest_edge": 256}),
    ("stretch", "bilinear", True, "DeiTImageProcessor", {"height": 256, "width": 256}),
])
def test_preprocessor_config_states_every_step(mode, interpolation, crop, processor, size):
    from vitdeploy.serving.web_folder import preprocessor_config

    spec = PreprocessSpec(image_size=224, resize_size=256, interpolation=interpolation, resize_mode=mode)
    config = preprocessor_config(spec)
    assert config["image_processor_type"] == processor and config["size"] == size
    assert config["do_center_crop"] is crop and config["resample"] == {"bilinear": 2, "bicubic": 3}[interpolation]
    assert config["rescale_factor"] == 1 / 255 and config["do_normalize"] and not config["do_flip_channel_order"]


# --- in the browser ---


@needs_browser
@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_the_browser_gives_ort_logits(tiny_onnx, threads):
    import onnxruntime as ort

    x = np.random.default_rng(threads).standard_normal((7, 3, 16, 16)).astype(np.float32)
    expected = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]
    with open_runtime("web", tiny_onnx, device="wasm", threads=threads) as session:
        assert session.threads == threads and session.browser.info["isolated"]
        assert session.describe() == {"runtime": "web", "device": "wasm", "provider": "wasm", "precision": "fp32"}
        got = session.run(x)
        assert got.shape == (7, 3)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(session.run(x[:1]), expected[:1], atol=1e-5)
        assert session.info.labels == ["cat", "dog", "bird"]
        group = session.browser.process.pid
    assert _group_ends(group), "closing must end the browser and every process it started"


@needs_browser
@pytest.mark.slow
def test_verify_runtime_web_is_within_1e_4_of_pytorch(tiny_onnx):
    import vitdeploy

    report = vitdeploy.verify(tiny_onnx, bundle=tiny_onnx.parent / "tiny-bundle", batch_sizes=(1, 7),
                              runtime="web")
    assert report.passed
    web = [case for case in report.cases if case.target.startswith("web:")]
    assert {case.batch_size for case in web} == {1, 7}
    assert all(case.max_abs <= 1e-4 and case.top1_agreement == 1.0 for case in web)


@needs_browser
@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.resize_mode}-{s.interpolation}-{s.image_size}")
def test_the_pages_preprocessing_is_images_preprocess(web_session, photos, spec):
    """The contract: the same pixels as images.preprocess (measured: identical), on JPEG and PNG photos."""
    for name, data in photos.items():
        tensor, crop = web_session.preprocess_image(data, spec.to_dict())
        decoded = images.decode_image(name, data=data)
        expected = _python_crop(decoded, spec)
        difference = np.abs(crop.astype(int) - expected.astype(int)).max()
        # PNG pixels are the file's; a JPEG's are its decoder's (Chromium's libjpeg-turbo and Pillow's agree here)
        assert difference <= (0 if name.endswith(".png") else 1), f"{name}: max pixel difference {difference}"
        if difference == 0:
            np.testing.assert_array_equal(tensor, images.preprocess(decoded, spec))


@needs_browser
def test_the_page_converts_colour_profiles_as_the_python_decoder(web_session, photos):
    """An Adobe RGB photo: the page (Chromium's skcms) and images.decode_image (LittleCMS) both convert it to sRGB."""
    from icc_profiles import rgb_profile

    spec = PreprocessSpec(image_size=64, resize_size=64, interpolation="bilinear", resize_mode="stretch")
    buffer = io.BytesIO()
    photo = Image.open(io.BytesIO(photos["china.jpg"])).convert("RGB")
    photo.save(buffer, "PNG", icc_profile=rgb_profile())
    _, crop = web_session.preprocess_image(buffer.getvalue(), spec.to_dict())
    expected = _python_crop(images.decode_image("adobe.png", data=buffer.getvalue()), spec)
    unconverted = _python_crop(photo, spec)
    assert np.abs(unconverted.astype(int) - expected.astype(int)).max() > 10  # the profile matters
    assert np.abs(crop.astype(int) - expected.astype(int)).max() <= 1  # skcms and LittleCMS round apart


@needs_browser
@pytest.mark.slow
def test_prediction_through_the_page_agrees_with_vitdeploy_predict(web_session, tiny_onnx, photos, tmp_path):
    import vitdeploy

    for name, data in photos.items():
        (tmp_path / name).write_bytes(data)
    summary = vitdeploy.predict([str(tmp_path)], model=tiny_onnx, top_k=1)
    by_name = {Path(row["path"]).name: row for row in summary.rows}
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    spec = web_session.info.preprocess
    for name, data in photos.items():
        pixels, logits = web_session.predict_image(data)
        python = images.preprocess(images.decode_image(name, data=data), spec)
        np.testing.assert_array_equal(pixels, python)
        expected = session.run(None, {"pixel_values": python[None]})[0][0]
        assert np.abs(logits - expected).max() <= 1e-5
        assert web_session.info.labels[int(logits.argmax())] == by_name[name]["label"]


@needs_browser
@pytest.mark.slow
def test_predict_runtime_web_on_the_cli(tiny_onnx, photos, tmp_path):
    for name, data in photos.items():
        (tmp_path / name).write_bytes(data)
    result = runner.invoke(app, ["predict", str(tmp_path), "--model", str(tiny_onnx), "--runtime", "web",
                                 "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(photos) and all(row["runtime"] == "web" and row["ok"] for row in rows)


def _custom_op_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 16, 16])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    node = helper.make_node("NotAnOp", ["pixel_values"], ["logits"], domain="vitdeploy.test")
    graph = helper.make_graph([node], "custom", [x], [y])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("vitdeploy.test", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


@needs_browser
@pytest.mark.slow
def test_an_op_onnxruntime_web_lacks_is_named_with_exit_code_2(tmp_path):
    path = tmp_path / "custom.onnx"
    path.write_bytes(_custom_op_model())
    with pytest.raises(ModelFileError, match=r"has no op NotAnOp \(domain vitdeploy.test\)") as error:
        open_runtime("web", path)
    assert error.value.exit_code == 2


@needs_browser
@pytest.mark.slow
def test_webgpu_asked_for_without_a_gpu_is_a_device_error(tiny_onnx):
    if "webgpu" in WEB_STATUS.devices:
        pytest.skip("WebGPU works here")
    with pytest.raises(DeviceError, match="WebGPU is not usable"):
        open_runtime("web", tiny_onnx, device="webgpu")


@needs_browser
@pytest.mark.slow
def test_the_written_folder_runs_in_the_browser(tiny_onnx, photos, tmp_path):
    """The folder's own vitdeploy.js, onnxruntime-web files and model, driven by the runtime's page."""
    import vitdeploy
    from vitdeploy.runtimes.web.driver import Browser

    folder = vitdeploy.web(tiny_onnx, out=tmp_path / "site")
    files = {str(p.relative_to(folder.path)): p for p in folder.path.rglob("*") if p.is_file()}
    files.update({name: web_runtime.ASSETS / name for name in ("harness.html", "harness.js")})
    with Browser(toolchain.find_browser(), files, "harness.html?threads=2") as browser:
        header, body = browser.call({"op": "predict", "spec": None}, photos["china.jpg"])
    logits = np.frombuffer(body, np.float32)[-3:]
    spec = PreprocessSpec.from_dict(json.loads(json.dumps(folder_spec(tiny_onnx))))
    python = images.preprocess(images.decode_image("china.jpg", data=photos["china.jpg"]), spec)
    import onnxruntime as ort

    expected = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(
        None, {"pixel_values": python[None]})[0][0]
    assert header["decoded"] == [640, 427] and np.abs(logits - expected).max() <= 1e-5


def folder_spec(path: Path) -> dict:
    from vitdeploy.files.onnx_file import META_PREPROCESS
    from vitdeploy.files.onnx_wire import metadata_props_from_bytes

    return json.loads(metadata_props_from_bytes(path.read_bytes())[META_PREPROCESS])


@needs_browser
@pytest.mark.slow
def test_the_folders_page_loads_the_model_behind_its_serve_py(tiny_onnx, tmp_path):
    """index.html, served by the folder's own serve.py (with the isolation headers), loads the model on 2 threads."""
    import socket
    import subprocess
    import sys

    import vitdeploy

    folder = vitdeploy.web(tiny_onnx, out=tmp_path / "site")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(folder.path / "serve.py"), str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    loaded = "3 classes, wasm, 2 thread(s)"
    try:
        _wait_for_port(port)
        with DevToolsPage(toolchain.find_browser(), f"http://127.0.0.1:{port}/", tmp_path / "profile") as page:
            # Real time, not --dump-dom's virtual time: WebAssembly compiling on a busy machine does not count there.
            shown = page.wait_for("document.getElementById('note').textContent + ' | '"
                                  " + document.getElementById('error').textContent", loaded, timeout_s=180)
    finally:
        server.terminate()
        server.wait(10)
    assert shown.startswith(loaded + " | "), shown


def _wait_for_port(port: int, seconds: float = 30.0) -> None:
    import socket
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _group_ends(group: int, seconds: float = 15.0) -> bool:
    """Whether process group `group` is gone within `seconds` (SIGKILLed members take a moment to be reaped)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
