"""Faster gated variants (issue 18): the ov-int8-bf16 row (INT8 with bf16 for the rest, refused without native
bf16), the search over what stays unquantized, and OpenVINO's per-batch-size compilation and THROUGHPUT queue."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from vitdeploy.errors import PrecisionError
from vitdeploy.exporting import ladder as precision
from vitdeploy.exporting import quant_search
from vitdeploy.files.variants import EXPORT, PRECISIONS, VARIANTS

pytest.importorskip("openvino")


def _has_bf16() -> bool:
    from vitdeploy.runtimes.openvino import capabilities

    return "BF16" in capabilities()


needs_bf16 = pytest.mark.skipif(not _has_bf16(), reason="this CPU has no native bf16 (AVX512_BF16 or AMX)")


def test_the_row_says_int8_on_openvino_with_bf16_for_the_rest():
    row = EXPORT["ov-int8-bf16"]
    assert (row.precision, row.runtime, row.inference_precision) == ("int8", "openvino", "bf16")
    assert "ov-int8-bf16" in PRECISIONS and VARIANTS["ov-cpu-int8-bf16"].export is row


def test_refused_where_the_cpu_has_no_native_bf16():
    from machines import fake_machine

    from vitdeploy.runtimes import assume

    with assume(fake_machine("avx512_vnni")):
        with pytest.raises(PrecisionError, match="bf16 natively"):
            precision.check_request(["ov-int8-bf16"], "static")
        precision.check_request(["ov-int8"], "static")  # f32 for the rest needs nothing more


# ---------------------------------------------------------------------------------------------- the search


@pytest.fixture(scope="module")
def quantized_tiny(tiny_onnx, tmp_path_factory):
    """The tiny model with NNCF INT8 on every MatMul, the patch embedding and the head."""
    from vitdeploy.exporting.graphs import to_ov_int8

    calibration = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    proto, _ = to_ov_int8(tiny_onnx, calibration, tmp_path_factory.mktemp("q"), kept=[])
    return proto


def test_groups_follow_the_blocks_of_the_graph(tiny_onnx):
    import onnx
    from builders import TINY

    groups = quant_search.matmul_groups(onnx.load(str(tiny_onnx)), TINY)
    names = [g.name for g in groups]
    assert names[0] == "patch_embed" and names[-1] == "head" and len(names) == 5 * TINY.depth + 2
    assert [len(g.nodes) for g in groups if g.name == "block0.qkv"] == [3]
    assert [len(g.nodes) for g in groups if g.name == "block1.attention"] == [2]


def _reads_quantized(proto, node_name: str) -> bool:
    producer = {o: n for n in proto.graph.node for o in n.output}
    node = next(n for n in proto.graph.node if n.name == node_name)
    return any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
               and producer.get(producer[i].input[0]) is not None for i in node.input)


@pytest.mark.slow
def test_search_keeps_the_sensitive_group_and_no_more(quantized_tiny, tiny_onnx):
    """A stand-in runtime whose answers flip only while block 1's fc2 reads quantized activations: the search
    takes exactly that group back to float, and the surgery really un-quantizes its input."""
    import onnx
    from builders import TINY

    groups = quant_search.matmul_groups(onnx.load(str(tiny_onnx)), TINY)
    fc2 = next(g for g in groups if g.name == "block1.fc2").nodes[0]
    reference = np.eye(3, dtype=np.float32)[np.arange(12) % 3]

    def run(proto):
        return reference[:, ::-1] if _reads_quantized(proto, fc2) else reference + 0.01

    found = quant_search.search(quantized_tiny, groups, run, reference)
    assert found.kept_fp32 == ["block1.fc2"] and found.kept_nodes == [fc2]
    assert found.agreement == 1.0 and found.agreement_all_quantized < 1.0
    assert 0 < found.quantized_macs_share < 1 and found.evaluations <= 1 + len(groups) + 6
    assert not _reads_quantized(quant_search.without_activation_quantizers(quantized_tiny, [fc2]), fc2)


def test_a_search_that_keeps_nothing_ships_the_first_quantization(tiny_onnx, tmp_path, monkeypatch):
    """Where every search image agrees with everything quantized, the file is that first quantization: NNCF runs
    once, not twice, and the graph is the one a second run would give."""
    pytest.importorskip("nncf")
    from builders import TINY

    from vitdeploy.exporting import graphs

    calibration = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    source = graphs.VariantSource(tiny_onnx, TINY, tmp_path, lambda: calibration, isa="avx512_vnni")
    quantizations = []
    real_quantize, real_search = graphs.to_ov_int8, quant_search.search
    monkeypatch.setattr(graphs, "to_ov_int8", lambda *a, **k: quantizations.append(k["kept"]) or real_quantize(*a, **k))
    monkeypatch.setattr(quant_search, "search", lambda *a: real_search(*a, min_agreement=0.0))  # nothing kept
    built = graphs.ov_int8_searched(source, "fp32")
    search = built.quantization["search"]
    assert quantizations == [[]] and search["kept_fp32"] == [] and search["quantized_macs_share"] == 1.0
    assert search["agreement_requantized"] == search["agreement_all_quantized"]
    again, _ = real_quantize(tiny_onnx, calibration, tmp_path, kept=[], recipe=source.int8_recipe)
    assert again.graph.SerializeToString() == built.proto.graph.SerializeToString()  # NNCF is deterministic


def test_an_int8_file_with_no_int8_left_fails_its_gate():
    from vitdeploy.exporting.gate import AccuracyGate, GateResult

    judged = GateResult("ov-int8-bf16", "int8", "CPU", 10, "held-out", 32, 0.9, 0.9, 1.0, 0.0, AccuracyGate())
    assert judged.passed and "int8_macs_share" not in judged.summary()  # the other variants: no search, no share
    assert dataclasses.replace(judged, int8_macs_share=0.02).passed
    kept_everything = dataclasses.replace(judged, int8_macs_share=0.0)
    assert kept_everything.failures() == [
        "no INT8 left (its search took every layer back to float to keep PyTorch's answers)"]
    assert kept_everything.summary()["int8_macs_share"] == 0.0


@pytest.mark.slow
@needs_bf16
def test_a_search_that_ends_with_every_layer_in_float_writes_no_file(tmp_path, monkeypatch):
    """The search's last resort (no prefix short of every group passes) leaves an fp32 graph under an INT8 name:
    export judges it failed, says why, and writes nothing."""
    from builders import TINY, make_bundle

    from vitdeploy.exporting.exporter import export_onnx
    from vitdeploy.exporting.gate import AccuracyGate
    from vitdeploy.training.data import DIGITS_NAME

    digits = {"source": DIGITS_NAME, "split": "seeded-permutation", "split_seed": 0, "val_fraction": 0.2}
    bundle = make_bundle(tmp_path / "b", dataclasses.replace(TINY, num_classes=10, depth=1), dataset=digits)
    real_search = quant_search.search
    monkeypatch.setattr(quant_search, "search", lambda *a: real_search(*a, min_agreement=1.01))  # nothing passes
    let_through = AccuracyGate(max_accuracy_drop=100.0, min_top1_agreement=0.0)
    [row] = export_onnx(bundle, tmp_path / "out" / "model.onnx", variants=["ov-int8-bf16"], gate=let_through).variants
    assert row.quantization["search"]["quantized_macs_share"] == 0.0
    assert not row.written and not row.path.exists() and len(row.gate.failures()) == 1
    assert row.gate.failures()[0].startswith("no INT8 left")


@pytest.mark.slow
@needs_bf16
def test_export_searches_gates_and_records_the_configuration(digits_bundle, tmp_path):
    from vitdeploy.exporting.exporter import export_onnx
    from vitdeploy.files.bundle import load_bundle
    from vitdeploy.runtimes import open_runtime

    base = tmp_path / "model.onnx"
    shutil.copy(export_onnx(digits_bundle, out=tmp_path / "plain" / "model.onnx").path, base)
    model, info = load_bundle(digits_bundle)
    [result] = precision.export_variants(model, info, base, ["ov-int8-bf16"])
    assert result.gate.runtime["runtime"] == "openvino" and result.gate.runtime["inference_precision"] == "bf16"
    search = result.quantization["search"]
    assert search["inference_precision"] == "bf16"
    # The search's own criterion (every fp32 answer on its images), or its last resort where even every group back
    # in float misses it (the surgery estimate keeps INT8 weights; seen on a briefly trained bundle): no INT8 at all,
    # and then no file (test_a_search_that_ends_with_every_layer_in_float_writes_no_file).
    assert search["agreement"] == 1.0 or search["quantized_macs_share"] == 0.0
    assert result.written == result.gate.passed == result.path.is_file()
    if result.written:
        session = open_runtime(None, result.path)
        recorded = json.loads(session.metadata["vitdeploy.export"])
        assert recorded["inference_precision"] == "bf16" and recorded["variant"] == "ov-int8-bf16"
        assert recorded["quantization"]["search"]["kept_fp32"] == search["kept_fp32"]
        assert session.describe()["inference_precision"] == "bf16"


# ---------------------------------------------------------------------------------------------- OpenVINO sessions


def test_static_batch_compiles_once_per_batch_size(tiny_onnx):
    from vitdeploy.runtimes.openvino import STATIC_BATCH_SIZES, OpenVinoSession

    batch = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
    dynamic = OpenVinoSession(tiny_onnx, "cpu", static_batch=False).run(batch)
    session = OpenVinoSession(tiny_onnx, "cpu", throughput=False)  # static_batch is the default
    np.testing.assert_allclose(session.run(batch), dynamic, atol=1e-5)
    first = session.request_for(5)
    np.testing.assert_allclose(session.run(batch[:2]), dynamic[:2], atol=1e-5)
    session.run(batch)
    assert sorted(session._requests) == [2, 5] and session.request_for(5) is first  # reused, not recompiled
    for size in (6, 7, 9):  # past STATIC_BATCH_SIZES sizes, the dynamic compilation runs the rest
        session.run(batch[:1].repeat(size, axis=0))
    assert len(session._requests) == STATIC_BATCH_SIZES and session.request_for(9) is session.request
    assert not isinstance(session.input_shape[0], int)  # the file's contract is still a dynamic batch


def test_throughput_queue_splits_large_batches_and_says_how_many_streams(tiny_onnx):
    from vitdeploy.runtimes.openvino import THROUGHPUT_MIN_BATCH, OpenVinoSession

    batch = np.random.default_rng(2).standard_normal((THROUGHPUT_MIN_BATCH + 3, 3, 16, 16)).astype(np.float32)
    plain = OpenVinoSession(tiny_onnx, "cpu", throughput=False)
    queued = OpenVinoSession(tiny_onnx, "cpu")  # the default
    np.testing.assert_allclose(queued.run(batch), plain.run(batch), atol=1e-5)  # order kept across requests
    np.testing.assert_allclose(queued.run(batch[:1]), plain.run(batch[:1]), atol=1e-5)  # small: LATENCY path
    assert int(queued.describe()["streams"]) >= 1 and plain.describe()["streams"] == "1"
