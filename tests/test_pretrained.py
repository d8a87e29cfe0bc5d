"""vitdeploy import: Hugging Face and timm ViT checkpoints -> bundles with the source model's logits and
preprocessing; everything that is not a plain ViT, or does not fit, is refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytestmark = pytest.mark.slow  # builds Hugging Face reference models

pytest.importorskip("transformers")

from builders import captured_notes  # noqa: E402
from checkpoints import (  # noqa: E402
    SMALL,
    TIMM_SETTINGS,
    VIT_TI16,
    hf_logits,
    hf_vit,
    predict_against_reference,
    sample_photos,
    save_hf,
    save_timm,
    timm_eval_transform,
    timm_state_dict,
)

from vitdeploy import import_model  # noqa: E402
from vitdeploy.cli import app  # noqa: E402
from vitdeploy.errors import EXIT_BAD_INPUT, CheckpointError  # noqa: E402
from vitdeploy.files.bundle import load_bundle, read_bundle_info  # noqa: E402
from vitdeploy.pretrained import file_sha256  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
LABELS = ["tabby", "collie", "heron", "tulip"]
LOGIT_ATOL = 1e-5



def vitdeploy_logits(bundle: Path, x: np.ndarray) -> np.ndarray:
    model, _ = load_bundle(bundle)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def logit_diff(bundle: Path, reference, seed: int, size: int = 32) -> float:
    """Largest |logit difference| between a bundle and the reference transformers model, same random inputs."""
    x = np.random.default_rng(seed).standard_normal((3, 3, size, size), dtype=np.float32)
    return float(np.abs(vitdeploy_logits(bundle, x) - hf_logits(reference, x)).max())


@pytest.fixture(scope="module")
def small_hf(tmp_path_factory) -> tuple[object, Path]:
    """Hugging Face's own settings (LayerNorm eps 1e-12)."""
    model = hf_vit(LABELS, **SMALL)
    return model, save_hf(model, tmp_path_factory.mktemp("hf") / "vit-small")


@pytest.fixture(scope="module")
def small_timm(tmp_path_factory) -> tuple[object, Path]:
    """timm's settings (LayerNorm eps 1e-6), its file layout, and a timm hub config.json with model_args."""
    model = hf_vit(LABELS, seed=1, **SMALL, **TIMM_SETTINGS)
    hf_folder = save_hf(model, tmp_path_factory.mktemp("ref") / "hf")
    config = {
        "architecture": "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
        "num_classes": len(LABELS),
        "global_pool": "token",
        "model_args": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3},
        "label_names": LABELS,
        "pretrained_cfg": {"input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 0.875,
                           "crop_mode": "center", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                           "num_classes": len(LABELS)},
    }
    path = save_timm(timm_state_dict(hf_folder), tmp_path_factory.mktemp("timm") / "model.safetensors", config)
    return model, path


@pytest.fixture(scope="module")
def ti16(tmp_path_factory) -> tuple[object, Path, Path]:
    """ViT-Ti/16 configured like timm's vit_tiny_patch16_224: a timm state dict named by --timm-model only."""
    labels = [f"c{i}" for i in range(10)]
    model = hf_vit(labels, seed=2, **VIT_TI16, **TIMM_SETTINGS)
    hf_folder = save_hf(model, tmp_path_factory.mktemp("ti16-ref") / "hf")
    state = timm_state_dict(hf_folder)
    root = tmp_path_factory.mktemp("ti16")
    return model, save_timm(state, root / "vit_tiny.safetensors"), save_timm(state, root / "vit_tiny.pth")


def test_hugging_face_folder_gives_the_reference_logits(small_hf, tmp_path: Path) -> None:
    model, folder = small_hf
    result = import_model(folder, tmp_path / "b")
    assert logit_diff(result.bundle, model, seed=0) < LOGIT_ATOL
    info = read_bundle_info(result.bundle)
    assert info.labels == LABELS
    assert info.model.layer_norm_eps == 1e-12 and info.model.gelu == "erf" and info.model.qkv_bias
    assert (info.model.dim, info.model.depth, info.model.num_heads, info.model.patch_size) == (48, 2, 3, 8)
    spec = info.preprocess  # ViTImageProcessor: straight to 32x32, bilinear, mean/std 0.5
    assert (spec.resize_mode, spec.resize_size, spec.interpolation, spec.mean) == ("stretch", 32, "bilinear", (0.5,) * 3)
    imported = info.provenance["imported"]
    assert imported["format"] == "huggingface" and imported["sha256"] == file_sha256(folder / "model.safetensors")


def test_tanh_gelu_and_qkv_without_bias_give_the_reference_logits_and_export(tmp_path: Path) -> None:
    from vitdeploy.exporting.exporter import export_onnx

    model = hf_vit(LABELS, seed=3, **SMALL, hidden_act="gelu_pytorch_tanh", qkv_bias=False)
    result = import_model(save_hf(model, tmp_path / "hf"), tmp_path / "b")
    assert (result.model.gelu, result.model.qkv_bias) == ("tanh", False)
    assert logit_diff(result.bundle, model, seed=4) < LOGIT_ATOL
    assert export_onnx(result.bundle, opset=17).parity.passed


def test_timm_checkpoint_with_its_config_gives_the_reference_logits(small_timm, tmp_path: Path) -> None:
    model, path = small_timm
    result = import_model(path, tmp_path / "b")
    assert logit_diff(result.bundle, model, seed=1) < LOGIT_ATOL
    info = read_bundle_info(result.bundle)
    assert info.labels == LABELS and info.model.layer_norm_eps == 1e-6
    spec = info.preprocess  # pretrained_cfg: bicubic, crop_pct 0.875 -> shorter side floor(32 / 0.875) = 36
    assert (spec.resize_mode, spec.resize_size, spec.interpolation) == ("shorter_side", 36, "bicubic")
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert info.provenance["imported"]["format"] == "timm"
    assert info.provenance["imported"]["sha256"] == file_sha256(path)


def test_a_wrong_layer_norm_eps_would_show(small_timm, tmp_path: Path) -> None:
    """timm's 1e-6 against Hugging Face's 1e-12 moves these logits by ~1e-5; vitdeploy is far closer than that."""
    from transformers import ViTForImageClassification

    model, path = small_timm
    wrong = ViTForImageClassification(model.config.__class__(**{**model.config.to_dict(), "layer_norm_eps": 1e-12}))
    wrong.load_state_dict(model.state_dict())
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32), dtype=np.float32)
    eps_effect = np.abs(hf_logits(wrong.eval(), x) - hf_logits(model, x)).max()
    assert logit_diff(import_model(path, tmp_path / "b").bundle, model, seed=1) < eps_effect / 5


@pytest.mark.parametrize("which", [1, 2], ids=["safetensors", "pth"])
def test_timm_vit_ti16_named_on_the_command_line(ti16, tmp_path: Path, which: int) -> None:
    model, path = ti16[0], ti16[which]
    done = runner.invoke(app, ["import", str(path), "--timm-model", "vit_tiny_patch16_224", "-o", str(tmp_path / "b"),
                               "--json"])
    assert done.exit_code == 0, done.output
    assert "class_0..class_9" in done.output  # no labels in a bare state dict: named, with a warning
    assert logit_diff(tmp_path / "b", model, seed=2, size=224) < LOGIT_ATOL
    info = read_bundle_info(tmp_path / "b")
    assert (info.model.dim, info.model.depth, info.model.num_heads, info.model.image_size) == (192, 12, 3, 224)
    # timm's defaults for vit_* (no config.json): bicubic, crop_pct 0.9, mean/std 0.5
    assert (info.preprocess.resize_size, info.preprocess.interpolation, info.preprocess.mean) == (248, "bicubic",
                                                                                                  (0.5,) * 3)


def test_labels_file_names_the_classes_and_must_fit_the_head(small_hf, tmp_path: Path) -> None:
    _, folder = small_hf
    names = tmp_path / "labels.txt"
    names.write_text("a\nb\nc\nd\n")
    assert import_model(folder, tmp_path / "b", labels=names).labels == ["a", "b", "c", "d"]
    names.write_text("a\nb\n")
    with pytest.raises(CheckpointError, match="names 2 classes, the checkpoint's head has 4"):
        import_model(folder, tmp_path / "c", labels=names)


def test_a_backbone_without_classifier_gets_a_new_head_for_labels(small_hf, tmp_path: Path) -> None:
    from transformers import ViTModel

    model, _ = small_hf
    backbone = ViTModel(model.config, add_pooling_layer=True)
    backbone.load_state_dict(model.vit.state_dict(), strict=False)
    backbone.save_pretrained(tmp_path / "backbone")
    with pytest.raises(CheckpointError, match="no classifier: pass --labels"):
        import_model(tmp_path / "backbone", tmp_path / "b")
    (tmp_path / "labels.txt").write_text("x\ny\nz\n")
    with captured_notes() as notes:
        result = import_model(tmp_path / "backbone", tmp_path / "b", labels=tmp_path / "labels.txt")
    assert result.new_head and result.labels == ["x", "y", "z"]
    assert any("new head for the 3 classes" in n for n in notes)
    assert any("pooler" in n for n in notes)  # ViTModel's pooler is not part of a classifier: said, not hidden
    # the encoder is the source's: features before the head agree
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 3, 32, 32), dtype=np.float32))
    ours, _ = load_bundle(result.bundle)
    with torch.no_grad():
        want = backbone.eval()(pixel_values=x).last_hidden_state
        assert (ours.forward_features(x) - want).abs().max() < LOGIT_ATOL


# --- refused: not a plain ViT --------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, named", [
    ({"reg_token": (1, 4, 48)}, "register tokens"),
    ({"blocks.0.ls1.gamma": (48,)}, "layer scale"),
    ({"blocks.0.attn.q_norm.weight": (16,)}, "q/k norm"),
    ({"fc_norm.weight": (48,)}, "fc_norm"),
    ({"dist_token": (1, 1, 48), "head_dist.weight": (4, 48)}, "distillation token"),
    ({"blocks.0.attn.relative_position_bias_table": (49, 3)}, "relative position bias"),
    ({"attn_pool.latent": (1, 1, 48)}, "attention-pooling"),
    ({"norm_pre.weight": (48,)}, "norm_pre"),
])
def test_state_dicts_that_are_not_a_plain_vit_are_refused_by_name(small_timm, tmp_path: Path, extra, named) -> None:
    from safetensors.torch import load_file

    state = load_file(small_timm[1])
    state.update({k: torch.zeros(shape) for k, shape in extra.items()})
    path = save_timm(state, tmp_path / "ckpt.safetensors", json.loads((small_timm[1].parent / "config.json").read_text()))
    with pytest.raises(CheckpointError, match=named) as err:
        import_model(path, tmp_path / "b")
    assert "not a plain ViT" in str(err.value) and not (tmp_path / "b").exists()


@pytest.mark.parametrize("name, named", [
    ("deit_tiny_distilled_patch16_224", "distillation token"),
    ("vit_base_patch16_clip_224.openai", "norm_pre"),
    ("vit_small_patch14_dinov2", "layer scale"),
    ("vit_base_patch16_reg4_gap_256", "register tokens"),
    ("vit_medium_patch16_gap_256", "average pooling"),
    ("vit_base_patch16_siglip_224", "attention-pooling"),
    ("deit3_small_patch16_224", "layer scale"),
    ("resnet50", "not a plain timm VisionTransformer"),
    ("vit_giant_patch14_224", "not a plain timm VisionTransformer"),
])
def test_timm_model_names_that_are_not_a_plain_vit_are_refused(ti16, tmp_path: Path, name, named) -> None:
    with pytest.raises(CheckpointError, match=named):
        import_model(ti16[1], tmp_path / "b", timm_model=name)


@pytest.mark.parametrize("args, named", [
    ({"global_pool": "avg"}, "pooling other than the class token"),
    ({"class_token": False}, "no class token"),
    ({"init_values": 1e-5}, "layer scale"),
    ({"no_embed_class": True}, "no_embed_class"),
    ({"img_size": [32, 24]}, "non-square"),
    ({"block_fn": "ParallelScalingBlock"}, "block_fn"),
])
def test_timm_config_model_args_that_are_not_a_plain_vit_are_refused(small_timm, tmp_path: Path, args, named) -> None:
    config = json.loads((small_timm[1].parent / "config.json").read_text())
    config["model_args"].update(args)
    path = save_timm(timm_state_dict_of(small_timm[1]), tmp_path / "model.safetensors", config)
    with pytest.raises(CheckpointError, match=named):
        import_model(path, tmp_path / "b")


def timm_state_dict_of(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


@pytest.mark.parametrize("change, named", [
    ({"model_type": "deit"}, "distillation token"),
    ({"model_type": "dinov2"}, "layer scale"),
    ({"architectures": ["ViTForMaskedImageModeling"]}, "ViTForMaskedImageModeling is not imported"),
    ({"image_size": [32, 24]}, "non-square"),
    ({"hidden_act": "quick_gelu"}, "quick_gelu"),
])
def test_hugging_face_configs_that_are_not_a_plain_vit_are_refused(small_hf, tmp_path: Path, change, named) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in small_hf[1].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=named):
        import_model(folder, tmp_path / "b")


def test_position_embeddings_without_the_class_token_are_named(small_timm, tmp_path: Path) -> None:
    state = timm_state_dict_of(small_timm[1])
    state["pos_embed"] = state["pos_embed"][:, 1:]  # timm's no_embed_class layout
    path = save_timm(state, tmp_path / "model.safetensors", json.loads((small_timm[1].parent / "config.json").read_text()))
    with pytest.raises(CheckpointError, match=r"pos_embed \(1, 16, 48\) in the file, \(1, 17, 48\) expected.*no_embed_class"):
        import_model(path, tmp_path / "b")


# --- bad input ------------------------------------------------------------------------------------------------


def test_a_folder_with_neither_format_is_refused_naming_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hello")
    done = runner.invoke(app, ["import", str(tmp_path / "src"), "-o", str(tmp_path / "b")])
    assert done.exit_code == EXIT_BAD_INPUT
    assert "neither a Hugging Face model folder" in done.output and "notes.txt" in done.output


def test_a_state_dict_without_its_model_name_is_refused(ti16, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="--timm-model"):
        import_model(ti16[1], tmp_path / "b")


def test_missing_and_extra_tensors_are_listed(small_timm, tmp_path: Path) -> None:
    state = timm_state_dict_of(small_timm[1])
    del state["blocks.1.mlp.fc2.weight"], state["norm.bias"]
    state["blocks.1.extra.weight"] = torch.zeros(3)
    path = save_timm(state, tmp_path / "model.safetensors", json.loads((small_timm[1].parent / "config.json").read_text()))
    with pytest.raises(CheckpointError) as err:
        import_model(path, tmp_path / "b")
    message = str(err.value)
    assert "missing blocks.1.mlp.fc2.weight, norm.bias" in message and "unexpected blocks.1.extra.weight" in message


def test_shapes_that_disagree_with_the_named_model_are_listed(ti16, tmp_path: Path) -> None:
    done = runner.invoke(app, ["import", str(ti16[1]), "--timm-model", "vit_small_patch16_224", "-o", str(tmp_path / "b")])
    assert done.exit_code == EXIT_BAD_INPUT, done.output
    # the width the name implies is refused first, by name, before anything of its size is allocated
    assert "embed_dim (of vit_small_patch16_224) is 384, but the weights hold cls_token (1, 1, 192)" in done.output


class Payload:
    """Unpickling this would create a file: the test checks that it is never unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_holding_objects_other_than_tensors_is_refused_without_running_it(ti16, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    state = timm_state_dict_of(ti16[1])
    state["payload"] = Payload(str(marker))
    torch.save(state, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="pickled objects other than tensors"):
        import_model(tmp_path / "evil.pth", tmp_path / "b", timm_model="vit_tiny_patch16_224")
    assert not marker.exists()


def test_a_state_dict_with_non_tensor_entries_is_refused(ti16, tmp_path: Path) -> None:
    state = {**timm_state_dict_of(ti16[1]), "epoch": 3}
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"not tensors: epoch \(int\)"):
        import_model(tmp_path / "odd.pth", tmp_path / "b", timm_model="vit_tiny_patch16_224")


def test_import_needs_neither_timm_nor_transformers(small_hf, small_timm, tmp_path: Path) -> None:
    blocker = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("transformers", "timm", "torchvision", "huggingface_hub"):
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Blocker())
import vitdeploy
for source, out in zip(sys.argv[1::2], sys.argv[2::2]):
    vitdeploy.import_model(source, out)
"""
    done = subprocess.run(
        [sys.executable, "-c", blocker, str(small_hf[1]), str(tmp_path / "hf"), str(small_timm[1]), str(tmp_path / "t")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    from vitdeploy.files.bundle import bundle_file

    assert bundle_file(tmp_path / "hf", "weights").is_file() and bundle_file(tmp_path / "t", "weights").is_file()


# --- deployed: export, verify, predict --------------------------------------------------------------------------


def test_import_export_verify_predict(small_timm, tmp_path: Path) -> None:
    photos = sample_photos(tmp_path / "photos")
    assert runner.invoke(app, ["import", str(small_timm[1]), "-o", str(tmp_path / "b")]).exit_code == 0
    exported = runner.invoke(app, ["export", str(tmp_path / "b"), "--opset", "17"])
    assert exported.exit_code == 0, exported.output
    onnx_path = tmp_path / "b" / "model.onnx"
    verified = runner.invoke(app, ["verify", str(onnx_path), "--images", str(tmp_path / "photos"), "--batch-sizes", "1,4"])
    assert verified.exit_code == 0, verified.output
    predicted = runner.invoke(app, ["predict", str(tmp_path / "photos"), "--model", str(onnx_path), "--format", "json"])
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)["predictions"]
    assert len(rows) == len(photos) and all(row["ok"] and row["label"] in LABELS for row in rows)


def test_real_photos_match_hugging_face_preprocessing_and_model(small_hf, tmp_path: Path) -> None:
    from PIL import Image
    from transformers import ViTImageProcessor

    from vitdeploy.exporting.exporter import export_onnx

    model, folder = small_hf
    paths = sample_photos(tmp_path / "photos")
    result = import_model(folder, tmp_path / "b")
    onnx_path = export_onnx(result.bundle, verify=False).path
    processor = ViTImageProcessor.from_pretrained(folder)
    pixels = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="np")["pixel_values"]
    found = predict_against_reference(onnx_path, paths, hf_logits(model, pixels))
    print(f"Hugging Face ViTImageProcessor + model vs vitdeploy predict: {found}")
    assert found["top1_agreement"] == 1.0 and found["max_abs_logit_diff"] < 1e-4


def test_real_photos_match_timm_eval_transform_and_model(small_timm, tmp_path: Path) -> None:
    from PIL import Image

    from vitdeploy.exporting.exporter import export_onnx

    model, path = small_timm
    paths = sample_photos(tmp_path / "photos")
    result = import_model(path, tmp_path / "b")
    onnx_path = export_onnx(result.bundle, verify=False).path
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the config.json's pretrained_cfg
    pixels = np.stack([timm_eval_transform(Image.open(p), 32, 0.875, mean, std) for p in paths])
    found = predict_against_reference(onnx_path, paths, hf_logits(model, pixels))
    print(f"timm eval transform + reference model vs vitdeploy predict: {found}")
    assert found["top1_agreement"] == 1.0 and found["max_abs_logit_diff"] < 1e-3
