"""Training data: the embedded scikit-learn digits, or the user's image folder.

Both sources produce the same two things: a held-out tensor made with images.preprocess (THE preprocessing,
shared with verify and predict), and `train_batch(indices, epoch)` with augmentation that is a pure function of
(seed, epoch, sample), so a run is reproducible and resumable at any step, with any number of processes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vitdeploy.core import images
from vitdeploy.core.config import PreprocessSpec
from vitdeploy.errors import DataError
from vitdeploy.files.bundle import read_bundle_info
from vitdeploy.files.discovery import find_latest_bundle
from vitdeploy.files.outputs import SAMPLES, check_output_folder
from vitdeploy.requests import SamplesRequest, TrainRequest

DIGITS_NAME = "sklearn-digits"
DIGITS_SPLIT_SEED = 0  # fixed, so that held-out accuracy is comparable across training seeds
MAX_REPORTED_BAD_FILES = 10


@dataclass
class TrainingData:
    """A dataset ready for the training loop."""

    labels: list[str]
    spec: PreprocessSpec
    val_x: torch.Tensor  # (N_val, 3, S, S) float32, exactly images.preprocess of each held-out image
    val_y: torch.Tensor  # (N_val,) int64
    train_y: torch.Tensor  # (N_train,) int64
    info: dict[str, Any] = field(default_factory=dict)  # recorded in the bundle: source, split rule, sizes

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    def train_batch(self, indices: torch.Tensor, epoch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------- digits


def digit_images() -> tuple[list[Image.Image], np.ndarray]:
    """The 1,797 real 8x8 handwritten digits shipped with scikit-learn, as 8-bit RGB images (white on black)."""
    intensities, targets = _digits_table()
    gray = np.rint(intensities * (255.0 / 16.0)).astype(np.uint8)  # sklearn stores 0..16 intensities
    return [Image.fromarray(g, "L").convert("RGB") for g in gray], targets


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) intensities 0..16 and the labels, read from the file scikit-learn ships: importing sklearn
    (and the SciPy it loads) costs seconds of every train, verify and predict, the file 0.1 s. load_digits()
    reads the same file; it is the fallback should a release move it."""
    found = importlib.util.find_spec("sklearn")  # finds the package without importing it
    shipped = Path(found.origin).parent / "datasets" / "data" / "digits.csv.gz" if found and found.origin else None
    if shipped is None or not shipped.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target.astype(np.int64)
    table = np.loadtxt(shipped, delimiter=",")  # one row per image: 64 intensities, then the label
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def digits_split(n: int, val_fraction: float, split_seed: int = DIGITS_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) index split of the digits."""
    order = np.random.default_rng(split_seed).permutation(n)
    n_val = round(n * val_fraction)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass(kw_only=True)
class DigitsData(TrainingData):
    """Digits held fully in memory; augmentation is a small random affine warp on the batch tensor."""

    train_x: torch.Tensor  # (N_train, 3, S, S), preprocessed like val_x; augmented per batch

    def train_batch(self, indices: torch.Tensor, epoch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.train_x[indices]
        g = torch.Generator().manual_seed(_mix(seed, epoch, int(indices[0])))
        n = x.shape[0]
        angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(12)
        scale = 1 + (torch.rand(n, generator=g) * 2 - 1) * 0.10
        shift = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.12  # fraction of half the image: ~1 px at 16 px
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # "border" repeats the black background rather than padding with normalised zero (mid grey).
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return x, self.train_y[indices]


def load_digits_data(spec: PreprocessSpec, val_fraction: float) -> DigitsData:
    imgs, targets = digit_images()
    train_idx, val_idx = digits_split(len(imgs), val_fraction)
    all_x = torch.from_numpy(images.preprocess_batch(imgs, spec))
    all_y = torch.from_numpy(targets)
    return DigitsData(
        labels=[str(i) for i in range(10)],
        spec=spec,
        val_x=all_x[val_idx],
        val_y=all_y[val_idx],
        train_y=all_y[train_idx],
        info={
            "source": DIGITS_NAME,
            "split": "seeded-permutation",
            "split_seed": DIGITS_SPLIT_SEED,
            "val_fraction": val_fraction,
            "num_train": len(train_idx),
            "num_val": len(val_idx),
        },
        train_x=all_x[train_idx],
    )


# ---------------------------------------------------------------------------------------------- image folder


@dataclass(frozen=True)
class FolderSplit:
    root: Path
    labels: list[str]
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    rule: str  # "train/val folders" or "hash of relative path"
    ignored: int  # non-image files skipped


def scan_image_folder(root: str | os.PathLike[str], val_fraction: float) -> FolderSplit:
    """Find class folders and files; split by train/ and val/ folders when present, else by path hash."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"--data must be a folder with one subfolder per class; {root} is a file")
    has_split = (root / "train").is_dir() and (root / "val").is_dir()
    if has_split:
        labels, train, ignored_t = _scan_classes(root / "train")
        val_labels, val, ignored_v = _scan_classes(root / "val", labels)
        unknown = sorted(set(val_labels) - set(labels))
        if unknown:
            raise DataError(f"{root}/val has classes that {root}/train lacks: {', '.join(unknown)}")
        rule, ignored = "train/val folders", ignored_t + ignored_v
    else:
        labels, files, ignored = _scan_classes(root)
        train, val = [], []
        for path, label in files:
            (val if _hash_fraction(path.relative_to(root)) < val_fraction else train).append((path, label))
        rule = "hash of relative path"
    if len(labels) < 2:
        raise DataError(f"{root} has {len(labels)} class folder(s) with images; training needs at least 2")
    if not train:
        raise DataError(f"{root} has no training images")
    if not val:
        raise DataError(f"{root}: the held-out split is empty; add images or a val/ folder")
    return FolderSplit(root, labels, train, val, rule, ignored)


def _scan_classes(folder: Path, labels: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]], int]:
    """(class names found, [(file, label index in `labels` or in the names found)], non-image files skipped)."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found: dict[str, list[Path]] = {}
    ignored = 0
    for d in class_dirs:
        files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
        imgs = [p for p in files if images.is_image_file(p)]
        ignored += len(files) - len(imgs)
        if imgs:
            found[d.name] = imgs
    empty = [d.name for d in class_dirs if d.name not in found]
    if found and empty:  # dropping them silently would train a model that cannot name those classes
        raise DataError(f"{folder}: class folder(s) with no images: {', '.join(empty)} (add images, or remove the "
                        "folder if it is not a class)")
    if not found:
        raise DataError(
            f"{folder} has no class subfolders with images "
            f"(expected {folder}/<class>/<image> with suffixes {', '.join(images.IMAGE_SUFFIXES)})"
        )
    names = labels if labels is not None else sorted(found)
    index = {name: i for i, name in enumerate(names)}
    files_with_labels = [(p, index.get(name, -1)) for name, paths in found.items() for p in paths]
    return sorted(found), files_with_labels, ignored


def _hash_fraction(relative: Path) -> float:
    """Map a file's relative path to [0, 1): the split never changes when other files are added."""
    digest = hashlib.sha256(relative.as_posix().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def decode_all(paths: list[Path], workers: int) -> list[Image.Image]:
    """Decode every file or raise DataError naming the unreadable ones (never substitute other samples).

    Decodes exactly as predict does (images.decode_image), so held-out evaluation sees the same pixels.
    """
    def one(p: Path) -> Image.Image | images.ImageDecodeError:
        try:
            return images.decode_image(p)
        except images.ImageDecodeError as e:
            return e

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, paths))
    bad = [r for r in results if isinstance(r, images.ImageDecodeError)]
    if bad:
        shown = "\n  ".join(str(e) for e in bad[:MAX_REPORTED_BAD_FILES])
        more = f"\n  ... and {len(bad) - MAX_REPORTED_BAD_FILES} more" if len(bad) > MAX_REPORTED_BAD_FILES else ""
        raise DataError(f"{len(bad)} of {len(paths)} images could not be read; fix or remove them:\n  {shown}{more}")
    return results  # type: ignore[return-value]


@dataclass(kw_only=True)
class FolderData(TrainingData):
    """User images, decoded once and kept at the preprocessing resize size; random-resized-crop + flip."""

    # Kept at the resize size only: that bounds memory and is all augmentation needs.
    train_images: list[Image.Image]
    workers: int = TrainRequest.workers  # threads augmenting a batch

    def _augment(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        w, h = img.size
        area = w * h
        for _ in range(10):  # RandomResizedCrop: 35-100% of the area, aspect 3/4..4/3
            target = area * rng.uniform(0.35, 1.0)
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                break
        else:
            cw = ch = min(w, h)
            left, top = (w - cw) // 2, (h - ch) // 2
        size = self.spec.image_size
        crop = img.resize((size, size), images.RESAMPLE[self.spec.interpolation], box=(left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return images.normalize(crop, self.spec)

    def train_batch(self, indices: torch.Tensor, epoch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = [int(i) for i in indices]
        rngs = [np.random.default_rng(_mix(seed, epoch, i)) for i in idx]
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            arrays = list(pool.map(lambda a: self._augment(self.train_images[a[0]], a[1]), zip(idx, rngs)))
        return torch.from_numpy(np.stack(arrays)), self.train_y[indices]


def load_folder_data(root: str | os.PathLike[str], spec: PreprocessSpec, val_fraction: float, workers: int) -> FolderData:
    split = scan_image_folder(root, val_fraction)
    # One pass over every file, so that all unreadable ones are reported together.
    decoded = decode_all([p for p, _ in split.train + split.val], workers)
    train_imgs, val_imgs = decoded[: len(split.train)], decoded[len(split.train) :]
    return FolderData(
        labels=split.labels,
        spec=spec,
        val_x=torch.from_numpy(images.preprocess_batch(val_imgs, spec)),
        val_y=torch.tensor([y for _, y in split.val], dtype=torch.int64),
        train_y=torch.tensor([y for _, y in split.train], dtype=torch.int64),
        info={
            "source": "image-folder",
            "root": str(split.root.resolve()),
            "split": split.rule,
            "val_fraction": val_fraction if split.rule != "train/val folders" else None,
            "num_train": len(split.train),
            "num_val": len(split.val),
            "ignored_non_image_files": split.ignored,
        },
        train_images=[images.resize_shorter_side(im, spec.resize_size, spec.interpolation) for im in train_imgs],
        workers=workers,
    )


# ----------------------------------------------------------------------------------------------- shared


def load_training_data(
    data: str | os.PathLike[str] | None, spec: PreprocessSpec, val_fraction: float, workers: int
) -> TrainingData:
    if data is None:
        return load_digits_data(spec, val_fraction)
    return load_folder_data(data, spec, val_fraction, workers)


def recorded_split_images(
    dataset: dict[str, Any],
    labels: list[str],
    split: str,
    limit: int | None = None,
    spec: PreprocessSpec | None = None,
    spread: bool = False,
) -> list[tuple[Image.Image, int]]:
    """Re-create one split ("train" or "val") of a bundle's data from its recorded dataset info: decoded RGB
    images and label index. Takes the first `limit` images, or with `spread` `limit` images evenly spread over the
    split (so that every class is represented). With the bundle's `spec`, folder images are decoded on two threads
    and an unreadable one is reported with the others; without it, one by one. The pixels are the same.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    source = dataset.get("source")
    if source == DIGITS_NAME:
        imgs, targets = digit_images()
        train_idx, val_idx = digits_split(len(imgs), float(dataset["val_fraction"]), int(dataset.get("split_seed", 0)))
        chosen = _pick(list(train_idx if split == "train" else val_idx), limit, spread)
        return [(imgs[i], int(targets[i])) for i in chosen]
    if source == "image-folder":
        root = Path(dataset["root"])
        found = scan_image_folder(root, float(dataset.get("val_fraction") or 0.2))
        if found.labels != list(labels):
            raise DataError(f"the classes in {root} changed since training: {found.labels} vs {labels}")
        chosen_files = _pick(found.train if split == "train" else found.val, limit, spread)
        decoded = decode_all([p for p, _ in chosen_files], 2) if spec else _decode_full(chosen_files)
        return list(zip(decoded, [y for _, y in chosen_files]))
    raise DataError(f"the bundle does not say where its {split} images are (dataset source {source!r})")


def heldout_images(
    dataset: dict[str, Any], labels: list[str], limit: int | None = None, spec: PreprocessSpec | None = None
) -> list[tuple[Image.Image, int]]:
    """The bundle's held-out images: what verify and the precision gate judge a model on."""
    return recorded_split_images(dataset, labels, "val", limit, spec)


def _pick(items: list[Any], limit: int | None, spread: bool) -> list[Any]:
    if not limit or len(items) <= limit:
        return items
    if not spread:
        return items[:limit]
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def _decode_full(files: list[tuple[Path, int]]) -> list[Image.Image]:
    try:
        return [images.decode_image(p) for p, _ in files]
    except images.ImageDecodeError as e:
        raise DataError(f"a held-out image can no longer be read: {e}") from None


def write_samples(request: SamplesRequest) -> list[Path]:
    """`vitdeploy samples`: the first `request.count` held-out images of the bundle's dataset, as PNG files."""
    check_output_folder(request.out, SAMPLES, force=request.force, option="OUT_DIR")
    info = read_bundle_info(request.bundle or find_latest_bundle())
    return write_heldout_samples(info.dataset, info.labels, request.out, request.count)


def write_heldout_samples(
    dataset: dict[str, Any], labels: list[str], out_dir: str | os.PathLike[str], count: int
) -> list[Path]:
    """Save the first `count` held-out images as PNG files named <n>_true-<label>.png (for trying predict)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, (img, label) in enumerate(heldout_images(dataset, labels, limit=count)):
        path = out / f"{n:03d}_true-{labels[label]}.png"
        img.save(path)
        written.append(path)
    return written


def _mix(*parts: int) -> int:
    """A 63-bit seed from several integers (stable across runs and platforms)."""
    digest = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
