"""The Hugging Face format: a `save_pretrained` folder of ViTForImageClassification / ViTModel, read as files."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitdeploy.core.config import PreprocessSpec
from vitdeploy.core.images import crop_offset
from vitdeploy.errors import CheckpointError
from vitdeploy.pretrained.common import (
    INTERPOLATIONS,
    Recipe,
    Shapes,
    Source,
    mlp_ratio_of,
    model_config,
    ordered_labels,
    positive_int,
    read_json,
    square_size,
)

# ------------------------------------------------------------------------------------- Hugging Face facts

HF_ARCHITECTURES = ("ViTForImageClassification", "ViTModel")
HF_GELU = {"gelu": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}
HF_MODEL_TYPES = {  # model types that are ViT-like but compute something else
    "deit": "a distillation token (DeiT distilled)",
    "dinov2": "layer scale (DINOv2)",
    "dinov2_with_registers": "register tokens and layer scale",
    "beit": "relative position bias and layer scale (BEiT)",
    "data2vec-vision": "relative position bias and layer scale",
    "vit_hybrid": "a convolutional stem",
}
# Hub file layout of one encoder layer (what save_pretrained writes), by vitdeploy's name for the same tensor.
HF_BLOCK = {
    "norm1": "layernorm_before",
    "attn.q": "attention.attention.query",
    "attn.k": "attention.attention.key",
    "attn.v": "attention.attention.value",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
HF_TOP = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}



# ---------------------------------------------------------------------------------------------- Hugging Face


# Where config.json sets each ModelConfig size: named in refusals.
HF_FIELDS = {"depth": "num_hidden_layers", "dim": "hidden_size", "image_size": "image_size",
             "patch_size": "patch_size", "in_channels": "num_channels", "num_heads": "num_attention_heads",
             "mlp_ratio": "intermediate_size"}


def hf_recipe(found: Source, state: Shapes, note: Callable[[str], None]) -> Recipe:
    """A transformers ViT (model_type "vit") from its config.json, in the Hub's file layout."""
    c = found.config
    where = found.weights.parent / "config.json"
    model_type = c.get("model_type")
    if model_type != "vit":
        why = f" ({HF_MODEL_TYPES[model_type]})" if model_type in HF_MODEL_TYPES else ""
        raise CheckpointError(f"{where}: model_type {model_type!r}{why} is not a plain ViT; vitdeploy imports "
                              f"model_type 'vit' ({', '.join(HF_ARCHITECTURES)})")
    others = [a for a in c.get("architectures") or [] if a not in HF_ARCHITECTURES]
    if others:
        raise CheckpointError(f"{where}: {', '.join(others)} is not imported (vitdeploy imports "
                              f"{', '.join(HF_ARCHITECTURES)})")
    act = c.get("hidden_act", "gelu")
    if act not in HF_GELU:
        raise CheckpointError(f"{where}: hidden_act {act!r} is not a GELU form vitdeploy computes "
                              f"({', '.join(HF_GELU)})")
    prefix = "vit." if any(k.startswith("vit.") for k in state) else ""
    def size(key: str, default: int) -> int:
        return positive_int(c.get(key, default), key, where)

    dim, inter = size("hidden_size", 768), size("intermediate_size", 3072)
    head_classes = int(state["classifier.weight"][0]) if "classifier.weight" in state else None
    model = model_config(
        where, image_size=square_size(c.get("image_size", 224), "image_size", where),
        patch_size=square_size(c.get("patch_size", 16), "patch_size", where), in_channels=size("num_channels", 3),
        num_classes=head_classes or 2, dim=dim, depth=size("num_hidden_layers", 12),
        num_heads=size("num_attention_heads", 12), mlp_ratio=mlp_ratio_of(dim, inter, where),
        layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)), qkv_bias=bool(c.get("qkv_bias", True)),
        gelu=HF_GELU[act],
    )

    def source_key(key: str) -> tuple[str, int | None]:
        if key.startswith("head."):
            return "classifier." + key.removeprefix("head."), None
        if key in HF_TOP:
            return prefix + HF_TOP[key], None
        block, rest = key.removeprefix("blocks.").split(".", 1)
        module, param = rest.rsplit(".", 1)
        return f"{prefix}encoder.layer.{block}.{HF_BLOCK[module]}.{param}", None

    ignored = {k: "the pooler of ViTModel (dense + tanh), which classification does not use"
               for k in state if k.startswith(prefix + "pooler.")}
    ignored.update({k: "the mask token of masked-image pretraining, unused for classification"
                    for k in state if k == prefix + "embeddings.mask_token"})
    spec, facts = hf_preprocess(found.weights.parent / "preprocessor_config.json", model.image_size, note)
    id2label = c.get("id2label")
    source_labels = ordered_labels(id2label, where) if id2label and head_classes else None
    architecture = (c.get("architectures") or ["ViTForImageClassification" if head_classes else "ViTModel"])[0]
    return Recipe(architecture, model, head_classes, source_key, spec, source_labels, ignored, facts,
                  HF_FIELDS)


def hf_preprocess(path: Path, image_size: int, note: Callable[[str], None]) -> tuple[PreprocessSpec, dict[str, Any]]:
    """The image processor's preprocessing, as written in preprocessor_config.json: resized straight to size
    (height x width, aspect ratio not kept), an optional center crop, rescaled by 1/255, normalized."""
    p = read_json(path)
    if p is None:
        note(f"no {path.name}: ViTImageProcessor's defaults (resize to {image_size}x{image_size}, bilinear, "
             "mean and std 0.5)")
        p = {"size": {"height": image_size, "width": image_size}}
    if not p.get("do_resize", True):
        raise CheckpointError(f"{path}: do_resize is false (the images must already be the model's size)")
    if p.get("crop_pct") is not None or p.get("do_pad"):
        raise CheckpointError(f"{path}: crop_pct/do_pad are not part of a ViT image processor vitdeploy reproduces")
    size = p.get("size", {"height": 224, "width": 224})
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if not isinstance(size, dict) or set(size) != {"height", "width"}:
        # e.g. {"shortest_edge": N}: Hugging Face then centers its crop by flooring, timm by rounding
        raise CheckpointError(f"{path}: size {size} is not ViTImageProcessor's resize (height and width)")
    resize = square_size([size["height"], size["width"]], "size", path)
    crop = resize
    if p.get("do_center_crop"):
        crop_size = p.get("crop_size", resize)
        crop = square_size([crop_size["height"], crop_size["width"]] if isinstance(crop_size, dict) else crop_size,
                       "crop_size", path)
        if crop_offset(resize, crop) != (resize - crop) // 2:  # Hugging Face floors; THE crop rounds, as timm
            raise CheckpointError(f"{path}: a {crop} px center crop of {resize} px starts at a half pixel, which "
                                  "Hugging Face rounds down and vitdeploy (as torchvision) to even")
    if crop != image_size:
        raise CheckpointError(f"{path} makes {crop}x{crop} inputs, but the model takes {image_size}x{image_size}")
    resample = p.get("resample", 2)
    if resample not in INTERPOLATIONS:
        raise CheckpointError(f"{path}: resample {resample} is not one of {INTERPOLATIONS} (PIL codes)")
    if not p.get("do_rescale", True) or not math.isclose(float(p.get("rescale_factor", 1 / 255)), 1 / 255):
        raise CheckpointError(f"{path}: pixels are not rescaled by 1/255 before normalisation")
    normalized = p.get("do_normalize", True)
    mean = p.get("image_mean", [0.5] * 3) if normalized else [0.0] * 3
    std = p.get("image_std", [0.5] * 3) if normalized else [1.0] * 3
    spec = PreprocessSpec(image_size=image_size, resize_size=resize, interpolation=INTERPOLATIONS[resample],
                          mean=tuple(mean), std=tuple(std), resize_mode="stretch")
    return spec, {"preprocessing_from": path.name if path.is_file() else "ViTImageProcessor defaults"}
