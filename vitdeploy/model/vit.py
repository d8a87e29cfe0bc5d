"""The Vision Transformer, written to read like the mechanism (Dosovitskiy et al., 2020).

    image -> patches -> patch embeddings -> [cls] + tokens -> + position embeddings
          -> L x Block(pre-norm multi-head self-attention + MLP, each with a residual)
          -> LayerNorm(cls output) -> Linear head -> class logits
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitdeploy.core.config import ModelConfig
from vitdeploy.model.tome import merge_tokens


class PatchEmbed(nn.Module):
    """Split the image into P x P patches, flatten each (P*P*C values) and project it to D dims.

    A Conv2d with kernel = stride = P is exactly that linear map applied to every patch, and exports cleanly.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # (B, n, D) with n = (H/P) * (W/P)


class Attention(nn.Module):
    """Multi-head self-attention: softmax(Q K^T / sqrt(d_head)) V, per head, heads concatenated and projected.

    NOTE: q, k and v are three separate Linear layers on purpose: ONNX Runtime's transformer optimizer fuses
    this layout into one Attention op (measured: 12 of 12 blocks of ViT-Ti), and fused none with a single packed
    qkv Linear (timm's layout) and neither Attention nor SkipLayerNorm with nn.MultiheadAttention.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        # NOTE: divide by sqrt(d) rather than multiply by its reciprocal: ORT's attention matcher only knows the
        # Div spelling. For the presets' head sizes (16, 64: powers of 4) both are bit-identical.
        self.scale_divisor = math.sqrt(self.head_dim)
        self.q = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qkv_bias)
        self.k = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qkv_bias)
        self.v = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.proj_drop = nn.Dropout(cfg.dropout)
        # Opt-in for `vitdeploy explain` (explain.maps.record_attention): when on, forward keeps a reference to
        # its softmax weights. Off by default and skipped while tracing, so forward and the export are unchanged.
        self.record = False
        self.recorded: torch.Tensor | None = None
        # Token merging (model/tome.py) turns this on: log(size) added to the logits of every key.
        self.proportional = False

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        # NOTE: -1 for the batch (not t.shape[0]) keeps the exported Reshape free of a traced batch size.
        t = t.reshape(-1, t.shape[1], self.num_heads, self.head_dim)  # (B, N, h, d)
        return t.transpose(1, 2)  # (B, h, N, d)

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D) -> (output (B, N, D), keys (B, h, N, d): what token merging measures similarity with).
        size: (B, N, 1) patches each token stands for, once token merging has merged some; None: one each."""
        n_tokens, dim = x.shape[1], x.shape[2]
        q = self._split_heads(self.q(x))  # (B, h, N, d)
        k = self._split_heads(self.k(x))  # (B, h, N, d)
        v = self._split_heads(self.v(x))  # (B, h, N, d)
        scores = (q @ k.transpose(-2, -1)) / self.scale_divisor  # (B, h, N, N)
        if self.proportional and size is not None:  # a key standing for s patches counts s times in the softmax
            scores = scores + size.log().transpose(1, 2)[:, None]  # + (B, 1, 1, N)
        weights = scores.softmax(dim=-1)  # each row sums to 1
        if self.record and not torch.jit.is_tracing():
            self.recorded = weights  # (B, h, N, N), still in the autograd graph: grad-rollout needs its gradient
        out = weights @ v  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(-1, n_tokens, dim)  # (B, N, D): heads concatenated
        return self.proj_drop(self.proj(out)), k


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, applied to every token independently; output has the input's shape."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_hidden)
        self.act = nn.GELU(approximate="tanh" if cfg.gelu == "tanh" else "none")
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer block: attention and MLP, each wrapped in a residual connection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg)
        self.merge_r = 0  # token merging (model/tome.py): tokens merged away between attention and MLP; 0: off

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens, patches per token) -> the same after this block; size stays None until tokens are merged."""
        attended, keys = self.attn(self.norm1(x), size)
        x = x + attended
        if self.merge_r:  # token merging: the merge_r most similar pairs become one token each
            x, size = merge_tokens(x, size, keys, self.merge_r)  # (B, N - r, D), (B, N - r, 1)
        x = x + self.mlp(self.norm2(x))
        return x, size


class VisionTransformer(nn.Module):
    """ViT classifier: forward(x) = forward_head(forward_features(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.dim))
        self.pos_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The patch projection is a Linear on flattened patches: initialise it like one.
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=0.02)
        nn.init.zeros_(self.patch_embed.proj.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, n, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, n+1, D): cls token first
        return self.pos_drop(x + self.pos_embed)  # learnable position for every token, cls included

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        size = None  # patches per token: one each until token merging (off by default) merges some
        for block in self.blocks:
            x, size = block(x, size)
        return self.norm(x)  # (B, n+1, D); fewer tokens with token merging, the cls token still first

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features[:, 0])  # the cls token's output -> (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_with_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits plus named intermediates, in execution order, for per-layer parity debugging.

        Names: 'embed' (tokens after position embedding), 'block_{i}' (output of block i, 0-based),
        'norm' (final LayerNorm), 'logits'. All except logits are (B, n+1, D).
        """
        inter: dict[str, torch.Tensor] = {}
        x = self.embed(x)
        inter["embed"] = x
        size = None
        for i, block in enumerate(self.blocks):
            x, size = block(x, size)
            inter[f"block_{i}"] = x
        x = self.norm(x)
        inter["norm"] = x
        logits = self.forward_head(x)
        inter["logits"] = logits
        return logits, inter


def build_model(cfg: ModelConfig) -> VisionTransformer:
    return VisionTransformer(cfg)


def logits_in_batches(model: nn.Module, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """PyTorch fp32 logits for (N, C, H, W) float32 inputs, `batch_size` at a time (the reference side of every
    parity and accuracy comparison)."""
    model = getattr(model, "module", model).eval()  # DDP wraps the model
    with torch.inference_mode():
        parts = [model(torch.from_numpy(inputs[i : i + batch_size])).float().numpy()
                 for i in range(0, len(inputs), batch_size)]
    return np.concatenate(parts)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The training objective (step 24): softmax cross-entropy against the true class."""
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
