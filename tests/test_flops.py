import pytest

from vitdeploy.core.config import ModelConfig, get_preset
from vitdeploy.core.flops import count_macs


@pytest.mark.parametrize(
    ("preset", "published_gmacs", "rel_tol"),
    [
        # fvcore / timm counts at 224 px; vit-ti16's is quoted to 4 digits, the others to 2-3.
        ("vit-ti16", 1.254, 0.001),
        ("vit-s16", 4.6, 0.01),
        ("vit-b16", 17.6, 0.01),
    ],
)
def test_published_counts(preset: str, published_gmacs: float, rel_tol: float) -> None:
    assert count_macs(get_preset(preset).model).gmacs == pytest.approx(published_gmacs, rel=rel_tol)


def test_parts_by_hand_for_a_tiny_model() -> None:
    # 16 px, patch 4 -> 16 patches, 17 tokens; D = 8, one block, MLP hidden 16, 3 classes.
    cfg = ModelConfig(image_size=16, patch_size=4, dim=8, depth=1, num_heads=2, mlp_ratio=2.0, num_classes=3)
    macs = count_macs(cfg)
    assert macs.patch_embed == 16 * (4 * 4 * 3) * 8
    assert macs.qkv == 3 * 17 * 8 * 8
    assert macs.attention_scores == macs.attention_weighted_sum == 17 * 17 * 8
    assert macs.attention_proj == 17 * 8 * 8
    assert macs.mlp == 2 * 17 * 8 * 16
    assert macs.head == 8 * 3
    assert macs.total == sum(v for k, v in macs.to_dict().items() if k not in ("total", "gmacs"))
    assert macs.flops == 2 * macs.total


def test_count_grows_linearly_with_depth() -> None:
    base = ModelConfig(image_size=32, patch_size=8, dim=16, depth=1, num_heads=2)
    deeper = ModelConfig(image_size=32, patch_size=8, dim=16, depth=3, num_heads=2)
    per_block = count_macs(deeper).total - count_macs(base).total
    assert per_block == 2 * (count_macs(base).total - count_macs(base).patch_embed - count_macs(base).head)
