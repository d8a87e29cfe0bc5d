"""The figures of `vitdeploy explain`: numpy in, PNG out. matplotlib is imported only when a figure is drawn."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitdeploy.core.atomic import atomic_write_bytes
from vitdeploy.core.config import PreprocessSpec
from vitdeploy.errors import ConfigError

DPI = 90
HEAT = "inferno"
HEAT_ALPHA = 0.6
# Grids up to this many patches a side get their values written in the map panel.
ANNOTATE_MAX_GRID = 8


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or ConfigError (exit 2) saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError('vitdeploy explain draws with matplotlib: pip install "vitdeploy[plot]"') from None
    return plt


def unnormalize(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A model input (C, H, W) back to the RGB image (H, W, 3) in [0, 1] that the model saw."""
    image = x.transpose(1, 2, 0) * np.asarray(spec.std) + np.asarray(spec.mean)  # (H, W, C) in spec.channel_order
    if spec.channel_order == "BGR":
        image = image[..., ::-1]
    return np.clip(image, 0.0, 1.0)


def _save(figure: Any, path: Path, palette: bool = False) -> Path:
    """Write the figure as a PNG, atomically; `palette`: 256 adaptive colours, no dithering (a figure full of
    photos is then about a third of the size: 238 KB instead of 792 KB for the ViT-Ti/16 guide)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=DPI, format="png")
    pyplot().close(figure)
    if palette:
        image = Image.open(buffer).convert("RGB").quantize(256, dither=Image.Dither.NONE)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _overlay(ax: Any, image: np.ndarray, grid_map: np.ndarray, title: str, vmax: float | None = None) -> Any:
    """The image with one heat-map square per patch on top (nearest: a patch has one value, not a gradient)."""
    h, w = image.shape[:2]
    ax.imshow(image, interpolation="nearest")
    mappable = ax.imshow(grid_map, cmap=HEAT, alpha=HEAT_ALPHA, vmin=0, vmax=vmax or grid_map.max(),
                         extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return mappable


@dataclass
class ExplanationFigure:
    """What one image's PNG shows; maps are (gh, gw) shares of the patch mass (each sums to 1)."""

    name: str
    image: np.ndarray  # (H, W, 3) in [0, 1]: the input as the model saw it
    patch_map: np.ndarray  # (gh, gw)
    method_title: str
    top_k: list[tuple[str, float]]  # (label, probability), best first
    heads: np.ndarray | None = None  # (h, gh, gw) for the cls method
    heads_cls_self: np.ndarray | None = None  # (h,) each head's cls->cls weight


def draw_explanation(fig_data: ExplanationFigure, path: Path) -> Path:
    """One PNG: input, heat-map overlay, the map with its values, top-k bars; per-head maps below for `cls`."""
    plt = pyplot()
    heads = fig_data.heads
    head_cols = 0 if heads is None else min(len(heads), 6)
    head_rows = 0 if heads is None else -(-len(heads) // head_cols)
    figure = plt.figure(figsize=(13, 3.6 + 2.4 * head_rows), layout="constrained")
    top, bottom = (figure, None) if heads is None else figure.subfigures(2, 1, height_ratios=[3.6, 2.4 * head_rows])
    ax_input, ax_overlay, ax_map, ax_top = top.subplots(1, 4, width_ratios=[1, 1, 1.15, 1.1])
    ax_input.imshow(fig_data.image, interpolation="nearest")
    ax_input.set_title("input as the model saw it\n(after preprocessing)", fontsize=9)
    ax_input.axis("off")
    _overlay(ax_overlay, fig_data.image, fig_data.patch_map, "heat map over the input")
    _draw_map(ax_map, fig_data.patch_map, figure)
    labels = [label for label, _ in fig_data.top_k]
    probabilities = [p for _, p in fig_data.top_k]
    bars = ax_top.barh(range(len(labels)), probabilities, color="tab:blue")
    ax_top.bar_label(bars, [f"{p:.1%}" for p in probabilities], fontsize=8, padding=2)
    ax_top.set_yticks(range(len(labels)), labels, fontsize=8)
    ax_top.invert_yaxis()
    ax_top.set_xlim(0, 1.25)  # room for the percentages
    ax_top.set_xticks([0, 0.5, 1])
    ax_top.set_xlabel("probability", fontsize=8)
    ax_top.set_title(f"top-{len(labels)} predictions", fontsize=9)
    top.suptitle(f"{fig_data.name}: {fig_data.method_title}", fontsize=10)
    if heads is not None:
        axes = np.atleast_1d(bottom.subplots(head_rows, head_cols)).ravel()
        vmax = float(heads.max())  # one scale for all heads, so they compare
        for i, ax in enumerate(axes):
            if i < len(heads):
                title = f"head {i + 1} (to cls: {fig_data.heads_cls_self[i]:.0%})"
                mappable = _overlay(ax, fig_data.image, heads[i], title, vmax)
            else:
                ax.axis("off")
        bottom.colorbar(mappable, ax=list(axes), shrink=0.8, label="share of patch mass")
        bottom.suptitle("each head of the last block: cls-token attention to the patches", fontsize=9)
    return _save(figure, path)


def _draw_map(ax: Any, grid_map: np.ndarray, figure: Any) -> None:
    """The patch map alone, on the patch grid, with its values written in when the grid is small."""
    mappable = ax.imshow(grid_map, cmap=HEAT, vmin=0, interpolation="nearest")
    gh, gw = grid_map.shape
    if max(gh, gw) <= ANNOTATE_MAX_GRID:
        threshold = grid_map.max() / 2
        for (r, c), value in np.ndenumerate(grid_map):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > threshold else "white")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"map: {gh}x{gw} patches", fontsize=9)
    figure.colorbar(mappable, ax=ax, shrink=0.8, label="share of patch mass")


def mosaic(tiles: np.ndarray, rows: int, cols: int, gap: int = 1, fill: float = np.nan) -> np.ndarray:
    """Lay (k, h, w[, c]) tiles out row-major on a rows x cols grid with `gap` pixels of `fill` between them."""
    k, h, w = tiles.shape[:3]
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *tiles.shape[3:]), fill, dtype=float)
    for i in range(k):
        r, c = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = tiles[i]
    return out


@dataclass
class GuideFigure:
    """Everything the guide draws, as numpy arrays."""

    title: str
    image: np.ndarray  # (H, W, 3): the example cut into patches
    patch_size: int
    dim: int
    components: np.ndarray  # (k, P, P, C) principal components of the patch-embedding filters
    component_variance: np.ndarray  # (k,) variance share of each
    position_similarity: np.ndarray  # (n, n) cosine similarity of position embeddings
    distances: np.ndarray  # (L, h) mean attention distance in pixels
    uniform_distance: float  # what uniform attention over the patches would give
    distance_images: int
    examples: list[tuple[np.ndarray, np.ndarray, str]]  # (image (H, W, 3), rollout map (gh, gw), caption)


def draw_guide(guide: GuideFigure, path: Path) -> Path:
    """The ViT mechanism on one model, in the spirit of Figure 7 of the ViT paper, as one PNG."""
    plt = pyplot()
    figure = plt.figure(figsize=(17, 10.5), layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=[1, 1.1])
    patches_fig, filters_fig, position_fig = top.subfigures(1, 3, width_ratios=[1.25, 1.1, 1])
    distance_fig, rollout_fig = bottom.subfigures(1, 2, width_ratios=[1, 1.7])
    _draw_patches(patches_fig, guide)
    _draw_filters(filters_fig, guide)
    _draw_positions(position_fig, guide)
    _draw_distances(distance_fig, guide)
    _draw_rollouts(rollout_fig, guide)
    figure.suptitle(guide.title, fontsize=13)
    return _save(figure, path, palette=True)


def _draw_patches(fig: Any, guide: GuideFigure) -> None:
    image, p = guide.image, guide.patch_size
    h, w = image.shape[:2]
    gh, gw = h // p, w // p
    ax_image, ax_tiles = fig.subplots(1, 2)
    ax_image.imshow(image, interpolation="nearest")
    for k in range(1, gw):
        ax_image.axvline(k * p - 0.5, color="tab:orange", lw=0.8)
    for k in range(1, gh):
        ax_image.axhline(k * p - 0.5, color="tab:orange", lw=0.8)
    ax_image.set_title(f"{h}x{w} input, {gh}x{gw} grid", fontsize=9)
    tiles = image.reshape(gh, p, gw, p, 3).transpose(0, 2, 1, 3, 4).reshape(gh * gw, p, p, 3)  # (n, P, P, 3)
    ax_tiles.imshow(mosaic(tiles, gh, gw, gap=max(1, p // 4), fill=1.0), interpolation="nearest")
    ax_tiles.set_title(f"{gh * gw} patches of {p}x{p} px -> tokens 1..{gh * gw}", fontsize=9)
    for ax in (ax_image, ax_tiles):
        ax.axis("off")
    fig.suptitle(f"1. Patches: each is flattened ({p}x{p}x3 = {3 * p * p} values) and projected to "
                 f"{guide.dim} dims;\na learnable cls token is prepended as token 0", fontsize=10)


def _draw_filters(fig: Any, guide: GuideFigure) -> None:
    k = len(guide.components)
    cols = min(7, k)
    rows = -(-k // cols)
    # Each component is a direction in pixel space: scale it to [0, 1] on its own (its sign is arbitrary).
    lo = guide.components.min(axis=(1, 2, 3), keepdims=True)
    hi = guide.components.max(axis=(1, 2, 3), keepdims=True)
    tiles = (guide.components - lo) / np.maximum(hi - lo, 1e-12)  # (k, P, P, C)
    ax = fig.subplots()
    ax.imshow(mosaic(tiles, rows, cols, gap=max(1, guide.patch_size // 4), fill=1.0), interpolation="nearest")
    ax.axis("off")
    fig.suptitle(f"2. Patch-embedding filters: first {k} principal components\n"
                 f"(shown as {guide.patch_size}x{guide.patch_size}x3 patches; "
                 f"{guide.component_variance.sum():.0%} of the variance of the {guide.dim} filters)", fontsize=10)


def _draw_positions(fig: Any, guide: GuideFigure) -> None:
    n = guide.position_similarity.shape[0]
    g = round(n**0.5)  # square grid
    tiles = guide.position_similarity.reshape(n, g, g)  # (n, gh, gw): one similarity map per position
    ax = fig.subplots()
    mappable = ax.imshow(mosaic(tiles, g, g, gap=1), cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    centres = np.arange(g) * (g + 1) + (g - 1) / 2
    ticks = [i for i in range(g) if g <= 8 or i % 2 == 0]
    ax.set_xticks(centres[ticks], [str(i + 1) for i in ticks], fontsize=7)
    ax.set_yticks(centres[ticks], [str(i + 1) for i in ticks], fontsize=7)
    ax.set_xlabel("input patch column", fontsize=9)
    ax.set_ylabel("input patch row", fontsize=9)
    ax.tick_params(length=0)
    fig.colorbar(mappable, ax=ax, shrink=0.8, label="cosine similarity")
    fig.suptitle("3. Position embeddings: each small map is one patch\nposition's similarity to all others "
                 "(learned;\nthe model is never told the 2-D layout)", fontsize=10)


def _draw_distances(fig: Any, guide: GuideFigure) -> None:
    depth, heads = guide.distances.shape
    ax = fig.subplots()
    blocks = np.arange(1, depth + 1)
    for head in range(heads):
        ax.scatter(blocks, guide.distances[:, head], s=22, label=f"head {head + 1}")
    ax.axhline(guide.uniform_distance, color="gray", ls="--", lw=1, label="uniform attention")
    ax.set_xticks(blocks)
    ax.set_xlabel("block (network depth)", fontsize=9)
    ax.set_ylabel("mean attention distance (pixels)", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if heads <= 12:
        ax.legend(fontsize=7, ncols=2 if heads > 6 else 1, loc="lower right")
    fig.suptitle(f"4. How far each head looks: patch-to-patch distance weighted by\n"
                 f"attention, averaged over {guide.distance_images} held-out images", fontsize=10)


def _draw_rollouts(fig: Any, guide: GuideFigure) -> None:
    cols = -(-len(guide.examples) // 2)
    axes = np.atleast_1d(fig.subplots(2, cols)).ravel()
    for ax, (image, grid_map, caption) in zip(axes, guide.examples):
        _overlay(ax, image, grid_map, caption)
    fig.suptitle("5. What the classification looks at: attention rollout through all blocks\n"
                 "(cls token's row; brighter = more of its input comes from that patch)", fontsize=10)
