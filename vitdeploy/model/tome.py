"""Token merging (ToMe: Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023), as the paper describes it.

A ViT spends its time on tokens, and many tokens say the same thing (sky, background). Between attention and the MLP
of a block, token merging combines the r most similar pairs of tokens into one each, so that every later layer
works on r fewer tokens. It needs no training, and it is off unless asked for (`apply`).

    after attention, in block b (N tokens in, the class token first):
      1. the similarity metric: each token's key, averaged over heads, scaled to unit length
      2. the class token is set aside: it is never merged, and stays first
      3. the other tokens are split alternately into two sets, A (even positions) and B (odd positions)
      4. each A token's best match in B: the largest cosine similarity (bipartite: A only looks at B, so no chains)
      5. the r A tokens with the best matches are merged into their matches; the other A tokens are kept
      6. merging is a size-weighted average: x * size summed into the match, sizes summed, then divided
    -> N - r tokens: [class token, kept A tokens, B tokens]; `size` says how many patches each one stands for

    proportional attention: in later blocks log(size) is added to every key's attention logits, so that a token
    standing for s patches weighs as much in the softmax as its s patches did.

NOTE for the export: every step is per image (gathers and a scatter along the token axis), so merging never mixes
the images of a batch; the batch axis stays symbolic. `scatter_reduce(reduce="mean")` has no ONNX form: the merge
is a sum (ScatterElements, reduction "add", opset 16+) followed by a division. No ReduceMean/ReduceMax/ReduceL2
(see merge_tokens): the dynamo exporter could not take them from opset 18 down to 17. Once r is fixed, the token count of
every block is a constant, so static-shape builds work too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitdeploy.core.config import ModelConfig
from vitdeploy.errors import ConfigError


@dataclass(frozen=True)
class MergeSchedule:
    """How many tokens each block merges away (0: none), and whether attention is proportional to token size."""

    per_block: tuple[int, ...]
    proportional_attention: bool = True

    @property
    def merged(self) -> int:
        return sum(self.per_block)

    @property
    def active(self) -> bool:
        return self.merged > 0

    def tokens(self, cfg: ModelConfig) -> list[int]:
        """Tokens (class token included) entering each block, then leaving the last one."""
        counts = [cfg.num_patches + 1]
        for r in self.per_block:
            counts.append(counts[-1] - r)
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {"per_block": list(self.per_block), "proportional_attention": self.proportional_attention}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MergeSchedule:
        return cls(tuple(int(r) for r in d["per_block"]), bool(d.get("proportional_attention", True)))


def schedule(cfg: ModelConfig, r: int, first_block: int = 0) -> MergeSchedule:
    """r tokens merged in every block from `first_block` on (the paper's constant schedule), fewer where fewer are
    left: a block can merge at most half of its tokens other than the class token (one per A token)."""
    if r < 0:
        raise ConfigError(f"token merging r must be >= 0, got {r}")
    if not 0 <= first_block < max(cfg.depth, 1):
        raise ConfigError(f"token merging's first block must be within 0..{cfg.depth - 1}, got {first_block}")
    per_block, patches = [], cfg.num_patches
    for block in range(cfg.depth):
        merged = min(r, patches // 2) if block >= first_block else 0
        per_block.append(merged)
        patches -= merged
    return MergeSchedule(tuple(per_block))


def apply(model: nn.Module, merge: MergeSchedule | None) -> nn.Module:
    """Turn token merging on in `model` (a vitdeploy VisionTransformer) with this schedule; None turns it off.
    The weights are untouched: merging is a setting of the forward pass, like dropout's train/eval."""
    model = getattr(model, "module", model)  # DDP wraps the model
    blocks = model.blocks
    if merge is not None and len(merge.per_block) != len(blocks):
        raise ConfigError(f"a token merging schedule for {len(merge.per_block)} blocks, but the model has "
                          f"{len(blocks)}")
    for i, block in enumerate(blocks):
        block.merge_r = merge.per_block[i] if merge is not None else 0
        block.attn.proportional = merge.proportional_attention if merge is not None else False
    return model


def active(model: nn.Module) -> MergeSchedule | None:
    """The schedule token merging runs with in `model`, or None when it is off."""
    blocks = getattr(model, "module", model).blocks
    per_block = tuple(block.merge_r for block in blocks)
    return MergeSchedule(per_block, blocks[0].attn.proportional) if any(per_block) else None


def merge_tokens(x: torch.Tensor, size: torch.Tensor | None, keys: torch.Tensor, r: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bipartite soft matching: merge r of x's tokens into others. x: (B, N, D) with the class token first,
    size: (B, N, 1) patches per token (None: one each), keys: (B, h, N, d) attention's keys.
    Returns (x, size) with N - r tokens."""
    if size is None:
        size = torch.ones_like(x[..., :1])  # (B, N, 1)
    dim = x.shape[-1]
    # 1. the similarity metric: keys averaged over heads, unit length (cosine similarity is then a dot product).
    # NOTE: a sum and a square root, not mean() and norm(): ReduceSum's axes are an input from opset 13 on, while
    # ReduceMean's and ReduceL2's became one at 18, which the dynamo exporter cannot take back down to 17 (it
    # converts before folding the axes into constants). The scale of the sum drops out with the unit length.
    metric = keys.sum(dim=1)  # (B, N, d)
    metric = metric / (metric * metric).sum(dim=-1, keepdim=True).sqrt()
    # 2. the class token is set aside
    cls_x, cls_size = x[:, :1], size[:, :1]
    metric, x, size = metric[:, 1:], x[:, 1:], size[:, 1:]
    # 3. two sets, alternately
    metric_a, metric_b = metric[:, ::2], metric[:, 1::2]  # (B, Na, d), (B, Nb, d)
    # 4. each A token's most similar B token
    similarity = metric_a @ metric_b.transpose(-2, -1)  # (B, Na, Nb)
    match = similarity.argmax(dim=-1)  # (B, Na); argmax and a gather, not max(): ReduceMax as above
    # NOTE: axis 2, not -1: onnx's reference runtime (verify's) mis-checks GatherElements' shapes on a negative axis
    best = similarity.gather(2, match[..., None])[..., 0]
    # 5. the r A tokens with the best matches are merged, the others kept
    order = best.argsort(dim=-1, descending=True)  # (B, Na)
    merged_a, kept_a = order[:, :r], order[:, r:]  # (B, r), (B, Na - r)
    into_b = match.gather(1, merged_a)  # (B, r): the B token each merged A token goes into
    # 6. size-weighted average into the B tokens: sums first (x * size, size), then one division
    x_a, x_b, size_a, size_b = x[:, ::2], x[:, 1::2], size[:, ::2], size[:, 1::2]
    # NOTE: expand(-1, -1, ...) keeps the batch axis symbolic in the exported graph.
    merged_sum = (x_a * size_a).gather(1, merged_a[..., None].expand(-1, -1, dim))  # (B, r, D)
    sum_b = (x_b * size_b).scatter_add(1, into_b[..., None].expand(-1, -1, dim), merged_sum)  # (B, Nb, D)
    size_b = size_b.scatter_add(1, into_b[..., None], size_a.gather(1, merged_a[..., None]))  # (B, Nb, 1)
    kept_x = x_a.gather(1, kept_a[..., None].expand(-1, -1, dim))  # (B, Na - r, D), unchanged
    kept_size = size_a.gather(1, kept_a[..., None])
    x = torch.cat([cls_x, kept_x, sum_b / size_b], dim=1)  # (B, N - r, D)
    size = torch.cat([cls_size, kept_size, size_b], dim=1)  # (B, N - r, 1)
    return x, size


@contextlib.contextmanager
def merging(model: nn.Module, merge: MergeSchedule) -> Iterator[nn.Module]:
    """`model` with token merging on for the duration (the export of a tome variant), off again afterwards."""
    apply(model, merge)
    try:
        yield model
    finally:
        apply(model, None)
