"""The timm format: a state dict of timm.models.VisionTransformer, named by model or by timm's config.json."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitdeploy.core.config import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from vitdeploy.errors import CheckpointError
from vitdeploy.pretrained.common import Recipe, Shapes, Source, model_config, ordered_labels, positive_int, square_size

# ---------------------------------------------------------------------------------------------- timm facts

# timm's VisionTransformer sizes: (embed_dim, depth, num_heads), MLP ratio 4.
TIMM_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "medium": (512, 12, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
TIMM_NAME = re.compile(r"(?P<family>vit|deit)_(?P<size>[a-z]+)_patch(?P<patch>\d+)_(?P<img>\d+)")
# Parts of a timm model name (between underscores) that mean "not a plain ViT".
TIMM_NAME_PARTS = {
    "distilled": "a distillation token (DeiT distilled)",
    "clip": "a LayerNorm before the blocks (norm_pre, CLIP)",
    "quickgelu": "QuickGELU activations",
    "siglip": "an attention-pooling head (MAP)",
    "siglip2": "an attention-pooling head (MAP)",
    "map": "an attention-pooling head (MAP)",
    "gap": "average pooling (global_pool='avg')",
    "dinov2": "layer scale (DINOv2)",
    "relpos": "relative position bias",
    "srelpos": "relative position bias",
    "rpn": "residual post-norm blocks",
    "rope": "rotary position embeddings",
}
TIMM_FAMILIES = {"deit3": "layer scale (DeiT III)", "eva02": "rotary position embeddings and SwiGLU (EVA-02)",
                 "beit": "relative position bias and layer scale (BEiT)"}
# model_args of timm's config.json: the value a plain ViT has, and what another value means.
TIMM_ARGS = {
    "global_pool": (("token",), "pooling other than the class token"),
    "class_token": ((True,), "no class token"),
    "reg_tokens": ((0, None), "register tokens"),
    "init_values": ((None,), "layer scale"),
    "qk_norm": ((False,), "q/k norm"),
    "fc_norm": ((None, False), "fc_norm"),
    "no_embed_class": ((False,), "position embeddings without the class token's (no_embed_class)"),
    "pre_norm": ((False,), "a LayerNorm before the blocks (pre_norm)"),
    "final_norm": ((True,), "no final LayerNorm"),
    "proj_bias": ((True,), "projections without bias"),
}
# model_args that do not change the function at inference, or that set what the name sets.
TIMM_PLAIN_ARGS = {
    "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "num_classes", "in_chans",
    "drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate",
    "dynamic_img_size", "dynamic_img_pad",
}
TIMM_DEFAULT_CROP_PCT = 0.875  # timm's eval transform when a pretrained_cfg gives none


# ------------------------------------------------------------------------------------------------------ timm


# timm's model_args name for each ModelConfig size: named in refusals.
TIMM_FIELDS = {"depth": "depth", "dim": "embed_dim", "image_size": "img_size", "patch_size": "patch_size",
               "in_channels": "in_chans", "num_heads": "num_heads", "mlp_ratio": "mlp_ratio"}


def timm_recipe(found: Source, state: Shapes, note: Callable[[str], None]) -> Recipe:
    """timm's VisionTransformer from its model name (and config.json's model_args), in timm's key layout."""
    name = str(found.timm_name)
    base = name.split(".", 1)[0]
    family = base.split("_", 1)[0]
    refused = [TIMM_NAME_PARTS[p] for p in base.split("_") if p in TIMM_NAME_PARTS]
    refused += ["register tokens"] if re.search(r"_reg\d+(_|$)", base) else []
    refused += [TIMM_FAMILIES[family]] if family in TIMM_FAMILIES else []
    if refused:
        raise CheckpointError(f"timm model {name} is not a plain ViT: it has {', '.join(dict.fromkeys(refused))}")
    match = TIMM_NAME.fullmatch(base)
    if not match or match["size"] not in TIMM_SIZES:
        raise CheckpointError(
            f"{name!r} is not a plain timm VisionTransformer vitdeploy knows: expected vit_<size>_patch<P>_<pixels> "
            f"or deit_<size>_patch<P>_<pixels>, size one of {', '.join(TIMM_SIZES)} (e.g. vit_tiny_patch16_224)"
        )
    dim, depth, heads = TIMM_SIZES[match["size"]]
    args = dict(found.config.get("model_args") or {})
    if "global_pool" in found.config:
        args.setdefault("global_pool", found.config["global_pool"])
    for key, value in args.items():
        if key in TIMM_ARGS and value not in TIMM_ARGS[key][0]:
            raise CheckpointError(f"timm model {name} is not a plain ViT: {TIMM_ARGS[key][1]} ({key}={value!r})")
        if key not in TIMM_ARGS and key not in TIMM_PLAIN_ARGS:
            raise CheckpointError(f"timm model {name}: model_args {key}={value!r} is not something vitdeploy imports")
    where = found.weights
    dim = positive_int(args.get("embed_dim", dim), "embed_dim", where)
    image_size = square_size(args.get("img_size", int(match["img"])), "img_size", where)
    head_classes = int(state["head.weight"][0]) if "head.weight" in state else None
    model = model_config(
        where, image_size=image_size, patch_size=square_size(args.get("patch_size", int(match["patch"])), "patch_size", where),
        in_channels=positive_int(args.get("in_chans", 3), "in_chans", where), num_classes=head_classes or 2, dim=dim,
        depth=positive_int(args.get("depth", depth), "depth", where),
        num_heads=positive_int(args.get("num_heads", heads), "num_heads", where),
        mlp_ratio=float(args.get("mlp_ratio", 4.0)), layer_norm_eps=1e-6,
        qkv_bias="blocks.0.attn.qkv.bias" in state, gelu="erf",
    )

    def source_key(key: str) -> tuple[str, int | None]:
        parts = key.split(".")
        if parts[0] == "blocks" and parts[2] == "attn" and parts[3] in ("q", "k", "v"):
            return f"blocks.{parts[1]}.attn.qkv.{parts[4]}", "qkv".index(parts[3])
        return key, None

    pretrained = found.config.get("pretrained_cfg")
    spec, facts = timm_preprocess(pretrained, name, family, image_size, note)
    fields = {attr: f"model_args {arg}" if arg in args else f"{arg} (of {base})" for attr, arg in TIMM_FIELDS.items()}
    return Recipe(name, model, head_classes, source_key, spec, timm_labels(found.config, where), {}, facts, fields)


def timm_preprocess(
    pretrained: dict[str, Any] | None, name: str, family: str, image_size: int, note: Callable[[str], None]
) -> tuple[PreprocessSpec, dict[str, Any]]:
    """timm's evaluation transform from the pretrained_cfg: resize the shorter side to floor(size / crop_pct) with
    its interpolation, center crop, normalize (crop_mode "squash" resizes both sides instead)."""
    if pretrained is None:
        cfg = {  # the pretrained_cfg timm gives its ViTs by default (DeiT: ImageNet statistics); 384 px: no crop
            "input_size": [3, image_size, image_size], "interpolation": "bicubic",
            "crop_pct": 1.0 if image_size >= 384 else 0.9, "crop_mode": "center",
            "mean": IMAGENET_MEAN if family == "deit" else (0.5, 0.5, 0.5),
            "std": IMAGENET_STD if family == "deit" else (0.5, 0.5, 0.5),
        }
        note(f"no timm config.json: timm's default preprocessing for {name.split('.')[0]} (bicubic, crop_pct "
             f"{cfg['crop_pct']}, mean {cfg['mean']}, std {cfg['std']}); put the checkpoint's config.json beside it "
             "to use its own pretrained_cfg")
    else:  # what timm's resolve_data_config uses for anything a pretrained_cfg leaves out
        cfg = {"input_size": [3, image_size, image_size], "interpolation": "bicubic", "crop_pct": TIMM_DEFAULT_CROP_PCT,
               "crop_mode": "center", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        cfg.update({k: v for k, v in pretrained.items() if v is not None})
    crop_pct = float(cfg["crop_pct"])
    size = square_size(list(cfg["input_size"])[1:], "input_size", Path("pretrained_cfg"))
    if size != image_size:
        raise CheckpointError(f"{name}: pretrained_cfg input_size {cfg['input_size']} differs from the model's "
                              f"{image_size} px")
    if cfg["interpolation"] not in ("bilinear", "bicubic", "nearest"):
        raise CheckpointError(f"{name}: interpolation {cfg['interpolation']!r} is not one vitdeploy reproduces")
    modes = {"center": "shorter_side", "squash": "stretch"}
    if cfg["crop_mode"] not in modes:
        raise CheckpointError(f"{name}: crop_mode {cfg['crop_mode']!r} is not one vitdeploy reproduces "
                              f"({', '.join(modes)})")
    spec = PreprocessSpec(
        image_size=size, resize_size=math.floor(size / crop_pct), interpolation=cfg["interpolation"],
        mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), resize_mode=modes[cfg["crop_mode"]],
    )
    return spec, {"crop_pct": crop_pct, "preprocessing_from": "timm defaults" if pretrained is None else "pretrained_cfg"}


def timm_labels(config: dict[str, Any], where: Path) -> list[str] | None:
    names = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names")
    if isinstance(names, dict):
        return ordered_labels(names, where)
    return [str(n) for n in names] if names else None


