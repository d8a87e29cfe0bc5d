"""The ViT follows the mechanism: shapes, parameter counts of the published presets, gradient flow."""

from __future__ import annotations

import pytest
import torch

from vitdeploy.core.config import PRESETS, ModelConfig, get_preset
from vitdeploy.errors import ConfigError
from vitdeploy.model.vit import build_model, count_parameters, cross_entropy

TINY = ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, num_classes=3)


@pytest.mark.parametrize(
    ("preset", "published_millions"),
    # ViT paper / timm: Ti/16 5.7M, S/16 22M, B/16 86M parameters (1000-class head).
    [("vit-ti16", 5.7), ("vit-s16", 22.0), ("vit-b16", 86.0)],
)
@pytest.mark.slow
def test_published_presets_match_parameter_counts(preset: str, published_millions: float) -> None:
    cfg = get_preset(preset).model
    assert (cfg.image_size, cfg.patch_size, cfg.depth, cfg.mlp_ratio) == (224, 16, 12, 4.0)
    n = count_parameters(build_model(cfg))
    # The published figures are rounded to two significant digits.
    assert abs(n / 1e6 - published_millions) / published_millions < 0.02, n


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("preset", ["digits", "tiny"])
def test_forward_shapes(preset: str, batch: int) -> None:
    cfg = get_preset(preset).model
    model = build_model(cfg).eval()
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
    logits, inter = model.forward_with_intermediates(x)
    assert logits.shape == (batch, cfg.num_classes)
    tokens = cfg.num_patches + 1  # patches plus the cls token
    assert list(inter) == ["embed", *[f"block_{i}" for i in range(cfg.depth)], "norm", "logits"]
    for name in ["embed", *[f"block_{i}" for i in range(cfg.depth)], "norm"]:
        assert inter[name].shape == (batch, tokens, cfg.dim), name
    torch.testing.assert_close(model(x), logits)


def test_vit_ti16_forward_shape() -> None:
    model = build_model(get_preset("vit-ti16").model).eval()
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


def test_patch_embedding_is_a_linear_map_of_each_flattened_patch() -> None:
    model = build_model(TINY)
    x = torch.randn(1, 3, 16, 16)
    tokens = model.patch_embed(x)  # (1, 16, 32)
    p = TINY.patch_size
    patch = x[0, :, p : 2 * p, 0:p].reshape(-1)  # second row of patches, first column -> token 4
    w = model.patch_embed.proj.weight.reshape(TINY.dim, -1)
    torch.testing.assert_close(tokens[0, 4], w @ patch + model.patch_embed.proj.bias)


def test_attention_matches_reference_softmax_formula() -> None:
    model = build_model(TINY)
    attn = model.blocks[0].attn
    x = torch.randn(2, 5, TINY.dim)
    q, k, v = attn.q(x), attn.k(x), attn.v(x)
    heads = []
    for h in range(TINY.num_heads):
        s = slice(h * TINY.head_dim, (h + 1) * TINY.head_dim)
        w = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / TINY.head_dim**0.5, dim=-1)
        heads.append(w @ v[..., s])
    torch.testing.assert_close(attn(x)[0], attn.proj(torch.cat(heads, dim=-1)))


def test_sample_output_does_not_depend_on_its_batch() -> None:
    model = build_model(TINY).eval()
    x = torch.randn(7, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(model(x)[3:4], model(x[3:4]), rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = build_model(TINY)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 1])
    cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad) > 0, f"{name} got an all-zero gradient"


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        ModelConfig(image_size=15, patch_size=4)
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        ModelConfig(dim=30, num_heads=4)
    with pytest.raises(ConfigError, match="unknown preset 'vit-xl'"):
        get_preset("vit-xl")


def test_every_preset_builds_a_consistent_preprocessing_spec() -> None:
    for preset in PRESETS.values():
        spec = preset.preprocess_spec()
        assert spec.image_size == preset.model.image_size
        assert spec.resize_size >= spec.image_size
