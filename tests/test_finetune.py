"""train --init: fine-tuning from an imported bundle (new head when the classes differ, position embeddings
interpolated for another image size, fine-tuning defaults)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytestmark = pytest.mark.slow  # imports and fine-tunes

pytest.importorskip("transformers")

from builders import captured_notes, smooth_rgb  # noqa: E402
from checkpoints import SMALL, hf_vit, save_hf  # noqa: E402

from vitdeploy import import_model  # noqa: E402
from vitdeploy.cli import app  # noqa: E402
from vitdeploy.errors import ConfigError  # noqa: E402
from vitdeploy.files.bundle import load_bundle, read_bundle_info  # noqa: E402
from vitdeploy.training.finetune import FINETUNE, initial_model, resample_pos_embed  # noqa: E402
from vitdeploy.training.run import TrainRequest, plan_run, train  # noqa: E402

runner = CliRunner()
SOURCE_LABELS = ["red", "green", "blue", "grey"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """A Hugging Face ViT (32 px, patch 8) imported as a bundle."""
    root = tmp_path_factory.mktemp("pretrained")
    folder = save_hf(hf_vit(SOURCE_LABELS, **SMALL), root / "hf")
    return import_model(folder, root / "bundle").bundle


def image_folder(root: Path, classes: list[str], per_class: int = 10) -> Path:
    """Photo-like 48 px images, each class with its own tint."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.asarray(smooth_rgb(48, 48, seed=100 * c + i), np.int16)
            arr[..., c % 3] += 60
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def non_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("head.") and k != "pos_embed"}


def test_fine_tuning_from_an_imported_bundle(imported: Path, tmp_path: Path) -> None:
    data = image_folder(tmp_path / "photos", ["cats", "dogs", "owls"])
    done = runner.invoke(app, ["train", "--init", str(imported), "--data", str(data), "--epochs", "2",
                               "--batch-size", "8", "--out", str(tmp_path / "run")])
    assert done.exit_code == 0, done.output
    assert "new head for the data's 3 classes (the bundle's 4 differ)" in done.output
    info = read_bundle_info(tmp_path / "run" / "last")
    source = read_bundle_info(imported)
    assert info.labels == ["cats", "dogs", "owls"]
    assert info.model == dataclasses.replace(source.model, num_classes=3)
    assert info.preprocess == source.preprocess  # the source's own preprocessing (Hugging Face: stretch, 0.5)
    assert info.train == dataclasses.replace(FINETUNE, epochs=2, batch_size=8)
    assert info.provenance["run"]["init"] == str(imported.resolve())
    assert len(info.metrics["history"]) == 2


def test_the_initial_model_holds_the_bundle_weights_and_a_new_head(imported: Path) -> None:
    source, info = load_bundle(imported)
    torch.manual_seed(0)
    with captured_notes() as lines:
        model = initial_model(imported, dataclasses.replace(info.model, num_classes=3), ["a", "b", "c"])
    got, want = model.state_dict(), source.state_dict()
    assert all(torch.equal(got[k], v) for k, v in non_head(want).items())
    assert torch.equal(got["pos_embed"], want["pos_embed"])
    assert got["head.weight"].shape == (3, info.model.dim)
    assert lines == ["new head for the data's 3 classes (the bundle's 4 differ), randomly initialised"]


def test_the_same_classes_keep_the_head(imported: Path) -> None:
    source, info = load_bundle(imported)
    with captured_notes() as lines:
        model = initial_model(imported, info.model, SOURCE_LABELS)
    assert torch.equal(model.state_dict()["head.weight"], source.state_dict()["head.weight"]) and not lines


def test_another_image_size_interpolates_the_position_embeddings(imported: Path) -> None:
    source, info = load_bundle(imported)
    plan = plan_run(TrainRequest(init=imported, image_size=48))
    assert plan.model.image_size == 48 and plan.spec.image_size == 48
    assert (plan.spec.resize_mode, plan.spec.interpolation, plan.spec.mean) == ("stretch", "bilinear", (0.5,) * 3)
    with captured_notes() as lines:
        model = initial_model(imported, plan.model, SOURCE_LABELS)
    pos = model.state_dict()["pos_embed"]
    assert pos.shape == (1, 1 + 6 * 6, info.model.dim)
    assert torch.equal(pos[:, 0], source.pos_embed[:, 0])  # the class token's embedding is kept
    assert lines == ["position embeddings interpolated from 4x4 to 6x6 patches (32 -> 48 px, bicubic)"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in non_head(source.state_dict()).items())
    x = torch.zeros(1, 3, 48, 48)
    assert model(x).shape == (1, len(SOURCE_LABELS))


def test_resampling_to_the_same_grid_changes_nothing() -> None:
    pos = torch.randn(1, 1 + 14 * 14, 8)
    assert torch.allclose(resample_pos_embed(pos, 14), pos, atol=1e-6)
    smaller = resample_pos_embed(pos, 7)
    assert smaller.shape == (1, 50, 8) and torch.equal(smaller[:, 0], pos[:, 0])


def test_shorter_side_specs_keep_their_crop_fraction_at_another_size() -> None:
    from vitdeploy.core.config import PreprocessSpec

    spec = PreprocessSpec(image_size=224, resize_size=248, interpolation="bicubic")  # timm: crop_pct 0.9
    assert spec.resized(384).resize_size == 425 and spec.resized(384).interpolation == "bicubic"


def test_fine_tuning_defaults_are_overridable_and_conflicts_are_refused(imported: Path, tmp_path: Path) -> None:
    plan = plan_run(TrainRequest(init=imported, lr=3e-4, epochs=4))
    assert (plan.train.lr, plan.train.epochs, plan.train.warmup_fraction) == (3e-4, 4, FINETUNE.warmup_fraction)
    with pytest.raises(ConfigError, match="drop --preset"):
        plan_run(TrainRequest(init=imported, preset="vit-ti16"))
    with pytest.raises(ConfigError, match="pass only one"):
        plan_run(TrainRequest(init=imported, resume=imported))
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        plan_run(TrainRequest(init=imported, image_size=36))


def test_fine_tuning_at_another_size_runs(imported: Path, tmp_path: Path) -> None:
    data = image_folder(tmp_path / "photos", ["a", "b"], per_class=6)
    with captured_notes() as notes:
        result = train(TrainRequest(init=imported, data=data, image_size=48, epochs=1, batch_size=4,
                                    out=tmp_path / "run"))
    assert any("interpolated from 4x4 to 6x6" in note for note in notes) and result.epochs == 1
    assert read_bundle_info(result.last).model.image_size == 48
