"""Training: determinism, exact resume, Ctrl-C, torchrun, image folders, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.errors import ConfigError, DataError, DeviceError
from vitdeploy.files.bundle import bundle_file, read_bundle_info
from vitdeploy.training.run import TrainRequest, train

pytestmark = pytest.mark.slow  # every test trains (torchrun, resume, Ctrl-C)

runner = CliRunner()


def weights(bundle: Path) -> bytes:
    return bundle_file(bundle, "weights").read_bytes()


def test_tiny_training_writes_self_describing_bundles(tmp_path: Path) -> None:
    result = train(TrainRequest(preset="tiny", out=tmp_path / "run"))
    assert result.best == tmp_path / "run" / "best" and not result.interrupted
    info = read_bundle_info(result.best)
    assert info.labels == [str(i) for i in range(10)]
    assert 0.0 <= info.metrics["val_accuracy"] <= 1.0
    assert info.metrics["val_accuracy"] == result.val_accuracy
    assert info.dataset["source"] == "sklearn-digits" and info.dataset["num_val"] == 359
    assert info.provenance["seed"] == 0 and "torch" in info.provenance["versions"]
    assert info.preprocess.image_size == 16
    assert len(result.history) == 2


def test_the_digits_are_sklearns_read_without_importing_it(monkeypatch) -> None:
    from sklearn.datasets import load_digits

    from vitdeploy.training.data import digit_images

    digits = load_digits()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # importing it now raises ImportError
    images, targets = digit_images()
    assert (targets == digits.target).all() and len(images) == len(digits.images) == 1797
    for image, expected in zip(images, digits.images):
        assert image.size == (8, 8) and image.mode == "RGB"
        assert np.abs(np.asarray(image)[..., 0] / 255 * 16 - expected).max() <= 16 / 255 / 2 + 1e-9


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tmp_path: Path) -> None:
    a = train(TrainRequest(preset="tiny", out=tmp_path / "a", epochs=1, batch_size=256))
    b = train(TrainRequest(preset="tiny", out=tmp_path / "b", epochs=1, batch_size=256))
    c = train(TrainRequest(preset="tiny", out=tmp_path / "c", epochs=1, batch_size=256, seed=1))
    assert weights(a.last) == weights(b.last)
    assert weights(a.last) != weights(c.last)


def test_adamw_steps_as_torch_optim_adamw_lambdalr_and_clip_grad_norm_do_bit_for_bit() -> None:
    """engine.AdamW skips torch.optim's machinery (and its torch._dynamo import), not its arithmetic."""
    import dataclasses

    import torch

    from vitdeploy.core.config import get_preset
    from vitdeploy.model.vit import build_model
    from vitdeploy.training.engine import AdamW, warmup_cosine

    preset = get_preset("tiny")
    cfg = dataclasses.replace(preset.train, lr=5e-2, grad_clip=0.5)  # large steps, and clipping most of them
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(build_model(preset.model))
    ours, theirs = models
    decay = [p for n, p in theirs.named_parameters() if p.ndim >= 2 and n not in ("cls_token", "pos_embed")]
    no_decay = [p for n, p in theirs.named_parameters() if p.ndim < 2 or n in ("cls_token", "pos_embed")]
    reference = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(reference, warmup_cosine(12, cfg))
    optimizer = AdamW(ours, cfg, 12)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % preset.model.num_classes
    for _ in range(12):
        for model in models:
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), cfg.grad_clip)
        reference.step()
        schedule.step()
        optimizer.step()
        assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    # A train state written before engine.AdamW holds torch.optim's state: a resume takes it up where it was.
    resumed = AdamW(ours, cfg, 12)
    resumed.load_state_dict(reference.state_dict())
    assert resumed.steps == 12 and all(torch.equal(a, b) for a, b in zip(
        resumed.state_dict().values(), optimizer.state_dict().values()) if isinstance(a, torch.Tensor))


def test_resume_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    full = train(TrainRequest(preset="tiny", out=tmp_path / "full", epochs=2, batch_size=256))  # 5 steps an epoch
    total = full.steps
    # Stop mid-epoch (not on an epoch boundary) to exercise the within-epoch position too.
    half = total // 2 + 3
    first = train(TrainRequest(preset="tiny", out=tmp_path / "split", epochs=2, batch_size=256, stop_after_steps=half))
    assert first.interrupted and first.steps == half
    assert first.resume_command == f"vitdeploy train --resume {tmp_path / 'split' / 'last'}"
    second = train(TrainRequest(resume=tmp_path / "split" / "last"))
    assert second.steps == total and not second.interrupted
    assert weights(second.last) == weights(full.last)
    assert read_bundle_info(second.last).metrics["history"] == read_bundle_info(full.last).metrics["history"]


def test_the_digits_presets_train_on_one_thread_unless_omp_num_threads_says_otherwise(tmp_path, monkeypatch) -> None:
    import torch

    from vitdeploy.training.distributed import intra_op_threads
    from vitdeploy.training.run import plan_run

    assert plan_run(TrainRequest(out=tmp_path / "d")).threads == 1  # the default preset: digits
    assert plan_run(TrainRequest(preset="vit-ti16", out=tmp_path / "v")).threads is None  # torch's default
    train(TrainRequest(preset="tiny", out=tmp_path / "r", epochs=1, batch_size=256, stop_after_steps=1))
    assert plan_run(TrainRequest(resume=tmp_path / "r" / "last")).threads == 1  # the resumed run's preset's
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        with intra_op_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # restored
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's (or torchrun's) choice wins
        with intra_op_threads(1):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_resume_with_a_different_config_shows_the_difference(tmp_path: Path) -> None:
    train(TrainRequest(preset="tiny", out=tmp_path / "r", epochs=1, stop_after_steps=2))
    with pytest.raises(ConfigError) as e:
        train(TrainRequest(resume=tmp_path / "r" / "last", preset="digits", lr=0.1))
    message = str(e.value)
    assert "model.dim: 32 -> 64" in message and "train.lr: 0.002 -> 0.1" in message


def test_a_train_state_torch_optim_wrote_resumes_where_it_stopped(tmp_path: Path) -> None:
    """Runs stopped before engine.AdamW saved torch.optim.AdamW's state (a dict per tensor) and LambdaLR's."""
    import torch

    from vitdeploy.files.bundle import load_bundle
    from vitdeploy.training.engine import AdamW

    full = train(TrainRequest(preset="tiny", out=tmp_path / "full", epochs=2, batch_size=256))  # 5 steps an epoch
    train(TrainRequest(preset="tiny", out=tmp_path / "split", epochs=2, batch_size=256, stop_after_steps=7))
    last = tmp_path / "split" / "last"
    path = bundle_file(last, "train_state")
    state = torch.load(path, weights_only=True)
    model, info = load_bundle(last)
    groups = AdamW(model, info.train, 10).param_groups  # torch.optim's groups held the same tensors in this order
    tensors = [p for group in groups for p in group["params"]]
    moments = {m: state["optimizer"][m].split([p.numel() for p in tensors]) for m in ("exp_avg", "exp_avg_sq")}
    state["optimizer"] = {
        "state": {i: {"step": torch.tensor(7.0), **{m: moments[m][i].view_as(p) for m in moments}}
                  for i, p in enumerate(tensors)},
        "param_groups": [{"params": list(range(len(groups[0]["params"])))},
                         {"params": list(range(len(groups[0]["params"]), len(tensors)))}],
    }
    state["scheduler"] = {"last_epoch": 7, "base_lrs": [info.train.lr] * 2}
    torch.save(state, path)
    resumed = train(TrainRequest(resume=last))
    assert resumed.steps == full.steps and weights(resumed.last) == weights(full.last)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda state: state.pop("epoch"), "'epoch' is missing"),
        (lambda state: state.update(history="none"), "'history' is str"),
        (lambda state: state.update(step_in_epoch=2.5), "'step_in_epoch' is float"),
        (lambda state: state.update(torch_rng=[1, 2]), "'torch_rng' is list"),
        (lambda state: state.update(optimizer={}), "optimizer state"),
    ],
    ids=["missing-key", "history-not-a-list", "step-not-a-count", "rng-not-a-tensor", "optimizer-state-empty"],
)
def test_resume_refuses_a_train_state_of_the_wrong_structure(tmp_path: Path, corrupt, message: str) -> None:
    import torch

    train(TrainRequest(preset="tiny", out=tmp_path / "r", epochs=1, stop_after_steps=2))
    path = bundle_file(tmp_path / "r" / "last", "train_state")
    state = torch.load(path, weights_only=True)
    corrupt(state)
    torch.save(state, path)
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "r" / "last")])
    assert result.exit_code == 2, result.output
    assert "train_state" in result.output and message in result.output.replace("\n", "")


def test_cli_json_output_and_exit_code(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vitdeploy", "train", "--preset", "tiny", "--epochs", "1", "--batch-size", "256",
         "--out", str(tmp_path / "run"), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)  # stdout holds only the JSON; progress went to stderr
    assert set(summary) >= {"bundle", "val_accuracy", "epochs", "seconds"}
    assert summary["bundle"] == str(tmp_path / "run" / "best") and summary["epochs"] == 1
    assert "epoch 1/1" in out.stderr


def test_ctrl_c_saves_last_bundle_prints_resume_command_and_exits_130(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitdeploy", "train", "--preset", "tiny", "--epochs", "500", "--batch-size", "256",
         "--out", str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # Wait until the first epoch's last bundle exists, so training is surely under way.
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "last" / "config.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"vitdeploy train --resume {tmp_path / 'run' / 'last'}" in err.replace("\n", "")
    info = read_bundle_info(tmp_path / "run" / "last")
    assert info.metrics["step"] > 0


def test_torchrun_two_cpu_processes_produce_a_bundle(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vitdeploy",
         "train", "--preset", "tiny", "--epochs", "1", "--batch-size", "256", "--device", "cpu", "--out",
         str(tmp_path / "ddp"), "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    info = read_bundle_info(tmp_path / "ddp" / "best")
    assert info.provenance["processes"] == 2
    assert json.loads(out.stdout)["epochs"] == 1  # only rank 0 prints the summary


# ------------------------------------------------------------------------------------------- image folders


def write_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (40, 30)) -> None:
    rng = np.random.default_rng(0)
    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = np.zeros((*size[::-1], 3), np.uint8)
            base[..., c % 3] = 200  # each class has its own dominant colour: learnable
            noise = rng.integers(0, 50, base.shape, dtype=np.uint8)
            Image.fromarray(base + noise).save(root / name / f"img {i}.png")


def test_image_folder_training_with_hash_split(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", {"red": 12, "green": 12, "blue": 12})
    (tmp_path / "data" / "red" / "notes.txt").write_text("not an image: ignored")
    result = train(TrainRequest(preset="tiny", data=tmp_path / "data", out=tmp_path / "run", epochs=2, batch_size=8))
    info = read_bundle_info(result.last)
    assert info.labels == ["blue", "green", "red"]
    assert info.dataset["split"] == "hash of relative path"
    assert info.dataset["num_train"] + info.dataset["num_val"] == 36
    assert info.dataset["ignored_non_image_files"] == 1


def test_image_folder_with_train_and_val_folders(tmp_path: Path) -> None:
    write_folder(tmp_path / "data" / "train", {"a": 8, "b": 8})
    write_folder(tmp_path / "data" / "val", {"a": 2, "b": 2})
    result = train(TrainRequest(preset="tiny", data=tmp_path / "data", out=tmp_path / "run", epochs=1, batch_size=4))
    info = read_bundle_info(result.last)
    assert (info.dataset["num_train"], info.dataset["num_val"]) == (16, 4)
    assert info.dataset["split"] == "train/val folders"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "no class subfolders with images"),
        (lambda root: write_folder(root, {"only": 5}), "at least 2"),
    ],
    ids=["missing", "empty", "one-class"],
)
def test_bad_data_folders(tmp_path: Path, setup, message: str) -> None:
    setup(tmp_path / "data")
    with pytest.raises(DataError, match=message):
        train(TrainRequest(preset="tiny", data=tmp_path / "data", out=tmp_path / "run"))


def test_unreadable_images_are_reported_not_substituted(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", {"a": 6, "b": 6})
    (tmp_path / "data" / "a" / "broken.jpg").write_text("this is text, not a JPEG")
    (tmp_path / "data" / "b" / "empty.png").write_bytes(b"")
    result = runner.invoke(app, ["train", "--preset", "tiny", "--data", str(tmp_path / "data"),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "2 of" in result.output and "broken.jpg" in result.output and "empty.png" in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_preset_and_cuda_without_gpu_fail_clearly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--preset", "vit-huge", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "unknown preset 'vit-huge'" in result.output
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="--device cuda requested"):
            train(TrainRequest(preset="tiny", device="cuda", out=tmp_path / "r"))
