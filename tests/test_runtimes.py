"""Runtimes: one interface over ONNX Runtime, OpenVINO and the ONNX reference; each proven against PyTorch.

The OpenVINO tests need the [openvino] extra (the dev extra brings it); the reference runtime needs onnx.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from builders import LABELS, captured_notes, smooth_rgb
from machines import fake_machine, this_family
from PIL import Image
from typer.testing import CliRunner

from vitdeploy import runtimes
from vitdeploy.cli import app
from vitdeploy.errors import EXIT_BAD_INPUT, ConfigError, DeviceError, MissingExtra, ModelFileError
from vitdeploy.files.variants import EXPORT
from vitdeploy.runtimes import machine as machine_module
from vitdeploy.runtimes import open_runtime, registry
from vitdeploy.runtimes.ort import PROBE_MODEL, tensorrt_status

pytestmark = pytest.mark.slow  # the default digits bundle on every runtime, OpenVINO's INT8 gate

openvino_installed = runtimes.runtime_status("openvino").usable
needs_openvino = pytest.mark.skipif(not openvino_installed, reason='needs pip install "vitdeploy[openvino]"')
runner = CliRunner()


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, 3, 16, 16), dtype=np.float32)


@pytest.fixture(scope="module")
def digits_onnx(digits_bundle: Path) -> Path:
    from vitdeploy.exporting.exporter import export_onnx

    return export_onnx(digits_bundle).path


# ------------------------------------------------------------------------------------------------ the interface


@pytest.mark.parametrize("name", ["ort", pytest.param("openvino", marks=needs_openvino), "reference"])
def test_every_runtime_runs_the_file_and_says_what_ran_it(tiny_onnx, batch, name):
    session = open_runtime(name, tiny_onnx, device="cpu")
    described = session.describe()
    assert described["runtime"] == name and described["device"] == "cpu" and described["precision"] == "fp32"
    assert session.info.labels == session.labels == LABELS and session.runtime == name
    assert session.num_classes == 3 and session.input_shape[1:] == (3, 16, 16)
    assert not isinstance(session.input_shape[0], int)  # the batch axis is dynamic on every runtime
    reference = open_runtime("ort", tiny_onnx, device="cpu").run(batch)
    logits = session.run(batch)
    assert logits.shape == (5, 3) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-5)  # fp32 on each: ~1e-7 measured


@needs_openvino
def test_openvino_pins_fp32_unless_another_precision_is_named(tiny_onnx, batch):
    from vitdeploy.runtimes.openvino import capabilities

    plain = open_runtime("openvino", tiny_onnx)
    # The compiled model's own report, not the hint vitdeploy asked for: f32 even where the CPU default is bf16.
    assert plain.describe()["inference_precision"] == "fp32"
    if "BF16" in capabilities():
        named = open_runtime("openvino", tiny_onnx, precision="bf16")
        assert named.describe()["precision"] == named.describe()["inference_precision"] == "bf16"
        assert 0 < np.abs(named.run(batch) - plain.run(batch)).max() < 0.1  # bf16 is not fp32, and not far off


@needs_openvino
def test_bf16_is_refused_where_the_cpu_has_no_native_bf16(tiny_onnx):
    with runtimes.assume(fake_machine("avx512_vnni")), pytest.raises(runtimes.PrecisionError,
                                                                      match="bf16 natively.*AVX512_BF16 or AMX"):
        open_runtime("openvino", tiny_onnx, precision="bf16")


@needs_openvino
def test_an_openvino_device_that_does_not_exist_is_refused(tiny_onnx):
    from vitdeploy.runtimes.openvino import available_devices

    missing = next(d for d in ("npu", "gpu") if d not in available_devices())
    with pytest.raises(DeviceError, match=f"no {missing.upper()} device"):
        open_runtime("openvino", tiny_onnx, device=missing)
    with pytest.raises(ConfigError):
        open_runtime("openvino", tiny_onnx, device="tpu")


def custom_op_model(path: Path) -> Path:
    from onnx import TensorProto, helper, save

    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("FooBar", ["x"], ["y"], domain="my.domain")], "g", io_[:1], io_[1:])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 1)],
                           ir_version=8), str(path))
    return path


@pytest.mark.parametrize("name", ["ort", pytest.param("openvino", marks=needs_openvino), "reference"])
def test_an_op_a_runtime_cannot_run_is_named(tmp_path, name):
    path = custom_op_model(tmp_path / "custom.onnx")
    with pytest.raises(ModelFileError) as err:
        open_runtime(name, path, device="cpu")
    assert "FooBar" in str(err.value) and (name in str(err.value).lower() or "onnxruntime" in str(err.value))


@pytest.mark.skipif(tensorrt_status().usable, reason="TensorRT works here")
def test_tensorrt_not_usable_says_why_and_keeps_stdout_clean(tiny_onnx):
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), pytest.raises(DeviceError) as err:
        open_runtime("ort", tiny_onnx, device="tensorrt")
    assert "tensorrt is not usable" in str(err.value) and tensorrt_status().reason in str(err.value)
    assert captured.getvalue() == ""  # ORT's own "EP Error ... falling back" print is kept off stdout


def test_a_runtime_that_is_not_installed_names_the_install_command(tiny_onnx, monkeypatch):
    monkeypatch.setattr(machine_module, "importable", lambda module: module not in ("openvino", "onnx"))
    with runtimes.assume(machine_module.probe(runtimes.runtime_specs())):  # probed again, without them
        assert not runtimes.runtime_status("openvino").installed
        with pytest.raises(MissingExtra, match=r'pip install "vitdeploy\[openvino\]"'):
            open_runtime("openvino", tiny_onnx)
        with pytest.raises(MissingExtra, match=r'onnx.*pip install "vitdeploy\[train\]"'):
            runtimes.select_runtimes(("reference",))
        with captured_notes() as lines:
            assert runtimes.select_runtimes(None) == ["ort"]  # the default: what is installed, said once
    assert any('pip install "vitdeploy[openvino]"' in line for line in lines)


def test_unknown_runtime_names_are_refused():
    with pytest.raises(ConfigError, match="choose from: ort, openvino, reference"):
        runtimes.parse_runtimes("ort,tensorflow")
    assert runtimes.parse_runtimes("ORT, openvino,ort") == ("ort", "openvino")


def test_probe_model_has_no_vitdeploy_metadata_so_any_runtime_reads_it_as_fp32():
    assert open_runtime("ort", PROBE_MODEL, device="cpu").description.precision == "fp32"


# ----------------------------------------------------------------------------------------------------- verify


@needs_openvino
def test_verify_on_the_default_digits_bundle_every_runtime_within_fp32_tolerance(digits_onnx):
    result = runner.invoke(app, ["verify", str(digits_onnx), "--runtime", "ort,openvino,reference",
                                 "--batch-sizes", "1,7,32", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {r["runtime"] for r in report["runtimes"]} == {"ort", "openvino", "reference"}
    assert {(c["runtime"], c["batch_size"]) for c in report["cases"]} >= {
        (r, b) for r in ("ort", "openvino", "reference") for b in (1, 7, 32)}
    for case in report["cases"]:
        assert case["max_abs"] <= 1e-4 and case["top1_agreement"] == 1.0 and case["precision"] == "fp32", case
        assert case["samples"] == (32 if case["runtime"] == "reference" else 96)  # 64 held-out digits + 32 random
    assert any("reference: 32 of the 96 samples" in note for note in report["notes"])
    assert len(report["cross"]) == 3 and all(c["passed"] and c["max_abs"] <= 1e-4 for c in report["cross"])
    assert all(d["passed"] for diffs in report["layers"].values() for d in diffs)  # every block, every runtime


@needs_openvino
def test_verify_names_an_unusable_runtime_and_exits_2(digits_onnx):
    with runtimes.assume(fake_machine(this_family(), openvino=False)):
        result = runner.invoke(app, ["verify", str(digits_onnx), "--runtime", "openvino"])
    assert result.exit_code == EXIT_BAD_INPUT and 'pip install "vitdeploy[openvino]"' in result.output


# ---------------------------------------------------------------------------------------------------- predict


@needs_openvino
def test_predict_on_openvino_and_ort_gives_identical_labels(tmp_path, digits_onnx):
    for i in range(6):
        smooth_rgb(20 + i, 16 + 2 * i, seed=i).save(tmp_path / f"{i}.png")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "flat.jpg")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows = {}
    for name in ("ort", "openvino"):
        out = tmp_path / f"{name}.jsonl"
        result = runner.invoke(app, ["predict", str(tmp_path), "--model", str(digits_onnx), "--runtime", name,
                                     "--format", "jsonl", "-o", str(out), "--batch-size", "3"])
        assert result.exit_code == 4, result.output  # the same exit code: one input failed, on either runtime
        rows[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows["ort"]] == [r["path"] for r in rows["openvino"]]
    assert [r.get("label") for r in rows["ort"]] == [r.get("label") for r in rows["openvino"]]
    assert {r["runtime"] for r in rows["openvino"]} == {"openvino"} and {r["runtime"] for r in rows["ort"]} == {"ort"}
    for a, b in zip(rows["ort"], rows["openvino"]):
        if a["ok"]:
            assert abs(a["probability"] - b["probability"]) <= 1e-5
        else:
            assert a["error"] == b["error"] == "not_an_image"


# ---------------------------------------------------------------------------------------------- precision ladder


@needs_openvino
def test_openvino_bf16_and_int8_variants_of_the_default_bundle_are_gated(digits_bundle, digits_onnx, tmp_path):
    """Each passes its gate and is written, self-describing, or fails it with the figures and is not written."""
    import shutil

    from vitdeploy.exporting import ladder as precision
    from vitdeploy.files.bundle import load_bundle
    from vitdeploy.runtimes.openvino import capabilities

    base = tmp_path / "model.onnx"
    shutil.copy(digits_onnx, base)
    model, info = load_bundle(digits_bundle)
    wanted = ["ov-int8"] + (["ov-bf16"] if "BF16" in capabilities() else [])
    results = precision.export_variants(model, info, base, wanted)
    assert [r.variant for r in results] == wanted
    for r in results:
        gate = r.gate.summary()
        assert gate["runtime"]["runtime"] == "openvino" and gate["runtimes"] == ["openvino"]  # judged on OpenVINO
        assert gate["samples"]["real"] == 359 and 0 <= gate["top1_agreement"] <= 1  # the figures, either way
        assert r.written == r.gate.passed == r.path.is_file()
        if r.written:
            session = open_runtime("openvino", r.path)
            recorded = json.loads(session.metadata["vitdeploy.export"])
            assert recorded["runtime"] == "openvino" and recorded["variant"] == r.variant
            assert session.describe()["precision"] == EXPORT[r.variant].precision
            assert session.describe()["inference_precision"] == EXPORT[r.variant].inference_precision
            assert json.loads(session.metadata["vitdeploy.parity"])["passed"]
    int8 = next(r for r in results if r.variant == "ov-int8")
    assert int8.quantization["method"] == "nncf" and int8.quantization["format"] == "QDQ (ONNX)"


@needs_openvino
def test_ov_bf16_file_is_refused_by_runtimes_it_was_not_made_for(digits_bundle, digits_onnx, tmp_path):
    import onnx

    from vitdeploy.files.onnx_file import META_EXPORT, set_metadata

    proto = onnx.load(str(digits_onnx))
    export = {**json.loads(next(p.value for p in proto.metadata_props if p.key == META_EXPORT)),
              "precision": "bf16", "variant": "ov-bf16", "runtime": "openvino", "inference_precision": "bf16"}
    set_metadata(proto, {META_EXPORT: export})
    path = tmp_path / "model.ov-bf16.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ConfigError, match="--runtime openvino"):
        open_runtime("ort", path)
    assert registry.runtime_for_file(path) == "openvino"  # predict's default for this file


def test_export_refuses_ov_bf16_where_the_cpu_has_no_bf16(digits_bundle):
    pytest.importorskip("openvino")
    with runtimes.assume(fake_machine("avx2")):
        result = runner.invoke(app, ["export", str(digits_bundle), "--out", str(digits_bundle / "x.onnx"),
                                     "--precision", "ov-bf16"])
    assert result.exit_code == EXIT_BAD_INPUT and "bf16 natively" in result.output
    assert not (digits_bundle / "x.onnx").exists()
