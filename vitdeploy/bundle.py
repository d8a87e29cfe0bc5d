"""Model bundles: a self-describing directory from which a model can be rebuilt alone.

    BUNDLE/
      model.safetensors   weights (no pickle)
      config.json         model config, preprocessing spec, labels, metrics, dataset split, provenance,
                          and the sha256 of model.safetensors
      train_state.pt      optimizer/scheduler/epoch/RNG state for --resume (tensors and plain containers
                          only: loads with torch.load(weights_only=True))

Every file is written atomically, and all of a save's files are fully written under temporary names before any
is renamed into place, so an interrupted save leaves the previous bundle intact. config.json is renamed last
and names the weights' hash, so a bundle whose files still came from two saves is detected at load time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitdeploy.atomic import atomic_write_many
from vitdeploy.config import DEFAULT_MODELS_DIR, ModelConfig, PreprocessSpec, TrainConfig
from vitdeploy.errors import BundleError, ConfigError

BUNDLE_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"


@dataclass
class BundleInfo:
    """Everything in config.json: what the weights are, how to feed them, and how good they are."""

    model: ModelConfig
    preprocess: PreprocessSpec
    labels: list[str]
    train: TrainConfig | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # val_accuracy (fraction), val_loss, epoch, step...
    dataset: dict[str, Any] = field(default_factory=dict)  # name/root, split rule, seed, sizes
    provenance: dict[str, Any] = field(default_factory=dict)  # versions, git commit, created_at
    weights_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "model": self.model.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "labels": list(self.labels),
            "train": self.train.to_dict() if self.train else None,
            "metrics": self.metrics,
            "dataset": self.dataset,
            "provenance": self.provenance,
            "weights_sha256": self.weights_sha256,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BundleInfo:
        if d.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"unsupported bundle format {d.get('format')!r} (this vitdeploy reads {BUNDLE_FORMAT})")
        try:
            info = cls(
                model=ModelConfig.from_dict(d["model"]),
                preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                labels=list(d["labels"]),
                train=TrainConfig.from_dict(d["train"]) if d.get("train") else None,
                metrics=dict(d.get("metrics") or {}),
                dataset=dict(d.get("dataset") or {}),
                provenance=dict(d.get("provenance") or {}),
                weights_sha256=str(d.get("weights_sha256", "")),
            )
        except (KeyError, TypeError, ConfigError) as e:
            raise BundleError(f"config.json is incomplete or invalid: {e}") from None
        if len(info.labels) != info.model.num_classes:
            raise BundleError(
                f"config.json has {len(info.labels)} labels but the model has {info.model.num_classes} classes"
            )
        return info


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_bundle(folder: str | os.PathLike[str], model: Any, info: BundleInfo, train_state: dict | None = None) -> Path:
    """Write a bundle atomically, file by file; config.json (with the weights' hash) goes last."""
    import torch
    from safetensors.torch import save as safetensors_save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # DDP wraps the model; the bundle always holds the plain module's names.
    model = getattr(model, "module", model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = safetensors_save(tensors, metadata={"format": "pt"})
    info.weights_sha256 = sha256_bytes(weights)
    config_bytes = (json.dumps(info.to_dict(), indent=2) + "\n").encode()
    writers: dict[Path, Any] = {folder / WEIGHTS_FILE: lambda p: p.write_bytes(weights)}
    if train_state is not None:
        writers[folder / STATE_FILE] = lambda p: torch.save(train_state, p)
    writers[folder / CONFIG_FILE] = lambda p: p.write_bytes(config_bytes)
    atomic_write_many(writers)
    return folder


def read_bundle_info(folder: str | os.PathLike[str]) -> BundleInfo:
    """Read config.json only (torch-free)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"no model bundle at {folder} (expected a folder with {CONFIG_FILE} and {WEIGHTS_FILE})")
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise BundleError(f"{folder} is not a model bundle: {CONFIG_FILE} is missing")
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"cannot read {cfg_path}: {e}") from None
    return BundleInfo.from_dict(data)


def load_bundle(folder: str | os.PathLike[str], device: str = "cpu") -> tuple[Any, BundleInfo]:
    """Rebuild the model from the bundle alone; verify the weights are the ones config.json describes."""
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    from vitdeploy.model import build_model

    folder = Path(folder)
    info = read_bundle_info(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise BundleError(f"{folder} is incomplete: {WEIGHTS_FILE} is missing")
    data = weights_path.read_bytes()
    if info.weights_sha256 and sha256_bytes(data) != info.weights_sha256:
        raise BundleError(
            f"{weights_path} does not match config.json (sha256 differs): the bundle mixes files from two saves"
        )
    try:
        state = safetensors_load(data)
    except SafetensorError as e:
        raise BundleError(f"cannot read {weights_path}: {e}") from None
    model = build_model(info.model)
    expected = model.state_dict()
    problems = [f"missing: {k}" for k in expected if k not in state]
    problems += [f"unexpected: {k}" for k in state if k not in expected]
    problems += [
        f"{k}: weights {tuple(state[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise BundleError(f"weights in {folder} do not match its config: {shown}")
    model.load_state_dict(state)
    model.to(device).eval()
    return model, info


def load_train_state(folder: str | os.PathLike[str]) -> dict:
    import torch

    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise BundleError(f"cannot resume from {folder}: {STATE_FILE} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for a corrupt/unsafe file
        raise BundleError(f"cannot read {path}: {e}") from None


def find_latest_bundle(root: str | os.PathLike[str] = DEFAULT_MODELS_DIR) -> Path:
    """The most recently written bundle under `root`, preferring a run's `best/` over its `last/`.

    A bundle is any folder with a config.json; ties go to `best`.
    """
    root = Path(root)
    candidates = sorted(root.glob(f"**/{CONFIG_FILE}")) if root.is_dir() else []
    if not candidates:
        raise BundleError(f"no model bundle found under {root}/; train one first: vitdeploy train")

    def key(p: Path) -> tuple[float, int]:
        return (p.stat().st_mtime, 1 if p.parent.name == "best" else 0)

    newest = max(candidates, key=key)
    best = newest.parent.parent / "best" / CONFIG_FILE
    return best.parent if newest.parent.name == "last" and best.is_file() else newest.parent
