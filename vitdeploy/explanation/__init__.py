"""`vitdeploy explain`: what a ViT looks at in each image, and a guide to its mechanism on one trained model.

    image files -> decode + THE preprocessing (as predict) -> the model, recording every block's attention softmax
                -> cls | rollout | grad-rollout patch map -> one PNG per image (+ the numbers, for --json)
    bundle      -> patches, patch-embedding filters, position embeddings, attention distance, rollout -> guide PNG

maps.py computes (torch), render.py draws (matplotlib, imported lazily).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitdeploy.core import images
from vitdeploy.core.config import PreprocessSpec
from vitdeploy.core.inputs import expand_inputs
from vitdeploy.core.strict_json import record
from vitdeploy.errors import ConfigError, InputError
from vitdeploy.explanation import maps, render
from vitdeploy.files.bundle import BundleInfo, load_bundle  # the package's only bundle import
from vitdeploy.files.discovery import find_latest_bundle
from vitdeploy.files.outputs import EXPLAIN, check_output_file, check_output_folder
from vitdeploy.requests import DEFAULT_EXPLAIN_DIR, ExplainRequest

logger = logging.getLogger(__name__)

METHODS = maps.METHODS
BATCH = 32  # images per forward pass: grad-rollout keeps every block's activations for the backward
GUIDE_IMAGES = 16  # held-out images behind the attention-distance panel
GUIDE_EXAMPLES = 6  # of which this many are shown with their rollout
FILTER_COMPONENTS = 28  # as in the ViT paper's Figure 7
DECIMALS = 6
MAX_LABELS_SHOWN = 20


@dataclass
class ExplainResult:
    """One row per input (explained, or its error) and what was asked."""

    bundle: str
    method: str
    class_label: str | None
    out_dir: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_ok(self) -> int:
        return sum(row["ok"] for row in self.rows)

    @property
    def images_failed(self) -> int:
        return len(self.rows) - self.images_ok

    @property
    def passed(self) -> bool:
        """Every input was explained (the CLI: exit code 4 otherwise)."""
        return not self.images_failed

    def to_dict(self) -> dict[str, Any]:
        return record(self, exclude=("class_label", "rows"), **{"class": self.class_label}, images_ok=self.images_ok,
                      images_failed=self.images_failed, seconds=round(self.seconds, 3), results=self.rows)


def class_index(label: str, labels: list[str]) -> int:
    """The index of `label` among the bundle's labels, or ConfigError naming them."""
    if label in labels:
        return labels.index(label)
    shown = ", ".join(labels[:MAX_LABELS_SHOWN])
    if len(labels) > MAX_LABELS_SHOWN:
        shown += f", ... ({len(labels)} in all)"
    raise ConfigError(f"unknown --class {label!r}; the bundle's labels are: {shown}")


def check_request(method: str, class_label: str | None) -> None:
    """Usage errors before anything is loaded."""
    if method not in METHODS:
        raise ConfigError(f"unknown --method {method!r}; choose one of: {', '.join(METHODS)}")
    if class_label is not None and method != "grad-rollout":
        raise ConfigError(f"--class picks the class grad-rollout explains; {method} maps do not depend on a class")


def method_title(method: str, depth: int, heads: int, class_label: str | None) -> str:
    """The line that says, on each PNG, what its heat map is."""
    if method == "cls":
        return f"last block's cls-token attention (mean of {heads} heads)"
    if method == "rollout":
        return f"attention rollout through {depth} blocks"
    return f"gradient-weighted rollout through {depth} blocks: why {class_label!r}"


def explain(request: ExplainRequest) -> ExplainResult:
    """Explain each image with `request.method`: one PNG in `request.out` (default explain/) per image, and a row
    with its top-k and patch map.

    Undecodable files (and inputs that matched nothing) get an error row; InputError when nothing matched at all,
    or when the output folder is not a new or empty folder or one of explain's (unless `force`; outputs.py).
    """
    inputs, bundle, method, class_label = request.inputs, request.bundle, request.method, request.class_label
    out_dir, top_k = request.out or DEFAULT_EXPLAIN_DIR, request.top_k
    check_request(method, class_label)
    out_dir = check_output_folder(out_dir, EXPLAIN, force=request.force)
    if top_k < 1:
        raise ConfigError("--top-k must be at least 1")
    render.pyplot()  # fail before the model loads when matplotlib is missing
    started = time.perf_counter()
    paths, unmatched = expand_inputs(inputs, request.recursive)
    if not paths:
        raise InputError(f"no input matched: {', '.join(unmatched) or '(none given)'}")
    bundle_dir = bundle or find_latest_bundle()
    model, info = load_bundle(bundle_dir)
    target = class_index(class_label, info.labels) if class_label is not None else None
    result = ExplainResult(str(bundle_dir), method, class_label, str(out_dir))
    result.rows = [{"path": u, "ok": False, "error": "no_match", "message": "matched no file"} for u in unmatched]
    png_names: set[str] = set()
    for start in range(0, len(paths), BATCH):
        chunk = paths[start: start + BATCH]
        loaded = [_load(path, info.preprocess) for path in chunk]
        good = {i: k for k, i in enumerate(i for i, a in enumerate(loaded) if isinstance(a, np.ndarray))}
        found = maps.attention_maps(model, torch.from_numpy(np.stack([loaded[i] for i in good])), method, target) \
            if good else None
        for i, path in enumerate(chunk):
            if i not in good:
                result.rows.append({"path": str(path), "ok": False, "error": loaded[i].kind,
                                    "message": loaded[i].detail})
                logger.info("%s: %s: %s", path, loaded[i].kind, loaded[i].detail)
                continue
            png = out_dir / _unique_name(path, method, png_names)
            row = _explained_row(path, png, loaded[i], found, good[i], info, top_k, method)
            result.rows.append(row)
            logger.info("%s: %s (%.1f%%) -> %s", path, row["label"], 100 * row["probability"], png)
    result.seconds = time.perf_counter() - started
    return result


def _load(path: Path, spec: PreprocessSpec) -> np.ndarray | images.ImageDecodeError:
    """The model input (3, S, S) for one file, decoded and preprocessed exactly as predict does, or its error."""
    try:
        return images.preprocess(images.decode_image(path), spec)
    except images.ImageDecodeError as e:
        return e


def _unique_name(path: Path, method: str, taken: set[str]) -> str:
    """<stem>.<method>.png, with -2, -3... when two inputs share a stem."""
    name, n = f"{path.stem}.{method}.png", 1
    while name in taken:
        n += 1
        name = f"{path.stem}-{n}.{method}.png"
    taken.add(name)
    return name


def _explained_row(path: Path, png: Path, array: np.ndarray, found: maps.AttentionMaps, i: int, info: BundleInfo,
                   top_k: int, method: str) -> dict[str, Any]:
    """Draw image i's PNG and return its row: top-k, the class explained, and the map as numbers."""
    cfg = info.model
    grid = cfg.image_size // cfg.patch_size
    probabilities = found.logits[i].softmax(dim=0)
    order = probabilities.argsort(descending=True)[: min(top_k, len(info.labels))].tolist()
    top = [(info.labels[k], float(probabilities[k])) for k in order]
    explained = info.labels[int(found.target[i])] if found.target is not None else None
    patch = found.patch[i].reshape(grid, grid)  # (gh, gw), row-major like the patch tokens
    heads = None if found.heads is None else maps.patch_mass(found.heads[i]).reshape(-1, grid, grid).numpy()
    render.draw_explanation(render.ExplanationFigure(
        name=path.name,
        image=render.unnormalize(array, info.preprocess),
        patch_map=maps.patch_mass(patch.flatten()).reshape(grid, grid).numpy(),
        method_title=method_title(method, cfg.depth, cfg.num_heads, explained),
        top_k=top,
        heads=heads,
        heads_cls_self=None if found.heads is None else (1 - found.heads[i].sum(dim=-1)).numpy(),
    ), png)
    row: dict[str, Any] = {
        "path": str(path), "ok": True, "label": top[0][0], "probability": round(top[0][1], DECIMALS),
        "top_k": [{"label": label, "probability": round(p, DECIMALS)} for label, p in top],
        "explained_class": explained, "png": str(png),
        "map": np.round(patch.numpy().astype(float), DECIMALS).tolist(),
        "cls_self": round(float(found.cls_self[i]), DECIMALS),
    }
    if found.heads is not None:
        row["heads"] = np.round(found.heads[i].reshape(-1, grid, grid).numpy().astype(float), DECIMALS).tolist()
    return row


@dataclass
class GuideResult:
    """Where the guide went and the attention distances it plotted."""

    path: str
    bundle: str
    images: int  # held-out images behind the attention-distance panel
    mean_attention_distance: list[list[float]]  # (L, h) pixels
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return record(self, seconds=round(self.seconds, 3))


def guide(bundle: Path | None = None, out: Path = Path("guide.png")) -> GuideResult:
    """Draw the ViT mechanism on the bundle's own weights and held-out images into one PNG at `out`."""
    from vitdeploy.training.data import recorded_split_images

    render.pyplot()  # fail before the model loads when matplotlib is missing
    check_output_file(out)
    started = time.perf_counter()
    bundle_dir = bundle or find_latest_bundle()
    model, info = load_bundle(bundle_dir)
    cfg, spec = info.model, info.preprocess
    pairs = recorded_split_images(info.dataset, info.labels, "val", GUIDE_IMAGES, spec, spread=True)
    x = torch.from_numpy(images.preprocess_batch([image for image, _ in pairs], spec))
    with torch.no_grad():
        logits, attentions = maps.forward_with_attention(model, x)
    grid = cfg.image_size // cfg.patch_size
    rollout = maps.patch_mass(maps.cls_row(maps.attention_rollout(attentions))).reshape(-1, grid, grid)
    probabilities = logits.softmax(dim=1)
    examples = []
    # Spread over the 16 (held-out folders are sorted by class, so the first few would share one).
    for i in np.linspace(0, len(pairs) - 1, min(GUIDE_EXAMPLES, len(pairs))).round().astype(int):
        p, k = probabilities[i].max(dim=0)
        caption = f"predicted {info.labels[int(k)]} ({float(p):.0%})\ntrue {info.labels[pairs[i][1]]}"
        examples.append((render.unnormalize(x[i].numpy(), spec), rollout[i].numpy(), caption))
    components, variance = maps.patch_filter_components(model, FILTER_COMPONENTS)
    distances = maps.mean_attention_distance(attentions, grid, cfg.patch_size)
    accuracy = info.metrics.get("val_accuracy")
    title = (f"The ViT mechanism on {bundle_dir}: {cfg.depth} blocks x {cfg.num_heads} heads, D = {cfg.dim}, "
             f"{cfg.num_patches} patches + cls"
             + (f", held-out accuracy {accuracy:.1%}" if isinstance(accuracy, float) else ""))
    render.draw_guide(render.GuideFigure(
        title=title, image=examples[0][0], patch_size=cfg.patch_size, dim=cfg.dim,
        components=components.numpy(), component_variance=variance.numpy(),
        position_similarity=maps.position_similarity(model).numpy(),
        distances=distances.numpy(), uniform_distance=float(maps.patch_distances(grid, cfg.patch_size).mean()),
        distance_images=len(pairs), examples=examples,
    ), out)
    return GuideResult(str(out), str(bundle_dir), len(pairs), np.round(distances.double().numpy(), 3).tolist(),
                       time.perf_counter() - started)
