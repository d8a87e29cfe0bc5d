"""vitdeploy verify: the parity report, where parity breaks, and refusing files that cannot be trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import TINY, corrupt_block_weight, make_bundle
from PIL import Image
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.core.config import ModelConfig, parse_batch_sizes
from vitdeploy.errors import ConfigError, ModelFileError
from vitdeploy.exporting import exporter as export
from vitdeploy.files import onnx_file
from vitdeploy.requests import VerifyRequest
from vitdeploy.runtimes import ort as runtime
from vitdeploy.verification import parity
from vitdeploy.verification import run as verify

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A bundle and its export, shared read-only by the tests below (copy before changing anything)."""
    bundle = make_bundle(tmp_path_factory.mktemp("verify") / "bundle")
    return bundle, export.export_onnx(bundle).path


def invoke_verify(*args: str):
    return runner.invoke(app, ["verify", *args])


def test_verify_reports_every_batch_size_and_the_providers_sessions_really_got(exported):
    bundle, path = exported
    result = invoke_verify(str(path), "--batch-sizes", "1,7,32", "--runtime", "ort", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["failures"] == []
    assert report["providers"] == [p for p in runtime.usable_providers()[::-1]]  # cpu first, cuda when real
    assert {(c["target"], c["batch_size"]) for c in report["cases"]} == {
        (p, b) for p in report["providers"] for b in (1, 7, 32)
    }
    for case in report["cases"]:
        assert case["samples"] == 32  # no dataset recorded: random inputs, topped up to fill the largest batch
        assert case["max_abs"] <= 1e-4 and case["top1_agreement"] == 1.0 and case["min_cosine"] > 0.9999
        assert case["batch_invariance_max_abs"] <= 1e-4
    assert report["tolerance"] == {"atol": 1e-4, "rtol": 0.0, "min_top1_agreement": 1.0, "real_images_only": False}
    names = [d["name"] for d in report["layers"][runtime.CPU]]
    assert names == ["embed", "block_0", "block_1", "norm", "logits"]
    assert report["inputs"]["random"] == 32 and report["inputs"]["real"] == 0
    assert any("random inputs only" in note for note in report["notes"])


def test_bundle_defaults_to_the_files_folder(exported):
    _, path = exported
    result = invoke_verify(str(path), "--batch-sizes", "1,3")
    assert result.exit_code == 0, result.output
    assert "parity ok" in result.output


@pytest.mark.parametrize("block", [0, 1])
def test_a_corrupted_weight_fails_and_names_the_block(exported, tmp_path, block):
    bundle, path = exported
    bad = tmp_path / "corrupted.onnx"
    corrupt_block_weight(path, bad, bundle, block)
    result = invoke_verify(str(bad), "--bundle", str(bundle), "--json")
    assert result.exit_code == 3
    report = json.loads(result.stdout)
    assert not report["passed"]
    # Every runtime run (ORT, and OpenVINO and the reference where installed) traces it to the same block.
    assert report["first_divergence"][runtime.CPU] == f"block_{block}"
    assert set(report["first_divergence"].values()) == {f"block_{block}"}
    assert set(report["first_divergence"]) == set(report["providers"])
    layers = {d["name"]: d["passed"] for d in report["layers"][runtime.CPU]}
    assert all(layers[f"block_{i}"] for i in range(block)) and layers["embed"]  # before the corruption: equal
    assert f"first diverging intermediate: block_{block}" in result.output  # the human lines on stderr too


def test_held_out_real_images_are_used_and_scored(tmp_path):
    from vitdeploy.training.data import DIGITS_NAME

    dataset = {"source": DIGITS_NAME, "split": "seeded-permutation", "split_seed": 0, "val_fraction": 0.2}
    cfg = ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, num_classes=10)
    bundle = make_bundle(tmp_path / "digits", cfg, dataset=dataset)
    path = export.export_onnx(bundle).path
    report = verify.verify(VerifyRequest(path, batch_sizes=(1, 7, 32)), num_real=40, num_random=8)
    assert report.passed, report.failures()
    assert report.inputs == {"real": 40, "real_source": f"held-out split of {DIGITS_NAME}", "random": 8}
    assert report.cases[0].samples == 48
    # Accuracy of this random-weight model on the 40 labelled images: whatever it is, ONNX must score the same.
    assert report.accuracy[f"onnx:{runtime.CPU}"] == report.accuracy["pytorch"]


def test_images_folder_replaces_the_held_out_split(exported, tmp_path):
    bundle, path = exported
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / ("sub" if i % 2 else "") / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    report = verify.verify(VerifyRequest(path, bundle, images=folder, batch_sizes=(1, 7)))
    assert report.passed
    assert report.inputs == {"real": 5, "real_source": str(folder), "random": 32}


# ---------------------------------------------------------------------------------------------------- bad input


def test_missing_file_and_missing_bundle_are_bad_input(exported, tmp_path, monkeypatch):
    bundle, path = exported
    assert invoke_verify(str(tmp_path / "none.onnx"), "--bundle", str(bundle)).exit_code == 2
    result = invoke_verify(str(path), "--bundle", str(tmp_path / "no-bundle"))
    assert result.exit_code == 2 and "no model bundle" in result.output
    lone = tmp_path / "lone.onnx"  # away from its bundle, whose recorded path no longer exists
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == onnx_file.META_EXPORT:
            prop.value = json.dumps({**json.loads(prop.value), "bundle": str(tmp_path / "moved")})
    onnx.save(proto, str(lone))
    result = invoke_verify(str(lone))
    assert result.exit_code == 2 and "--bundle" in result.output
    monkeypatch.chdir(tmp_path)
    assert invoke_verify().exit_code == 2  # no models/ here
    make_bundle(tmp_path / "models" / "run" / "best")
    result = invoke_verify()
    assert result.exit_code == 2 and "vitdeploy export" in result.output  # a bundle, but never exported


@pytest.mark.parametrize(
    "content",
    [b"", b"this is a text file, not a protobuf\n" * 4, "truncated"],
    ids=["empty", "text", "truncated"],
)
def test_not_onnx_or_truncated_is_bad_input(exported, tmp_path, content):
    bundle, path = exported
    bad = tmp_path / "bad.onnx"
    data = path.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    result = invoke_verify(str(bad), "--bundle", str(bundle))
    assert result.exit_code == 2, result.output
    assert "bad.onnx" in result.output


def test_labels_that_differ_from_the_bundle_are_bad_input(exported, tmp_path):
    bundle, path = exported
    other = make_bundle(tmp_path / "other", labels=["ant", "bee", "cow"])
    result = invoke_verify(str(path), "--bundle", str(other))
    assert result.exit_code == 2 and "labels" in result.output


def test_input_shape_that_differs_from_the_bundle_is_bad_input(exported, tmp_path):
    _, path = exported
    bigger = make_bundle(tmp_path / "big", ModelConfig(**{**TINY.to_dict(), "image_size": 32}))
    result = invoke_verify(str(path), "--bundle", str(bigger))
    assert result.exit_code == 2 and "needs (batch, 3, 32, 32)" in result.output


def test_other_weights_are_bad_input(exported, tmp_path):
    _, path = exported
    retrained = make_bundle(tmp_path / "retrained", seed=1)  # same config and labels, other weights
    result = invoke_verify(str(path), "--bundle", str(retrained))
    assert result.exit_code == 2 and "other weights" in result.output


@pytest.mark.parametrize("location", ["../outside.data", "ABSOLUTE", "link.data"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path, monkeypatch, location):
    monkeypatch.setattr(onnx_file, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)
    bundle = make_bundle(tmp_path / "b")
    model_dir = tmp_path / "deploy"
    path = export.export_onnx(bundle, model_dir / "m.onnx").path
    outside = tmp_path / "outside.data"
    shutil.copy(model_dir / "m.onnx.data", outside)
    if location == "ABSOLUTE":
        location = str(outside)
    elif location == "link.data":  # a symlink inside the folder that leads out of it
        (model_dir / "link.data").symlink_to(outside)
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(path))
    result = invoke_verify(str(path), "--bundle", str(bundle))
    assert result.exit_code == 2
    assert "outside the model's folder" in result.output
    with pytest.raises(ModelFileError):
        onnx_file.load_onnx(path)


def test_graph_without_the_contract_names_is_bad_input(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ModelFileError, match="pixel_values"):
        onnx_file.load_onnx(path)


@pytest.mark.parametrize("text", ["", "0", "1,x", "-3", "1,,0"])
def test_bad_batch_sizes_are_a_usage_error(text):
    with pytest.raises(ConfigError):
        parse_batch_sizes(text)


def test_batch_sizes_parse_and_negative_tolerance_is_refused():
    assert parse_batch_sizes("1, 7,32") == (1, 7, 32)
    with pytest.raises(ConfigError):
        parity.resolve_tolerance("fp32", atol=-1.0, rtol=None)
    assert parity.resolve_tolerance("fp32", atol=None, rtol=0.01) == parity.Tolerance(atol=1e-4, rtol=0.01)


# ---------------------------------------------------------------------------------------------------- metrics


def test_compare_logits_metrics():
    reference = np.array([[1.0, 2.0, 0.5], [3.0, -1.0, 0.0]], np.float32)
    candidate = reference.copy()
    candidate[0, 1] += 0.5  # 25% off, top-1 unchanged
    candidate[1, 0] = -2.0  # top-1 flips from class 0 to class 2
    m = parity.compare_logits(reference, candidate)
    assert m["max_abs"] == pytest.approx(5.0)
    assert m["max_rel"] == pytest.approx(5.0 / 3.0)
    assert m["top1_agreement"] == 0.5
    cos_second = float(candidate[1] @ reference[1] / np.linalg.norm(candidate[1]) / np.linalg.norm(reference[1]))
    assert m["min_cosine"] == pytest.approx(cos_second)


def test_tolerance_combines_atol_and_rtol():
    ref = np.array([100.0, 0.0], np.float32)
    assert parity.Tolerance(atol=1e-4, rtol=0.0).allows(ref, ref + 5e-5)
    assert not parity.Tolerance(atol=1e-4, rtol=0.0).allows(ref, ref + np.array([1e-3, 0.0], np.float32))
    assert parity.Tolerance(atol=1e-4, rtol=1e-5).allows(ref, ref + np.array([1e-3, 0.0], np.float32))
