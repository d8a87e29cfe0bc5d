"""Model bundles: round trip, self-consistency checks, atomic writes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from vitdeploy.core.atomic import atomic_write, atomic_write_many
from vitdeploy.core.config import ModelConfig, get_preset
from vitdeploy.errors import BundleError
from vitdeploy.files.bundle import CONFIG_FILE, BundleInfo, bundle_file, load_bundle, load_train_state, save_bundle
from vitdeploy.files.discovery import find_latest_bundle
from vitdeploy.model.vit import build_model

TINY = ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, num_classes=3)


def make_info(cfg: ModelConfig = TINY) -> BundleInfo:
    return BundleInfo(
        model=cfg,
        preprocess=get_preset("tiny").preprocess_spec(),
        labels=["cat", "dog", "bird"][: cfg.num_classes],
        metrics={"val_accuracy": 0.5},
        dataset={"source": "test"},
    )


def test_round_trip_rebuilds_the_same_model(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model(TINY).eval()
    state = {"epoch": 3, "step_in_epoch": 0, "optimizer": {"state": {}, "param_groups": []}}
    save_bundle(tmp_path / "b", model, make_info(), train_state=state)

    loaded, info = load_bundle(tmp_path / "b")
    assert info.model == TINY and info.labels == ["cat", "dog", "bird"]
    assert info.metrics["val_accuracy"] == 0.5
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert load_train_state(tmp_path / "b")["epoch"] == 3


def test_weights_that_do_not_match_the_config_are_refused(tmp_path: Path) -> None:
    save_bundle(tmp_path / "b", build_model(TINY), make_info())
    cfg = json.loads((tmp_path / "b" / CONFIG_FILE).read_text())
    cfg["model"]["dim"] = 64
    (tmp_path / "b" / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="do not match its config.*patch_embed.proj.weight"):
        load_bundle(tmp_path / "b")


def test_weights_from_another_save_are_detected(tmp_path: Path) -> None:
    save_bundle(tmp_path / "a", build_model(TINY), make_info())
    save_bundle(tmp_path / "b", build_model(TINY), make_info())
    os.replace(bundle_file(tmp_path / "a", "weights"), bundle_file(tmp_path / "b", "weights"))
    with pytest.raises(BundleError, match="sha256 differs"):
        load_bundle(tmp_path / "b")


@pytest.mark.parametrize("missing", ["config", "weights"])
def test_incomplete_bundle_is_refused(tmp_path: Path, missing: str) -> None:
    save_bundle(tmp_path / "b", build_model(TINY), make_info())
    path = tmp_path / "b" / CONFIG_FILE if missing == "config" else bundle_file(tmp_path / "b", "weights")
    path.unlink()
    with pytest.raises(BundleError, match=path.name.replace(".", r"\.")):
        load_bundle(tmp_path / "b")


def test_missing_bundle_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "nope")


def test_interrupted_bundle_save_leaves_previous_bundle_intact(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    first = build_model(TINY)
    save_bundle(tmp_path / "b", first, make_info(), train_state={"epoch": 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}

    def crash(*args, **kwargs):  # the train-state write dies half-way through the save
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_bundle(tmp_path / "b", build_model(TINY), make_info(), train_state={"epoch": 2})

    after = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    assert after == before  # no file replaced, no temporary file left behind
    loaded, _ = load_bundle(tmp_path / "b")
    assert torch.equal(loaded.head.weight, first.head.weight)


def test_atomic_write_failure_keeps_old_file_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")

    def half_then_fail(p: Path) -> None:
        p.write_text("new but incomp")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_many({target: lambda p: p.write_text("x"), tmp_path / "g": half_then_fail})
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_find_latest_bundle_prefers_best_of_newest_run(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="train one first"):
        find_latest_bundle(tmp_path)
    save_bundle(tmp_path / "old" / "best", build_model(TINY), make_info())
    time.sleep(0.01)
    save_bundle(tmp_path / "new" / "best", build_model(TINY), make_info())
    time.sleep(0.01)
    save_bundle(tmp_path / "new" / "last", build_model(TINY), make_info())
    assert find_latest_bundle(tmp_path) == tmp_path / "new" / "best"
    assert not list((tmp_path / "new" / "best").glob("train_state*"))
