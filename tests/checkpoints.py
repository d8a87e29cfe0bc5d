"""Pretrained checkpoints as users have them, made here without any download: a randomly initialised transformers
ViT saved with save_pretrained, and the same weights written in timm's state-dict layout (timm itself cannot be
installed here). Needs transformers (the dev extra); vitdeploy's import needs neither."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

# A small ViT that still has several heads and blocks: fast enough to export and verify in a test.
SMALL = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=32, patch_size=8)
# ViT-Ti/16, the smallest published ViT.
VIT_TI16 = dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, image_size=224, patch_size=16)
VIT_B16 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16)
TIMM_SETTINGS = dict(layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True)  # timm's VisionTransformer defaults


def hf_vit(labels: list[str], seed: int = 0, **config: Any) -> Any:
    """A randomly initialised ViTForImageClassification; biases, LayerNorms, cls token and position embeddings are
    randomized too, so that a dropped, swapped or mis-normalised tensor changes the logits."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    settings = {"intermediate_size": 4 * config.get("hidden_size", 768), **config}
    cfg = ViTConfig(**settings, num_labels=len(labels), id2label=dict(enumerate(labels)),
                    label2id={name: i for i, name in enumerate(labels)})
    model = ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                param.add_(0.1 * torch.randn_like(param))
            if "token" in name or "position" in name:
                param.normal_(0.0, 0.5)
        model.classifier.weight.mul_(20)  # logits far apart, so that top-1 is a meaningful comparison
    return model


def save_hf(model: Any, folder: Path) -> Path:
    """As a user has it: save_pretrained, plus the matching ViTImageProcessor config."""
    from transformers import ViTImageProcessor

    size = model.config.image_size
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def timm_state_dict(hf_folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a save_pretrained folder under timm's VisionTransformer names (timm/models/
    vision_transformer.py: packed attn.qkv with rows [q; k; v], norm1/norm2, mlp.fc1/fc2, norm, head), read from the
    file (the Hub's key layout), not from transformers' module names."""
    from safetensors.torch import load_file

    hub = load_file(hf_folder / "model.safetensors")
    depth = 1 + max(int(k.split(".")[3]) for k in hub if k.startswith("vit.encoder.layer."))
    state = {
        "cls_token": hub["vit.embeddings.cls_token"],
        "pos_embed": hub["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": hub["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hub["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hub["vit.layernorm.weight"],
        "norm.bias": hub["vit.layernorm.bias"],
        "head.weight": hub["classifier.weight"],
        "head.bias": hub["classifier.bias"],
    }
    for i in range(depth):
        layer = f"vit.encoder.layer.{i}."
        attn = layer + "attention.attention."
        for param in ("weight", "bias"):
            state[f"blocks.{i}.attn.qkv.{param}"] = torch.cat(
                [hub[f"{attn}{part}.{param}"] for part in ("query", "key", "value")])
            for timm_name, hub_name in (("norm1", "layernorm_before"), ("attn.proj", "attention.output.dense"),
                                        ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"),
                                        ("mlp.fc2", "output.dense")):
                state[f"blocks.{i}.{timm_name}.{param}"] = hub[f"{layer}{hub_name}.{param}"]
    return state


def save_timm(state: dict[str, torch.Tensor], path: Path, config: dict[str, Any] | None = None) -> Path:
    """A timm checkpoint file (.safetensors, or a torch.save pickle for .pth/.bin), with timm's hub config.json
    beside it when `config` is given."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    if config is not None:
        (path.parent / "config.json").write_text(json.dumps(config, indent=2))
    return path


def hf_logits(model: Any, x: torch.Tensor | np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(pixel_values=torch.as_tensor(x)).logits.numpy()


def timm_eval_transform(img: Image.Image, size: int, crop_pct: float, mean, std, interpolation=Image.BICUBIC):
    """timm's documented evaluation transform (transforms_imagenet_eval, crop_mode "center"), with Pillow:
    torchvision's Resize(floor(size / crop_pct)) on the shorter side (longer side truncated), CenterCrop(size)
    (offset rounded), ToTensor (/255), Normalize."""
    scale = math.floor(size / crop_pct)
    w, h = img.size
    new = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    img = img.convert("RGB").resize(new, interpolation)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    x = np.asarray(img.crop((left, top, left + size, top + size)), np.float32).transpose(2, 0, 1) / 255.0
    return (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]


def sample_photos(folder: Path) -> list[Path]:
    """Real photos that ship with scikit-learn (china, flower), whole and cropped to other shapes and sizes,
    saved as PNG and JPEG."""
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pixels in zip(("china", "flower"), load_sample_images().images):
        photo = Image.fromarray(pixels)
        variants = {"whole": photo, "portrait": photo.crop((200, 0, 420, 427)),
                    "small": photo.crop((100, 100, 400, 300)).resize((150, 100), Image.BICUBIC)}
        for variant, img in variants.items():
            for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg")):
                path = folder / f"{name}-{variant}{suffix}"
                img.save(path, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
                paths.append(path)
    return paths


def predict_against_reference(onnx_path: Path, photos: list[Path], reference: np.ndarray) -> dict[str, Any]:
    """vitdeploy predict on `photos` against the reference logits (the source library's preprocessing and model):
    top-1 agreement from predict's rows, and the largest |logit difference| of predict's own pipeline (its
    decoding, preprocessing and session), overall and per file format."""
    import vitdeploy
    from vitdeploy.prediction.local import load_model_input
    from vitdeploy.runtimes import open_runtime

    summary = vitdeploy.predict([str(p) for p in photos], model=onnx_path)
    predicted = {row["path"]: row["label"] for row in summary.rows}
    session = open_runtime(None, onnx_path, device="cpu")
    batch = np.stack([load_model_input(p, session.preprocess) for p in photos])
    diffs = np.abs(session.run(batch) - reference).max(1)
    agree = [predicted[str(p)] == session.labels[int(i)] for p, i in zip(photos, reference.argmax(1))]
    return {
        "images": len(photos), "top1_agreement": sum(agree) / len(agree), "max_abs_logit_diff": float(diffs.max()),
        "max_abs_logit_diff_by_format": {s: float(max(d for p, d in zip(photos, diffs) if p.suffix == s))
                                         for s in sorted({p.suffix for p in photos})},
        "reference_max_abs_logit": float(np.abs(reference).max()),
    }
