"""Token merging (model/tome.py) in the model, in the exported graph, and as the tome / tome-int8 export variants."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import make_bundle
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.core.config import ModelConfig
from vitdeploy.core.flops import count_macs
from vitdeploy.errors import EXIT_BAD_INPUT, ConfigError
from vitdeploy.exporting import exporter
from vitdeploy.exporting.gate import AccuracyGate
from vitdeploy.exporting.tome_search import SEARCH_MIN_AGREEMENT, TOME_R_CANDIDATES
from vitdeploy.files.onnx_file import read_metadata
from vitdeploy.requests import PredictRequest, VerifyRequest
from vitdeploy.training.data import DIGITS_NAME

torch = pytest.importorskip("torch")
from vitdeploy.model import tome  # noqa: E402
from vitdeploy.model.vit import build_model  # noqa: E402

# 64 patches, so that several blocks can merge several tokens each.
CFG = ModelConfig(image_size=32, patch_size=4, dim=32, depth=3, num_heads=2, num_classes=10)
DIGITS = {"source": DIGITS_NAME, "split": "seeded-permutation", "split_seed": 0, "val_fraction": 0.2}
# A gate that passes anything: these tests check the file and its description, not a random model's accuracy.
ANY = AccuracyGate(max_accuracy_drop=100.0, min_top1_agreement=0.0)
runner = CliRunner()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(CFG).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(5, 3, CFG.image_size, CFG.image_size, generator=torch.Generator().manual_seed(1))


def test_r0_is_the_unmerged_model_exactly(model, images):
    with torch.inference_mode():
        unmerged = model(images)
        with tome.merging(model, tome.schedule(CFG, 0)):
            assert torch.equal(model(images), unmerged)


def test_merging_does_not_mix_the_images_of_a_batch(model, images):
    with torch.inference_mode(), tome.merging(model, tome.schedule(CFG, 8)):
        batch = model(images)
        alone = torch.cat([model(images[i : i + 1]) for i in range(len(images))])
    # fp32 tolerance: the same arithmetic, only the matmuls' batch blocking differs (measured ~1e-7)
    torch.testing.assert_close(batch, alone, rtol=1.3e-6, atol=1e-5)


def test_merging_changes_the_answer_and_removes_r_tokens_per_block(model, images):
    merge = tome.schedule(CFG, 8)
    with torch.inference_mode():
        unmerged = model(images)
        with tome.merging(model, merge):
            merged, inter = model.forward_with_intermediates(images)
    assert not torch.allclose(merged, unmerged)
    assert [inter[f"block_{i}"].shape[1] for i in range(CFG.depth)] == merge.tokens(CFG)[1:] == [57, 49, 41]
    assert all(block.merge_r == 0 for block in model.blocks)  # off again after the context


def test_schedule_caps_r_at_half_the_patch_tokens():
    merge = tome.schedule(CFG, 40, first_block=1)
    assert merge.per_block == (0, 32, 16)
    assert merge.tokens(CFG) == [65, 65, 33, 17]
    with pytest.raises(ConfigError):
        tome.schedule(CFG, 4, first_block=3)
    with pytest.raises(ConfigError):
        tome.schedule(CFG, -1)


def test_merge_is_a_size_weighted_average_and_protects_the_class_token():
    # Tokens: cls, then A0 B0 A1 B1 (alternating). Keys make A0 ~ B1 and A1 ~ B0, A0's match the closest.
    keys = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0.8, 0.6], [0.6, 0.8, 0], [0, 1, 0.01]])[None, None]  # (1,1,5,3)
    x = torch.arange(5.0)[None, :, None].repeat(1, 1, 2)  # token i holds the value i
    size = torch.tensor([1.0, 3.0, 1.0, 1.0, 1.0])[None, :, None]  # A0 already stands for 3 patches
    out, out_size = tome.merge_tokens(x, size, keys, r=1)
    # cls first and untouched; A1 kept; B0 unchanged; B1 = (3 * 1 + 1 * 4) / 4
    assert out[0, :, 0].tolist() == pytest.approx([0.0, 3.0, 2.0, 7 / 4])
    assert out_size[0, :, 0].tolist() == [1.0, 1.0, 1.0, 4.0]
    assert out_size.sum() == size.sum()  # every patch still counted once


def test_proportional_attention_counts_a_merged_token_as_its_patches(model):
    # One token standing for 2 patches must attend like two identical tokens of size 1.
    attn = model.blocks[0].attn
    tokens = torch.randn(1, 3, CFG.dim)
    twice = torch.cat([tokens, tokens[:, 2:]], dim=1)  # the last token duplicated
    attn.proportional = True
    try:
        with torch.inference_mode():
            merged, _ = attn(tokens, torch.tensor([1.0, 1.0, 2.0])[None, :, None])
            duplicated, _ = attn(twice)
    finally:
        attn.proportional = False
    torch.testing.assert_close(merged, duplicated[:, :3], rtol=1.3e-6, atol=1e-5)


def test_macs_count_the_tokens_each_block_sees():
    merge = tome.schedule(CFG, 8)
    full, merged = count_macs(CFG), count_macs(CFG, merge.per_block)
    dim, hidden = CFG.dim, CFG.mlp_hidden
    assert merged.qkv == 3 * dim * dim * (65 + 57 + 49)
    assert merged.mlp == 2 * dim * hidden * (57 + 49 + 41)
    assert merged.patch_embed == full.patch_embed and merged.total < full.total
    assert count_macs(CFG, (0,) * CFG.depth) == full


# dynamo at 17 (the opset the docs export with): torch.onnx exports its own opset 18 and converts it down, so this
# case traces the merging at 18 too; running the opset-18 graph as well cost another 11 s of dynamo export.
@pytest.mark.parametrize("exporter_name, opset",
                         [("torchscript", 17), pytest.param("dynamo", 17, marks=pytest.mark.slow)])
def test_exported_merging_matches_pytorch_at_other_batch_sizes(model, images, exporter_name, opset):
    from vitdeploy.files.bundle import BundleInfo
    from vitdeploy.runtimes import open_runtime, runtime_status

    info = BundleInfo(model=CFG, preprocess=None, labels=[str(i) for i in range(10)])  # type: ignore[arg-type]
    with tome.merging(model, tome.schedule(CFG, 8)):
        proto = exporter.run_exporter(exporter_name, model, info, opset)
        with torch.inference_mode():
            expected = model(images).numpy()
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch axis
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == opset
    runtimes = ["ort"] + (["openvino"] if runtime_status("openvino").usable else [])
    for name in runtimes:
        session = open_runtime(name, proto.SerializeToString(), device="cpu")
        for batch in (1, 3):  # traced at 2
            got = session.run(images[:batch].numpy())
            # measured: 1.8e-7 (ORT), 1e-7 (OpenVINO f32); fp32's parity tolerance is 1e-4
            np.testing.assert_allclose(got, expected[:batch], rtol=0, atol=1e-5, err_msg=name)


# ------------------------------------------------------------------------------------------------ export variants


@pytest.fixture(scope="module")
def digits_tiny(tome_export):
    """A tiny random-weights bundle on the digits (16 patches), exported with tome at r=2 and tome-int8 (conftest)."""
    return tome_export


def test_tome_variant_records_its_merging_and_passes_verify_and_predict(digits_tiny, tmp_path):
    import vitdeploy

    bundle, result = digits_tiny
    tome_result = next(v for v in result.variants if v.variant == "tome")
    assert tome_result.written and tome_result.path.name == "model.tome.onnx"
    export = json.loads(read_metadata(tome_result.path)["vitdeploy.export"])
    merging = export["token_merging"]
    assert merging["per_block"] == [2, 2] and merging["searched"] is False and len(merging["curve"]) == 1
    assert export["precision"] == "fp32" and export["variant"] == "tome"
    # verify rebuilds PyTorch with the same merging: fp32 parity holds against it
    report = vitdeploy.verify(VerifyRequest(model=tome_result.path, bundle=bundle, batch_sizes=(1, 3)))
    assert report.passed, report.to_dict()
    # predict runs it like any other file
    summary = vitdeploy.predict(PredictRequest(inputs=[str(tiny_png(tmp_path))], model=tome_result.path))
    assert summary.images_ok == 1 and summary.rows


def test_tome_int8_is_the_int8_builder_on_the_merged_graph(digits_tiny):
    _, result = digits_tiny
    row = next(v for v in result.variants if v.variant == "tome-int8")
    assert row.written and row.precision == "int8"
    export = json.loads(read_metadata(row.path)["vitdeploy.export"])
    assert export["quantization"]["method"] in ("static", "dynamic")
    assert export["token_merging"]["per_block"] == [2, 2]


def test_search_tries_the_candidates_and_picks_the_fewest_macs_that_agree(tmp_path):
    bundle = make_bundle(tmp_path / "b", ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2,
                                                     num_classes=10), dataset=DIGITS)
    result = exporter.export_onnx(bundle, variants=["tome"], gate=ANY)
    merging = result.variants[0].token_merging
    curve = merging["curve"]
    assert merging["searched"] and curve[0]["r"] == 0 and curve[0]["agreement"] == 1.0
    assert [p["macs_share"] for p in curve] == sorted([p["macs_share"] for p in curve], reverse=True)
    passing = [p for p in curve if p["r"] > 0 and p["agreement"] >= SEARCH_MIN_AGREEMENT]
    chosen = min(passing, key=lambda p: p["macs_share"]) if passing else max(
        (p for p in curve if p["r"] > 0), key=lambda p: p["macs_share"])
    assert merging["per_block"] == chosen["per_block"]
    assert {p["r"] for p in curve} <= {0, *TOME_R_CANDIDATES}


def test_cli_tome_r_zero_is_a_usage_error(tiny_bundle):
    out = runner.invoke(app, ["export", str(tiny_bundle), "--precision", "tome", "--tome-r", "0"])
    assert out.exit_code == EXIT_BAD_INPUT, out.output
    assert "--tome-r" in out.output
    alone = runner.invoke(app, ["export", str(tiny_bundle), "--tome-r", "4"])  # no token merging variant asked
    assert alone.exit_code == EXIT_BAD_INPUT and "--precision tome" in alone.output


def tiny_png(folder):
    from builders import smooth_rgb

    path = folder / "image.png"
    smooth_rgb(16, 16).save(path)
    return path


BENCH_QUICK = ["--warmup-iters", "1", "--warmup-seconds", "0", "--min-iters", "2", "--min-seconds", "0",
               "--threads", "1", "--block-idle", "0", "--batch-sizes", "1,2", "--json"]


def test_bench_times_the_merged_files_and_reports_their_setting_and_macs(digits_tiny):
    bundle, result = digits_tiny
    variants = "ort-cpu,ort-cpu-tome,ort-cpu-tome-int8"
    out = runner.invoke(app, ["bench", str(result.path), "--bundle", str(bundle), "--variants", variants,
                              *BENCH_QUICK])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    tome_row = report["variants"]["ort-cpu-tome"]
    assert tome_row["token_merging"]["per_block"] == [2, 2] and tome_row["token_merging"]["curve"]
    merged, full = tome_row["macs_per_image"]["total"], report["model"]["macs_per_image"]["total"]
    assert merged == count_macs(ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2,
                                            num_classes=10), (2, 2)).total < full
    assert "token_merging" not in report["variants"]["ort-cpu"]


@pytest.mark.slow
def test_bench_preset_builds_the_merged_variant_with_the_preset_r():
    from vitdeploy.benchmark.artifacts import PRESET_TOME_R

    out = runner.invoke(app, ["bench", "--preset", "tiny", "--variants", "ort-cpu-tome", *BENCH_QUICK])
    assert out.exit_code == 0, out.output
    merging = json.loads(out.stdout)["variants"]["ort-cpu-tome"]["token_merging"]
    assert merging["r"] == PRESET_TOME_R or max(merging["per_block"]) < PRESET_TOME_R


def test_train_with_merging_records_it_and_learns(tmp_path):
    from vitdeploy.files.bundle import read_bundle_info
    from vitdeploy.training.run import TrainRequest, train

    result = train(TrainRequest(preset="digits", epochs=2, out=tmp_path / "run", tome_r=2))
    info = read_bundle_info(result.last)
    assert info.provenance["run"]["token_merging"] == {"per_block": [2, 2, 2, 2], "proportional_attention": True}
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]  # gradients flow through merging


def test_merged_files_have_their_own_parity_tolerance():
    from vitdeploy.files.variants import EXPORT, TOME
    from vitdeploy.verification.parity import resolve_tolerance

    assert EXPORT["tome"].tolerance is TOME
    assert resolve_tolerance("fp32", None, None, "tome") == TOME
    assert resolve_tolerance("fp32", None, None, "fp32-opt").atol == 1e-4  # other variants: their precision's
    assert resolve_tolerance("int8", None, None, "tome-int8") == resolve_tolerance("int8", None, None)


@pytest.mark.slow
def test_ov_tome_int8_is_ov_int8s_builder_on_the_merged_graph(tmp_path):
    pytest.importorskip("nncf")
    cfg = ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, num_classes=10)
    bundle = make_bundle(tmp_path / "b", cfg, dataset=DIGITS)
    row = exporter.export_onnx(bundle, variants=["ov-tome-int8"], gate=ANY, tome_r=2).variants[0]
    export = json.loads(read_metadata(row.path)["vitdeploy.export"])
    assert row.written and export["runtime"] == "openvino" and export["quantization"]["method"] == "nncf"
    assert export["token_merging"]["per_block"] == [2, 2]
