"""Analytic multiply-accumulate (MAC) count of the ViT forward pass, from its ModelConfig alone.

Torch-free. What is counted, per image (N = patches + 1 tokens, D = dim, L = depth, H = MLP hidden width):

    patch embedding      patches * (P*P*C) * D          (the strided Conv2d is a Linear on each patch)
    q, k, v projections  L * 3 * N * D * D
    attention scores     L * N * N * D                  (Q K^T, all heads together)
    weighted sum         L * N * N * D                  (softmax(...) V)
    output projection    L * N * D * D
    MLP                  L * 2 * N * D * H
    head                 D * num_classes                (the cls token only)

Not counted, as in the published figures (fvcore, timm): biases, LayerNorm, softmax, GELU, residual adds and the
position-embedding add, which are element-wise and together well under 1% of the total. One MAC is two FLOPs.
Published counts: ViT-Ti/16 1.26 GMACs, ViT-S/16 4.6, ViT-B/16 17.6 (224 px).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vitdeploy.core.config import ModelConfig
from vitdeploy.core.strict_json import record


@dataclass(frozen=True)
class MacCount:
    """MACs per image, by part of the network."""

    patch_embed: int
    qkv: int
    attention_scores: int
    attention_weighted_sum: int
    attention_proj: int
    mlp: int
    head: int

    @property
    def total(self) -> int:
        return (
            self.patch_embed + self.qkv + self.attention_scores + self.attention_weighted_sum
            + self.attention_proj + self.mlp + self.head
        )

    @property
    def gmacs(self) -> float:
        return self.total / 1e9

    @property
    def flops(self) -> int:
        return 2 * self.total

    def to_dict(self) -> dict[str, int | float]:
        return record(self, total=self.total, gmacs=self.gmacs)


def count_macs(cfg: ModelConfig, merged_per_block: Sequence[int] = ()) -> MacCount:
    """MACs of one image through VisionTransformer(cfg). `merged_per_block`: tokens that token merging
    (model/tome.py) merges away in each block, between its attention and its MLP (the matching itself, a few
    tokens x tokens x head-size products per block, is not counted); empty: no merging."""
    patches = cfg.num_patches
    dim, depth = cfg.dim, cfg.depth
    merged = list(merged_per_block) or [0] * depth
    attention_tokens, mlp_tokens = [], []
    tokens = patches + 1  # the cls token goes through every block too
    for r in merged:
        attention_tokens.append(tokens)
        tokens -= r
        mlp_tokens.append(tokens)
    return MacCount(
        patch_embed=patches * cfg.patch_size * cfg.patch_size * cfg.in_channels * dim,
        qkv=sum(3 * n * dim * dim for n in attention_tokens),
        attention_scores=sum(n * n * dim for n in attention_tokens),
        attention_weighted_sum=sum(n * n * dim for n in attention_tokens),
        attention_proj=sum(n * dim * dim for n in attention_tokens),
        mlp=sum(2 * n * dim * cfg.mlp_hidden for n in mlp_tokens),
        head=dim * cfg.num_classes,
    )
