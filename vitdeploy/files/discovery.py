"""Which model the user means when they name none, or name a folder: the newest export or bundle under models/.

One rule for both: the most recently written candidate under the folder, hidden folders skipped (export and train
stage their files in hidden folders before moving them into place).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vitdeploy.core.config import DEFAULT_MODELS_DIR
from vitdeploy.errors import BundleError, ModelFileError

BUNDLE_MARKER = "config.json"  # a bundle is a folder holding one (bundle.CONFIG_FILE)


def newest_under(root: Path, pattern: str, keep: Callable[[Path], bool] = lambda p: True,
                 tie_break: Callable[[Path], int] = lambda p: 0) -> Path | None:
    """The most recently modified file matching `pattern` anywhere under `root` (not in hidden folders) that
    `keep` accepts; equal times go to the higher `tie_break`, then the later path. None when there is none."""
    candidates = [
        p for p in (root.rglob(pattern) if root.is_dir() else [])
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts) and keep(p)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, tie_break(p), str(p)))


def is_variant(path: Path) -> bool:
    """model.int8.onnx is a variant when model.onnx sits beside it."""
    base_stem, dot, _variant = path.stem.rpartition(".")
    return bool(dot) and path.with_name(base_stem + path.suffix).is_file()


def find_latest_model(root: str | os.PathLike[str] = DEFAULT_MODELS_DIR, option: str = "MODEL") -> Path:
    """The most recently written *.onnx under `root` (searched recursively, newest modification time).

    Skipped: hidden files and folders (export stages its file in a hidden folder before moving it into place), and
    precision variants written beside an export (X.int8.onnx, X.fp16.onnx, ... next to X.onnx): the default is
    the plain export; a variant is run by naming it. `option`: how the command takes a model file, for the
    message when there is none (MODEL, the first argument; predict's --model FILE).
    """
    root = Path(root)
    newest = newest_under(root, "*.onnx", keep=lambda p: not is_variant(p))
    if newest is None:
        raise ModelFileError(f"no .onnx file under {root}/; run `vitdeploy export` first or give the model file "
                             f"({option})")
    return newest


def resolve_model(model: Path | None, option: str = "MODEL") -> Path:
    """A model argument as the user gave it (a file, a folder to search, or None for models/) -> one .onnx."""
    if model is None:
        return find_latest_model(option=option)
    if model.is_dir():
        return find_latest_model(model, option)
    if not model.exists():
        raise ModelFileError(f"{model}: no such model file")
    return model


def find_latest_bundle(root: str | os.PathLike[str] = DEFAULT_MODELS_DIR) -> Path:
    """The most recently written bundle under `root`, preferring a run's `best/` over its `last/` (a folder with a
    config.json is a bundle; ties go to best/)."""
    root = Path(root)
    newest = newest_under(root, BUNDLE_MARKER, tie_break=lambda p: p.parent.name == "best")
    if newest is None:
        raise BundleError(f"no model bundle found under {root}/; train one first: vitdeploy train")
    best = newest.parent.parent / "best" / BUNDLE_MARKER
    return best.parent if newest.parent.name == "last" and best.is_file() else newest.parent
