"""The precision ladder: fusions counted, variants gated on held-out accuracy, metadata that describes each file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import make_bundle  # noqa: E402
from typer.testing import CliRunner

from vitdeploy.cli import app  # noqa: E402
from vitdeploy.core.config import ModelConfig  # noqa: E402
from vitdeploy.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, ConfigError  # noqa: E402
from vitdeploy.exporting import exporter as export  # noqa: E402
from vitdeploy.exporting import gate as accuracy_gate
from vitdeploy.exporting import graphs as graph_variants
from vitdeploy.exporting import ladder as precision
from vitdeploy.files.variants import EXPORT
from vitdeploy.requests import VerifyRequest
from vitdeploy.runtimes import read_model_info  # noqa: E402
from vitdeploy.runtimes import ort as runtime  # noqa: E402
from vitdeploy.training.data import DIGITS_NAME  # noqa: E402
from vitdeploy.verification import parity

DIGITS = {"source": DIGITS_NAME, "split": "seeded-permutation", "split_seed": 0, "val_fraction": 0.2}
# Tiny, but with the digits' 10 classes so that the bundle's held-out split (359 real images) can judge it.
CFG = ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, num_classes=10)
runner = CliRunner()


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """One bundle exported with every variant: (bundle, fp32 path, {variant: VariantResult})."""
    bundle = make_bundle(tmp_path_factory.mktemp("ladder") / "b", CFG, dataset=DIGITS)
    result = export.export_onnx(bundle, variants=precision.requested_variants(("fp32", "fp16", "int8"), True))
    return bundle, result.path, {v.variant: v for v in result.variants}


def test_fusions_are_counted_and_every_block_fuses(ladder):
    _, _, variants = ladder
    fusions = variants["fp32-opt"].fusions
    assert fusions.counts["Attention"] == CFG.depth
    assert fusions.counts["SkipLayerNormalization"] == 2 * CFG.depth
    assert fusions.counts["BiasGelu"] == CFG.depth
    assert fusions.shortfalls() == {}
    # Without the residual-order rewrite block 0's attention does not fuse.
    assert fusions.rewrites == {"residual_branch_first": 2 * CFG.depth}


def test_shortfalls_name_missing_fusions():
    report = graph_variants.FusionReport({"Attention": 11, "SkipLayerNormalization": 24, "BiasGelu": 12},
                                   {"Attention": 12, "SkipLayerNormalization": 24, "Gelu": 12}, {})
    assert report.shortfalls() == {"Attention": "11 of 12"}


def test_rewrites_keep_the_arithmetic(ladder):
    import onnx

    _, path, _ = ladder
    proto = onnx.load(str(path))
    rewrites = graph_variants.prepare_for_fusion(proto)
    assert rewrites["residual_branch_first"] == 2 * CFG.depth
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16), dtype=np.float32)
    before, _ = runtime.make_session(path, device="cpu")
    after, _ = runtime.make_session(proto.SerializeToString(), device="cpu")
    np.testing.assert_allclose(runtime.run_batch(after, x), runtime.run_batch(before, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant, precision", [("fp32-opt", "fp32"), ("fp16", "fp16"), ("int8", "int8")])
def test_variant_files_describe_themselves(ladder, variant, precision):
    _, base, variants = ladder
    result = variants[variant]
    assert result.written and result.path == base.with_name(f"model.{variant}.onnx") and result.path.is_file()
    info = read_model_info(result.path)
    base_info = read_model_info(base)
    assert info.export["precision"] == precision and info.export["variant"] == variant
    assert info.export["weights_sha256"] == base_info.export["weights_sha256"]
    assert info.labels == base_info.labels and info.preprocess == base_info.preprocess
    if variant != "int8":  # static INT8 starts from the plain graph (test_int8_records_its_quantization)
        assert info.export["optimization"]["transformer_fusions"]["counts"]["Attention"] == CFG.depth
    assert info.intermediates == {}  # fusion renamed the fp32 file's tensors
    # The measured accuracy travels with the file.
    assert info.parity["passed"] and info.parity["samples"]["real"] == 359
    assert info.parity["accuracy"] == pytest.approx(result.gate.accuracy)
    assert info.parity["reference_accuracy"] == pytest.approx(result.gate.reference_accuracy)
    assert info.parity["top1_agreement"] >= 0.99
    # predict's path: a session and a batch, with nothing but the file.
    session, _ = runtime.make_session(result.path, device="cpu")
    logits = runtime.run_batch(session, np.zeros((3, 3, 16, 16), np.float32))
    assert logits.shape == (3, 10) and logits.dtype == np.float32


@pytest.mark.parametrize("variant", ["fp32-opt", "fp16", "int8"])
def test_verify_knows_each_precision(ladder, variant):
    from vitdeploy.verification import run as verify

    report = verify.verify(VerifyRequest(ladder[2][variant].path, batch_sizes=(1, 7)), num_real=16, num_random=8)
    assert report.passed, report.failures()
    expected = EXPORT[variant].precision
    assert report.precision == expected and report.tolerance == EXPORT[variant].tolerance
    judged = 16 if variant == "int8" else 24  # int8 is calibrated for real images: noise is not judged
    assert {c.samples for c in report.cases} == {judged}


def test_int8_records_its_quantization(ladder):
    info = read_model_info(ladder[2]["int8"].path)
    assert info.export["quantization"]["method"] == "static"
    assert info.export["quantization"]["calibration_images"] == precision.CALIBRATION_IMAGES
    assert info.export["optimization"]["transformer_fusions"] is None  # static QDQ starts from the plain graph


def test_static_int8_is_batch_independent_and_dynamic_is_not(ladder, tmp_path):
    """Why static is the default: fixed activation scales give each image the same result in any batch."""
    import shutil

    from vitdeploy.files.bundle import load_bundle

    bundle, base, variants = ladder
    model, info = load_bundle(bundle)
    shutil.copy(base, tmp_path / "model.onnx")
    dynamic = precision.export_variants(model, info, tmp_path / "model.onnx", ["int8"], int8_method="dynamic")[0]
    assert read_model_info(dynamic.path).export["quantization"]["method"] == "dynamic"
    x = accuracy_gate.gate_data(model, info, limit=16).inputs
    spread = {}
    for method, path in (("static", variants["int8"].path), ("dynamic", dynamic.path)):
        session, _ = runtime.make_session(path, device="cpu")
        alone = np.concatenate([runtime.run_batch(session, x[i : i + 1]) for i in range(len(x))])
        spread[method] = float(np.abs(runtime.run_batch(session, x) - alone).max())
    assert spread["static"] < 1e-5 < spread["dynamic"]


_REAL_TO_INT8 = graph_variants.to_int8_static


def _sabotaged_int8(model_path, calibration, workdir, recipe=None):
    """A deliberately bad INT8 variant: the real quantization, then every weight matrix scrambled."""
    from onnx import numpy_helper

    proto, settings = _REAL_TO_INT8(model_path, calibration, workdir, recipe)
    rng = np.random.default_rng(0)
    for tensor in proto.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.ndim == 2:
            tensor.CopyFrom(numpy_helper.from_array(rng.permutation(values.reshape(-1)).reshape(values.shape),
                                                    tensor.name))
    return proto, settings


def test_the_gate_rejects_a_bad_variant_and_writes_nothing(tmp_path, monkeypatch):
    bundle = make_bundle(tmp_path / "b", CFG, dataset=DIGITS)
    monkeypatch.setattr(graph_variants, "to_int8_static", _sabotaged_int8)  # what the int8 row's builder calls
    result = runner.invoke(app, ["export", str(bundle), "--optimize", "--precision", "int8", "--json"])
    assert result.exit_code == EXIT_CHECK_FAILED, result.output
    report = json.loads(result.stdout)
    gates = {v["variant"]: v for v in report["variants"]}
    assert gates["fp32-opt"]["written"] and (bundle / "model.fp32-opt.onnx").is_file()
    assert not gates["int8"]["written"] and not (bundle / "model.int8.onnx").exists()
    assert "top-1 agreement" in " ".join(gates["int8"]["gate"]["failures"])
    assert (bundle / "model.onnx").is_file()  # the fp32 export itself passed parity and stays
    assert not list(bundle.glob(".vitdeploy-*"))  # no staging left behind
    assert "accuracy gate failed" in result.stderr


def test_gate_arithmetic():
    gate = accuracy_gate.AccuracyGate(max_accuracy_drop=0.5, min_top1_agreement=0.99)

    def judged(accuracy: float, agreement: float, gate: accuracy_gate.AccuracyGate = gate) -> accuracy_gate.GateResult:
        return accuracy_gate.GateResult("int8", "int8", runtime.CPU, 400, "x", 32, reference_accuracy=0.9,
                                   accuracy=accuracy, top1_agreement=agreement, max_abs=0.1, gate=gate)

    assert judged(0.9, 1.0).passed
    assert judged(0.8975, 0.995).passed  # -0.25 pt, 1 of 200 images differs
    assert judged(0.95, 0.995).passed  # a gain is not a loss
    assert "accuracy" in judged(0.89, 1.0).failures()[0]  # -1 pt
    assert "top-1 agreement" in judged(0.9, 0.98).failures()[0]
    assert judged(0.89, 1.0, accuracy_gate.AccuracyGate(max_accuracy_drop=2.0)).passed
    with pytest.raises(ConfigError):
        accuracy_gate.AccuracyGate(max_accuracy_drop=-1)


def test_fused_fp32_is_also_held_to_logit_parity():
    result = accuracy_gate.GateResult("fp32-opt", "fp32", runtime.CPU, 10, "x", 32, 0.9, 0.9, 1.0, max_abs=1e-3,
                                 gate=accuracy_gate.AccuracyGate(), max_abs_allowed=EXPORT["fp32-opt"].gate_max_abs)
    assert not result.passed and "max |diff|" in result.failures()[0]


def test_precision_parsing():
    assert precision.parse_precisions(["int8,fp16", "fp32"]) == ("fp32", "fp16", "int8")
    assert precision.requested_variants(("fp32",), optimize=False) == []
    assert precision.requested_variants(("fp32", "int8"), optimize=True) == ["fp32-opt", "int8"]
    with pytest.raises(ConfigError):
        precision.parse_precisions(["bf16"])


def test_unknown_precision_and_missing_held_out_images_are_bad_input(tmp_path):
    bundle = make_bundle(tmp_path / "b", CFG)  # records no dataset
    bad = runner.invoke(app, ["export", str(bundle), "--precision", "int4"])
    assert bad.exit_code == EXIT_BAD_INPUT and "int4" in bad.stderr
    no_data = runner.invoke(app, ["export", str(bundle), "--precision", "int8"])
    assert no_data.exit_code == EXIT_BAD_INPUT and "held-out" in no_data.stderr
    assert not (bundle / "model.onnx").exists()  # refused before anything was written


def test_one_table_holds_every_fact_about_a_variant():
    from pathlib import Path

    from vitdeploy.files import variants

    assert precision.PRECISIONS == ("fp32", "fp16", "int8", "ov-bf16", "ov-int8", "ov-int8-bf16")
    assert variants.EXPORT["int8"].path(Path("m/model.onnx")) == Path("m/model.int8.onnx")
    assert variants.PLAIN.path(Path("m/model.onnx")) == Path("m/model.onnx")
    for row in variants.EXPORT_VARIANTS:
        assert row.builder is None or callable(getattr(graph_variants, row.builder))
        assert variants.tolerance_for(row.precision) == row.tolerance  # rows of one precision share verify's check
        assert row.option in ("optimize", "image") or row.name in variants.precision_help()
    for spec in variants.BENCH_VARIANTS:  # a bench variant's precision and file are its export variant's
        assert spec.export is None or (spec.precision == spec.export.precision
                                       and f"model.{spec.export.name}.onnx" in spec.description)
    with pytest.raises(ValueError):
        variants.VariantSpec("x", "ort", "cpu", "fp32", "", export=variants.EXPORT["int8"])


def test_a_variant_added_by_one_row_is_requested_built_described_and_checked(tiny_onnx, tmp_path, monkeypatch):
    import shutil

    from vitdeploy.benchmark.artifacts import build_variant_files
    from vitdeploy.files import variants
    from vitdeploy.runtimes import open_runtime

    row = variants.ExportVariant("fp32-copy", "fp32", "ort", "the same graph again", variants.FP32, "build_same_graph")
    monkeypatch.setitem(variants.EXPORT, row.name, row)
    assert precision.requested_variants(("fp32", "fp32-copy"), optimize=False) == ["fp32-copy"]
    precision.check_request(["fp32-copy"], "static")  # known: no ConfigError
    base = tmp_path / "model.onnx"
    shutil.copy(tiny_onnx, base)
    build_variant_files(base, read_model_info(base).model_config, ["fp32-copy"])  # export's builders
    session = open_runtime(None, tmp_path / "model.fp32-copy.onnx", device="cpu")
    assert session.info.export["variant"] == "fp32-copy" and session.info.export["runtime"] == "ort"
    assert parity.resolve_tolerance(session.info.precision, None, None) == row.tolerance
