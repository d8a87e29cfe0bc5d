"""Model bundles: a self-describing directory from which a model can be rebuilt alone.

    BUNDLE/
      config.json                 model config, preprocessing spec, labels, metrics, dataset split, provenance,
                                  and the names and sha256 of the files below
      model.<sha256:16>.safetensors     weights (no pickle)
      train_state.<sha256:16>.pt        optimizer/scheduler/epoch/RNG state for --resume (tensors and plain
                                        containers only: loads with torch.load(weights_only=True))

A save is atomic as a whole: the weight and state files are named by their content, so writing them never
replaces a file the current config.json names; config.json is then replaced in one rename, the only one that
matters; the files it no longer names are removed last. Killed at any point, a bundle is the previous one or the
new one. A bundle's first save writes a hidden folder beside it and renames it into place whole, so a save killed
then leaves no folder at all (not an empty or half-written one). Temporary files and folders left by a killed
save are removed by the next save. Bundles written before this layout (model.safetensors, train_state.pt, no file
names in config.json) still load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitdeploy.core.atomic import atomic_folder, atomic_write_many, remove_stale_staging
from vitdeploy.core.config import ModelConfig, PreprocessSpec, TrainConfig
from vitdeploy.errors import BundleError, ConfigError
from vitdeploy.files.discovery import BUNDLE_MARKER

BUNDLE_FORMAT = 1
CONFIG_FILE = BUNDLE_MARKER  # the file that makes a folder a bundle
# The names of bundles saved before files were named by content (config.json without "files").
LEGACY_FILES = {"weights": "model.safetensors", "train_state": "train_state.pt"}
# How save_bundle names each file: (stem, suffix) around the first 16 hex digits of its sha256.
FILE_NAMING = {"weights": ("model", ".safetensors"), "train_state": ("train_state", ".pt")}


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
    files: dict[str, str] = field(default_factory=dict)  # "weights" / "train_state" -> file name in the bundle

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
            "files": self.files,
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
                files=dict(d.get("files") or LEGACY_FILES),
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
    """Write a bundle atomically as a whole (see the module docstring); `info.files` and `info.weights_sha256`
    are set to what was written."""
    import torch
    from safetensors.torch import save as safetensors_save

    folder = Path(folder)
    # DDP wraps the model; the bundle always holds the plain module's names.
    model = getattr(model, "module", model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    contents = {"weights": safetensors_save(tensors, metadata={"format": "pt"})}
    if train_state is not None:
        # Serialized in memory first, so that a full disk is an OSError of ours, not a torch RuntimeError.
        buffer = io.BytesIO()
        torch.save(train_state, buffer)
        contents["train_state"] = buffer.getvalue()
    info.weights_sha256 = sha256_bytes(contents["weights"])
    info.files = {kind: _content_name(kind, data) for kind, data in contents.items()}
    remove_stale_staging(folder)
    if folder.is_dir():
        _remove_stale_temporaries(folder)
        _write_files(folder, contents, info)
    else:  # the first save: the folder appears whole, or not at all
        with atomic_folder(folder) as staging:
            _write_files(staging, contents, info)
    return folder


def _write_files(folder: Path, contents: dict[str, bytes], info: BundleInfo) -> None:
    writers: dict[Path, Any] = {folder / info.files[kind]: _bytes_writer(data) for kind, data in contents.items()}
    writers[folder / CONFIG_FILE] = _bytes_writer((json.dumps(info.to_dict(), indent=2) + "\n").encode())
    atomic_write_many(writers)  # config.json is renamed last: the commit point
    _remove_unreferenced(folder, set(info.files.values()))


def is_bundle(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` holds a bundle's config.json (a JSON object with this format and a model entry): how
    vitdeploy recognises a folder it wrote, without trusting anything else in it."""
    try:
        data = json.loads((Path(folder) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == BUNDLE_FORMAT and isinstance(data.get("model"), dict)


def _content_name(kind: str, data: bytes) -> str:
    stem, suffix = FILE_NAMING[kind]
    return f"{stem}.{sha256_bytes(data)[:16]}{suffix}"


def _bytes_writer(data: bytes) -> Any:
    return lambda path: path.write_bytes(data)


def _bundle_files(folder: Path) -> list[Path]:
    """Weight and state files in `folder`, of this layout or the legacy one."""
    named = [p for stem, suffix in FILE_NAMING.values() for p in folder.glob(f"{stem}.*{suffix}")]
    return named + [folder / name for name in LEGACY_FILES.values() if (folder / name).is_file()]


def _remove_unreferenced(folder: Path, referenced: set[str]) -> None:
    for path in _bundle_files(folder):
        if path.name not in referenced:
            path.unlink(missing_ok=True)


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files (atomic.py names them .<final name>.<random>.tmp) that a killed save left behind."""
    for stem, _ in [*FILE_NAMING.values(), (CONFIG_FILE, "")]:
        for path in folder.glob(f".{stem}.*.tmp"):
            path.unlink(missing_ok=True)


def bundle_file(folder: str | os.PathLike[str], kind: str) -> Path:
    """The path of a bundle's "weights" or "train_state" file, as its config.json names it."""
    return Path(folder) / read_bundle_info(folder).files.get(kind, LEGACY_FILES[kind])


def read_bundle_info(folder: str | os.PathLike[str]) -> BundleInfo:
    """Read config.json only (torch-free)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"no model bundle at {folder} (expected a folder with {CONFIG_FILE} and the weights it names)")
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        runs = [folder / name for name in ("best", "last") if (folder / name / CONFIG_FILE).is_file()]
        hint = f"; it holds a training run: give its bundle, {runs[0]}" if runs else ""
        raise BundleError(f"{folder} is not a model bundle: {CONFIG_FILE} is missing{hint}")
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"cannot read {cfg_path}: {e}") from None
    return BundleInfo.from_dict(data)


def load_bundle(folder: str | os.PathLike[str], device: str = "cpu") -> tuple[Any, BundleInfo]:
    """Rebuild the model from the bundle alone; verify the weights are the ones config.json describes."""
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    from vitdeploy.model.vit import build_model

    folder = Path(folder)
    info = read_bundle_info(folder)
    weights_path = folder / info.files["weights"]
    if not weights_path.is_file():
        raise BundleError(f"{folder} is incomplete: {weights_path.name} is missing")
    data = weights_path.read_bytes()
    if not data:
        raise BundleError(f"{weights_path} is empty (0 bytes): the weights were lost after the bundle was saved")
    try:
        state = safetensors_load(data)
    except SafetensorError as e:
        raise BundleError(f"{weights_path} is truncated or corrupt: it does not parse as safetensors ({e})") from None
    if info.weights_sha256 and sha256_bytes(data) != info.weights_sha256:
        raise BundleError(f"{weights_path} is not the file config.json names (sha256 differs): it was replaced or "
                          "altered after the bundle was saved")
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
    """The training state for --resume, loaded with weights_only=True: tensors and plain containers, never a
    pickle that could run code."""
    import torch

    path = bundle_file(folder, "train_state")
    if not path.is_file():
        raise BundleError(f"cannot resume from {folder}: {path.name} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises retrying with weights_only=False, which would run the pickle: never pass
        # that on.
        raise BundleError(f"refusing {path}: it holds pickled objects other than tensors and plain containers, "
                          "which vitdeploy never loads") from None
    except Exception as e:  # torch raises several unrelated types (RuntimeError, EOFError, ...) for a corrupt file
        raise BundleError(f"cannot read {path}: {str(e).splitlines()[0]}") from None

