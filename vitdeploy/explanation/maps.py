"""The numbers behind `vitdeploy explain`: attention read from the model itself, and what the guide shows.

Attention maps answer "which patches does the cls token (whose output is classified) draw on":
  - cls:          the last block's softmax row of the cls token, per head and averaged;
  - rollout:      Abnar & Zuidema (2020): per block, average the heads, add the identity for the residual path,
                  renormalise the rows, multiply through the blocks; read the cls row;
  - grad-rollout: the same product over mean_heads(relu(dscore/dA * A)) per block, so that only attention which
                  raises the chosen class's logit counts: "why this class".
Every matrix is (B, N, N) with N = n + 1 tokens, the cls token first; a patch map drops the cls->cls entry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from vitdeploy.model.vit import Attention, VisionTransformer

METHODS = ("rollout", "cls", "grad-rollout")


@contextlib.contextmanager
def record_attention(model: VisionTransformer) -> Iterator[list[Attention]]:
    """Make every block's Attention keep its softmax weights during forward; off again (and cleared) on exit."""
    layers = [block.attn for block in model.blocks]
    for layer in layers:
        layer.record = True
    try:
        yield layers
    finally:
        for layer in layers:
            layer.record = False
            layer.recorded = None


def forward_with_attention(model: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits (B, classes) and every block's attention weights (B, h, N, N), in the autograd graph if grad is on."""
    with record_attention(model) as layers:
        logits = model(x)
        return logits, [layer.recorded for layer in layers]


def rollout(mixing: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per block (B, N, N): add the identity (the residual path), renormalise rows, multiply; (B, N, N) joint."""
    joint = None
    for a in mixing:
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint  # later blocks act on the mix the earlier ones produced
    return joint


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rollout of the head-averaged attention of every block: (B, N, N)."""
    return rollout([w.mean(dim=1) for w in attentions])


def gradient_rollout(attentions: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rollout of mean_heads(relu(grad * attention)) per block: (B, N, N)."""
    return rollout([(g * w).clamp(min=0).mean(dim=1) for w, g in zip(attentions, grads)])


def cls_row(matrix: torch.Tensor) -> torch.Tensor:
    """(..., N, N) -> (..., n): the cls token's row without its cls->cls entry, one value per patch."""
    return matrix[..., 0, 1:]


@dataclass
class AttentionMaps:
    """One method's answer for a batch; patch values are row-major over the (H/P, W/P) grid."""

    logits: torch.Tensor  # (B, classes)
    patch: torch.Tensor  # (B, n): the cls row at each patch; the rest of the row (summing to 1) is cls_self
    cls_self: torch.Tensor  # (B,)
    heads: torch.Tensor | None = None  # (B, h, n) for `cls`: each head's row, patches only
    target: torch.Tensor | None = None  # (B,) the class `grad-rollout` explains


def attention_maps(
    model: VisionTransformer, x: torch.Tensor, method: str, class_index: int | None = None
) -> AttentionMaps:
    """Patch maps for images x (B, C, H, W) by `method`; grad-rollout explains `class_index` (default: the
    predicted class of each image)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    if method == "grad-rollout":
        with torch.enable_grad():
            logits, attentions = forward_with_attention(model, x)
            target = logits.argmax(dim=1) if class_index is None else torch.full((len(x),), class_index)
            # Each image's logit depends only on its own attention, so one backward of the sum gives all of them.
            grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), attentions)
        joint = gradient_rollout([w.detach() for w in attentions], grads)
        return AttentionMaps(logits.detach(), cls_row(joint), joint[:, 0, 0], target=target)
    with torch.no_grad():
        logits, attentions = forward_with_attention(model, x)
    if method == "rollout":
        joint = attention_rollout(attentions)
        return AttentionMaps(logits, cls_row(joint), joint[:, 0, 0])
    last = attentions[-1]  # (B, h, N, N)
    mean = last.mean(dim=1)  # (B, N, N)
    return AttentionMaps(logits, cls_row(mean), mean[:, 0, 0], heads=cls_row(last))


def patch_mass(patch: torch.Tensor) -> torch.Tensor:
    """(B, n) patch values -> shares of their sum: the map as a distribution over patches."""
    return patch / patch.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(patch.dtype).tiny)


def mass_on_mask(mass: torch.Tensor, mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Share of a patch map's mass (B, n) on the mask's pixels (B, H, W), each patch's mass spread evenly over its
    pixels: (B,). With a uniform map this is the mask's share of the image area."""
    b, h, w = mask.shape
    p = patch_size
    per_patch = mask.float().reshape(b, h // p, p, w // p, p).mean(dim=(2, 4))  # (B, gh, gw): masked share of each
    return (mass * per_patch.reshape(b, -1)).sum(dim=-1)


# ---------------------------------------------------------------------------------------- the mechanism guide


def patch_filter_components(model: VisionTransformer, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal components of the patch-embedding filters, (k, P, P, C), and the variance share of each (k,)."""
    weight = model.patch_embed.proj.weight.detach()  # (D, C, P, P): one filter per embedding dimension
    d, c, p, _ = weight.shape
    flat = weight.reshape(d, c * p * p)  # (D, C*P*P): each row the linear map of one flattened patch
    _, s, vh = torch.linalg.svd(flat - flat.mean(dim=0), full_matrices=False)
    k = min(count, vh.shape[0])
    variance = s**2 / (s**2).sum()
    return vh[:k].reshape(k, c, p, p).permute(0, 2, 3, 1), variance[:k]  # (k, P, P, C)


def position_similarity(model: VisionTransformer) -> torch.Tensor:
    """Cosine similarity of every patch position's embedding with every other's: (n, n)."""
    pos = model.pos_embed.detach()[0, 1:]  # (n, D): patches only, the cls position dropped
    pos = torch.nn.functional.normalize(pos, dim=-1)
    return pos @ pos.T


def patch_distances(grid: int, patch_size: int) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of every two patches of a grid x grid image: (n, n)."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).float() * patch_size  # (n, 2)
    return torch.cdist(centres, centres)


def mean_attention_distance(attentions: Sequence[torch.Tensor], grid: int, patch_size: int) -> torch.Tensor:
    """Per block and head (L, h): pixels between a patch and the patches it attends to, weighted by attention,
    averaged over query patches and images. Weights are renormalised over patches (mass on cls has no place)."""
    distance = patch_distances(grid, patch_size)
    rows = []
    for w in attentions:
        patches = w[:, :, 1:, 1:]  # (B, h, n, n): patch queries against patch keys
        patches = patches / patches.sum(dim=-1, keepdim=True)
        rows.append((patches * distance).sum(dim=-1).mean(dim=(0, 2)))  # (h,)
    return torch.stack(rows)

