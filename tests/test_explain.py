"""vitdeploy explain: attention read from the model, the three map methods, the CLI, the guide, and an export
that stays the same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from builders import TINY
from PIL import Image
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.core import images
from vitdeploy.explanation import maps
from vitdeploy.exporting.exporter import export_model
from vitdeploy.files.bundle import load_bundle
from vitdeploy.model.vit import build_model
from vitdeploy.training.data import heldout_images

pytestmark = pytest.mark.slow  # trains the digits model and draws figures

pytest.importorskip("matplotlib")
runner = CliRunner()
# A pixel is ink when the model's input, un-normalised, is at least half as bright as full ink.
INK_LEVEL = 0.5


@pytest.fixture(scope="module")
def heldout(digits_bundle) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(trained model, held-out inputs (B, 3, 16, 16), ink masks (B, 16, 16)) for every held-out digit."""
    model, info = load_bundle(digits_bundle)
    pairs = heldout_images(info.dataset, info.labels, spec=info.preprocess)
    x = torch.from_numpy(images.preprocess_batch([image for image, _ in pairs], info.preprocess))
    mean, std = (torch.tensor(v)[:, None, None] for v in (info.preprocess.mean, info.preprocess.std))
    return model, x, (x * std + mean).mean(dim=1) >= INK_LEVEL


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


# ------------------------------------------------------------------------------------------- the mechanism


def test_rollout_of_identity_attention_keeps_the_cls_token_to_itself() -> None:
    n_tokens = TINY.num_patches + 1
    identity = torch.eye(n_tokens).expand(2, TINY.num_heads, n_tokens, n_tokens)
    joint = maps.attention_rollout([identity] * TINY.depth)
    expected = torch.zeros(n_tokens)
    expected[0] = 1.0
    torch.testing.assert_close(joint[:, 0], expected.expand(2, -1))
    assert maps.cls_row(joint).abs().max() == 0  # no mass on any patch


def test_rollout_of_uniform_attention_gives_a_uniform_patch_map() -> None:
    n_tokens = TINY.num_patches + 1
    uniform = torch.full((2, TINY.num_heads, n_tokens, n_tokens), 1 / n_tokens)
    patch = maps.cls_row(maps.attention_rollout([uniform] * 3))
    assert patch.shape == (2, TINY.num_patches)
    torch.testing.assert_close(patch, patch[:, :1].expand_as(patch))
    assert float(patch[0, 0]) > 0


def test_recorded_attention_is_the_softmax_of_every_block(tiny_bundle) -> None:
    model, _ = load_bundle(tiny_bundle)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        plain = model(x)
        logits, attentions = maps.forward_with_attention(model, x)
    assert torch.equal(logits, plain)  # recording changes nothing that forward computes
    assert len(attentions) == TINY.depth
    for w in attentions:
        n_tokens = TINY.num_patches + 1
        assert w.shape == (3, TINY.num_heads, n_tokens, n_tokens)
        torch.testing.assert_close(w.sum(dim=-1), torch.ones(3, TINY.num_heads, n_tokens))
    assert all(not block.attn.record and block.attn.recorded is None for block in model.blocks)


@pytest.mark.parametrize("method", maps.METHODS)
def test_every_method_gives_one_value_per_patch(tiny_bundle, method: str) -> None:
    model, _ = load_bundle(tiny_bundle)
    found = maps.attention_maps(model, torch.randn(2, 3, 16, 16), method)
    assert found.patch.shape == (2, TINY.num_patches) and found.logits.shape == (2, TINY.num_classes)
    torch.testing.assert_close(found.patch.sum(dim=1) + found.cls_self, torch.ones(2))  # rows of a row-stochastic
    assert (found.heads is not None) == (method == "cls")
    if found.heads is not None:
        assert found.heads.shape == (2, TINY.num_heads, TINY.num_patches)
    assert not any(p.grad is not None for p in model.parameters())  # grad-rollout leaves the weights alone


def test_grad_rollout_answers_differently_for_different_classes(heldout) -> None:
    model, x, _ = heldout
    zero = maps.patch_mass(maps.attention_maps(model, x[:32], "grad-rollout", 0).patch)
    one = maps.patch_mass(maps.attention_maps(model, x[:32], "grad-rollout", 1).patch)
    # L1 distance between the two maps as distributions over patches: 0 if equal, 2 if disjoint.
    assert (zero - one).abs().sum(dim=1).min() > 0.1


def test_rollout_mass_lands_on_the_ink_more_than_its_area_share(heldout) -> None:
    model, x, ink = heldout
    area = float(ink.float().mean())
    trained = maps.mass_on_mask(maps.patch_mass(maps.attention_maps(model, x, "rollout").patch), ink, 4)
    torch.manual_seed(0)
    untrained = build_model(model.cfg).eval()
    control = maps.mass_on_mask(maps.patch_mass(maps.attention_maps(untrained, x, "rollout").patch), ink, 4)
    assert float(trained.mean()) > 1.1 * area, (float(trained.mean()), area)
    assert abs(float(control.mean()) - area) < 0.05 * area  # near-uniform attention before training: no such gain


def test_guide_quantities_have_the_documented_shapes(tiny_bundle) -> None:
    model, _ = load_bundle(tiny_bundle)
    components, variance = maps.patch_filter_components(model, 28)
    assert components.shape == (28, 4, 4, 3) and bool((variance[:-1] >= variance[1:]).all())
    similarity = maps.position_similarity(model)
    torch.testing.assert_close(similarity.diagonal(), torch.ones(TINY.num_patches))
    _, attentions = maps.forward_with_attention(model, torch.randn(2, 3, 16, 16))
    distances = maps.mean_attention_distance(attentions, 4, 4)
    assert distances.shape == (TINY.depth, TINY.num_heads)
    assert float(maps.patch_distances(4, 4)[0, 15]) == pytest.approx(4 * 18**0.5)  # corner to corner, in pixels


# ------------------------------------------------------------------------------------ the export is unchanged


def _graph_bytes(model: torch.nn.Module, info, path: Path) -> bytes:
    export_model(model, info, path, verify=False)
    return onnx.load(str(path)).graph.SerializeToString()  # nodes, names, initializers, inputs and outputs


def test_export_is_the_same_before_and_after_explain_and_while_recording(tiny_bundle, tmp_path) -> None:
    model, info = load_bundle(tiny_bundle)
    before = _graph_bytes(model, info, tmp_path / "before.onnx")
    for method in maps.METHODS:
        maps.attention_maps(model, torch.randn(2, 3, 16, 16), method)
    after = _graph_bytes(model, info, tmp_path / "after.onnx")
    with maps.record_attention(model) as layers:  # even left on by mistake, tracing does not record
        recording = _graph_bytes(model, info, tmp_path / "recording.onnx")
        assert all(layer.recorded is None for layer in layers)
    assert after == before and recording == before
    nodes = onnx.load(str(tmp_path / "before.onnx")).graph.node
    assert sum(n.op_type == "Softmax" for n in nodes) == TINY.depth


# ------------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("method", maps.METHODS)
def test_explain_writes_a_png_and_the_map_per_image_and_an_error_row_per_bad_file(
    tiny_bundle, image_folder, tmp_path, method: str
) -> None:
    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(image_folder), str(tmp_path / "broken.png"), "--bundle",
                                 str(tiny_bundle), "--method", method, "-o", str(out), "--top-k", "2", "--json"])
    assert result.exit_code == 4, result.output  # some inputs failed, as predict
    report = json.loads(result.stdout)
    assert report["images_ok"] == 3 and report["images_failed"] == 1
    rows = {Path(row["path"]).name: row for row in report["results"]}
    assert rows["broken.png"]["ok"] is False and rows["broken.png"]["error"] == "not_an_image"
    for i in range(3):
        row = rows[f"{i}.png"]
        assert np.asarray(row["map"]).shape == (4, 4) and len(row["top_k"]) == 2
        assert sum(map(sum, row["map"])) + row["cls_self"] == pytest.approx(1, abs=1e-4)
        assert Path(row["png"]) == out / f"{i}.{method}.png"
        assert Path(row["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ("heads" in row) == (method == "cls")
        assert (row["explained_class"] == row["label"]) if method == "grad-rollout" else row["explained_class"] is None


def test_explain_class_picks_what_grad_rollout_explains(tiny_bundle, image_folder, tmp_path) -> None:
    maps_by_class = {}
    for label in ("cat", "dog"):
        result = runner.invoke(app, ["explain", str(image_folder / "0.png"), "--bundle", str(tiny_bundle),
                                     "--method", "grad-rollout", "--class", label, "-o", str(tmp_path), "--json"])
        assert result.exit_code == 0, result.output
        row = json.loads(result.stdout)["results"][0]
        assert row["explained_class"] == label
        maps_by_class[label] = np.asarray(row["map"])
    assert not np.allclose(maps_by_class["cat"], maps_by_class["dog"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "saliency"], "unknown --method 'saliency'"),
        (["--method", "grad-rollout", "--class", "horse"], "unknown --class 'horse'"),
        (["--class", "cat"], "--class picks the class grad-rollout explains"),
        (["--bundle", "no/such/bundle"], "no model bundle at no/such/bundle"),
    ],
)
def test_bad_requests_exit_2_with_a_clear_message(tiny_bundle, image_folder, args, message) -> None:
    argv = ["explain", str(image_folder), "--bundle", str(tiny_bundle), *args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_no_matching_input_exits_2(tiny_bundle, tmp_path) -> None:
    result = runner.invoke(app, ["explain", str(tmp_path / "*.png"), "--bundle", str(tiny_bundle)])
    assert result.exit_code == 2 and "no input matched" in result.output


def test_missing_matplotlib_exits_2_naming_the_extra(tiny_bundle, image_folder, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    result = runner.invoke(app, ["explain", str(image_folder), "--bundle", str(tiny_bundle)])
    assert result.exit_code == 2 and 'pip install "vitdeploy[plot]"' in result.output, result.output


def test_explain_help_does_not_import_torch() -> None:
    code = ("import sys; from vitdeploy.cli import main; sys.argv = ['vitdeploy', 'explain', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Example" in out.stdout


def test_guide_draws_one_small_png_from_the_held_out_images(digits_bundle, tmp_path) -> None:
    out = tmp_path / "guide.png"
    result = runner.invoke(app, ["explain", "--guide", "--bundle", str(digits_bundle), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert np.asarray(report["mean_attention_distance"]).shape == (4, 4) and report["images"] == 16
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size < 500_000


def test_guide_refuses_images_and_needs_a_recorded_dataset(tiny_bundle, image_folder, tmp_path) -> None:
    with_images = runner.invoke(app, ["explain", str(image_folder), "--guide", "--bundle", str(tiny_bundle)])
    assert with_images.exit_code == 2 and "give no IMAGES" in with_images.output
    no_dataset = runner.invoke(app, ["explain", "--guide", "--bundle", str(tiny_bundle), "-o", str(tmp_path / "g.png")])
    assert no_dataset.exit_code == 2 and "does not say where its val images are" in no_dataset.output
