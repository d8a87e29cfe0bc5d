"""`vitdeploy import`: a timm or Hugging Face ViT checkpoint that the user already has -> a vitdeploy bundle.

    SOURCE -> which format: a Hugging Face model folder (config.json + model.safetensors | pytorch_model.bin), or a
              timm state dict (.safetensors | .pth | .bin) with its model name or timm's config.json beside it
           -> refuse what is not a plain ViT, naming what was found (register tokens, layer scale, q/k norm,
              pooling other than the class token, distillation token, non-square patch grid, relative position
              bias, ...): nothing is loaded that would silently compute another function
           -> ModelConfig (dims, heads, depth, patch, input size, LayerNorm eps, qkv bias, GELU form), the labels
              and the source's own evaluation preprocessing (PreprocessSpec)
           -> every tensor mapped onto vitdeploy's names (timm's packed qkv rows are [q; k; v]); missing, extra
              and misshapen tensors are listed
           -> save_bundle; provenance names the format and the source file's sha256

Neither timm nor transformers is imported: the files are read as what they are (JSON, safetensors, or a torch
pickle loaded with weights_only=True, which never runs code) following the two libraries' documented layouts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitdeploy import provenance
from vitdeploy.bundle import BundleInfo, save_bundle
from vitdeploy.config import DEFAULT_MODELS_DIR, IMAGENET_MEAN, IMAGENET_STD, ModelConfig, PreprocessSpec
from vitdeploy.errors import CheckpointError, ConfigError
from vitdeploy.images import crop_offset
from vitdeploy.model import build_model, count_parameters
from vitdeploy.progress import to_stderr

HF, TIMM = "huggingface", "timm"
STATE_DICT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in a model folder, either library's
MAX_LISTED = 8  # names shown per problem; the count says how many there are in all
INTERPOLATIONS = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resample codes in preprocessor_config.json

# What a key part (between dots) means when a state dict has it: each is a mechanism vitdeploy's ViT lacks.
UNSUPPORTED_KEY_PARTS = {
    "reg_token": "register tokens",
    "register_tokens": "register tokens",
    "dist_token": "a distillation token (DeiT distilled)",
    "distillation_token": "a distillation token (DeiT distilled)",
    "head_dist": "a distillation head (DeiT distilled)",
    "ls1": "layer scale",
    "ls2": "layer scale",
    "lambda_1": "layer scale",
    "layer_scale1": "layer scale",
    "q_norm": "q/k norm",
    "k_norm": "q/k norm",
    "fc_norm": "fc_norm (a LayerNorm on average-pooled tokens)",
    "attn_pool": "an attention-pooling head (MAP)",
    "norm_pre": "a LayerNorm before the blocks (norm_pre, as in CLIP)",
    "relative_position_bias_table": "relative position bias",
    "rel_pos_h": "relative position bias",
}

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


@dataclass
class Source:
    """Where the checkpoint's files are and which format they follow."""

    format: str  # HF | TIMM
    weights: Path
    config: dict[str, Any]  # config.json (Hugging Face's or timm's); {} for a timm state dict named by --timm-model
    timm_name: str | None = None


@dataclass
class Recipe:
    """What one format says about the model: the config, how to find each tensor, preprocessing, labels."""

    architecture: str
    model: ModelConfig  # num_classes: the head's, or a placeholder when there is no head
    head_classes: int | None  # None: the checkpoint has no classifier
    source_key: Callable[[str], tuple[str, int | None]]  # vitdeploy name -> (file name, row third of packed qkv)
    spec: PreprocessSpec
    labels: list[str] | None
    ignored: dict[str, str] = field(default_factory=dict)  # file keys deliberately unused -> why
    facts: dict[str, Any] = field(default_factory=dict)  # recorded in the provenance


@dataclass
class ImportResult:
    bundle: Path
    format: str
    architecture: str
    model: ModelConfig
    preprocess: PreprocessSpec
    labels: list[str]
    parameters: int
    new_head: bool
    sha256: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "format": self.format,
            "architecture": self.architecture,
            "model": self.model.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "num_classes": len(self.labels),
            "parameters": self.parameters,
            "new_head": self.new_head,
            "sha256": self.sha256,
            "notes": self.notes,
        }


def import_checkpoint(
    source: str | Path,
    out: str | Path | None = None,
    timm_model: str | None = None,
    labels: str | Path | None = None,
    notify: Callable[[str], None] = to_stderr,
) -> ImportResult:
    """Import a timm or Hugging Face ViT checkpoint as a bundle at `out` (default models/<its name>)."""
    notes: list[str] = []

    def note(line: str) -> None:
        notes.append(line)
        notify(line)

    found = find_source(Path(source), timm_model)
    state = read_state_dict(found.weights, note)
    refuse_unsupported(found.weights, state)
    recipe = hf_recipe(found, state, note) if found.format == HF else timm_recipe(found, state, note)
    names = resolve_labels(recipe.labels, Path(labels) if labels else None, recipe.head_classes, note)
    cfg = _with_classes(recipe.model, len(names))
    weights = map_weights(found.weights, state, recipe, cfg, note)

    with torch.random.fork_rng(devices=[]):  # a new head (when there is none) is the same on every import
        torch.manual_seed(0)
        model = build_model(cfg)
    model.load_state_dict(weights, strict=recipe.head_classes is not None)
    new_head = recipe.head_classes is None
    if new_head:
        note(f"the checkpoint has no classifier: a new head for the {len(names)} classes of --labels, randomly "
             "initialised; fine-tune it with vitdeploy train --init")
    sha = file_sha256(found.weights)
    bundle_dir = Path(out) if out else DEFAULT_MODELS_DIR / _default_name(found, recipe)
    info = BundleInfo(
        model=cfg, preprocess=recipe.spec, labels=names,
        provenance={
            "created_at": provenance.now_iso(),
            "versions": provenance.package_versions(("torch", "safetensors", "numpy", "pillow")),
            "git_commit": provenance.git_commit(),
            "imported": {
                "format": found.format, "file": str(found.weights.resolve()), "sha256": sha,
                "architecture": recipe.architecture, "head": "new" if new_head else "imported", **recipe.facts,
            },
        },
    )
    save_bundle(bundle_dir, model, info)
    return ImportResult(bundle_dir, found.format, recipe.architecture, cfg, recipe.spec, names,
                        count_parameters(model), new_head, sha, notes)


# ------------------------------------------------------------------------------------------ finding files


def find_source(source: Path, timm_model: str | None) -> Source:
    """Decide the format from the files: a Hugging Face folder, or a timm state dict with its model named."""
    if not source.exists():
        raise CheckpointError(f"{source}: no such file or folder")
    if source.is_dir():
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (source / index).is_file():
                raise CheckpointError(f"{source}: sharded checkpoints ({index}) are not supported")
        weights = next((source / n for n in WEIGHT_FILES if (source / n).is_file()), None)
        config = _read_json(source / "config.json")
        if weights is None or config is None:
            held = ", ".join(sorted(p.name for p in source.iterdir())[:MAX_LISTED]) or "nothing"
            raise CheckpointError(
                f"{source} is neither a Hugging Face model folder (config.json with model.safetensors or "
                f"pytorch_model.bin) nor a timm checkpoint (a .safetensors, .pth or .bin file); it holds: {held}"
            )
    else:
        if source.suffix.lower() not in STATE_DICT_SUFFIXES:
            raise CheckpointError(f"{source}: not a checkpoint file ({', '.join(STATE_DICT_SUFFIXES)})")
        weights, config = source, _read_json(source.parent / "config.json")
    if timm_model or config is not None and "architecture" in config:
        timm_config = config if config is not None and "architecture" in config else {}
        if config and not timm_config:
            raise CheckpointError(f"{source}: --timm-model is for timm state dicts, but {weights.parent / 'config.json'}"
                                  " is a Hugging Face config; drop --timm-model")
        name = timm_model or timm_config["architecture"]
        recorded = timm_config.get("architecture")
        if recorded and recorded.split(".")[0] != name.split(".")[0]:
            raise CheckpointError(f"--timm-model {name} contradicts the config.json beside {source} ({recorded})")
        return Source(TIMM, weights, timm_config, name)
    if config is not None and ("model_type" in config or "architectures" in config):
        return Source(HF, weights, config)
    raise CheckpointError(
        f"{source}: a state dict alone does not say which model it is: pass --timm-model NAME (e.g. "
        "vit_tiny_patch16_224) or put timm's config.json (architecture, pretrained_cfg) beside it"
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def read_state_dict(path: Path, note: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """Tensors by name from a .safetensors file, or from a torch pickle loaded with weights_only=True (a pickle
    that needs anything but tensors and plain containers is refused before any of it runs)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(path)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {path}: {e}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))  # the callable a pickle wants to run or build
            if found is None:
                raise CheckpointError(f"cannot read {path}: not a pickle of tensors that "
                                      "torch.load(weights_only=True) reads") from None
            raise CheckpointError(f"{path} holds pickled objects other than tensors ({found.group(1)}); refused "
                                  "without running it (.bin/.pth files load with torch.load(weights_only=True) only)"
                                  ) from None
        except Exception as e:  # not a zip or legacy torch file: torch raises several unrelated types
            raise CheckpointError(f"cannot read {path} as a PyTorch state dict: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and not _all_tensors(state):
        for key in ("state_dict", "model"):  # training checkpoints keep the weights in one entry
            if isinstance(state.get(key), dict) and _all_tensors(state[key]):
                note(f"weights read from the checkpoint's {key!r} entry")
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} does not hold a state dict (names mapped to tensors)")
    others = [f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise CheckpointError(f"{path} holds entries that are not tensors: {_listing(others)}")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _all_tensors(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def refuse_unsupported(path: Path, state: dict[str, torch.Tensor]) -> None:
    found: dict[str, str] = {}
    for key in state:
        for part in key.split("."):
            if part in UNSUPPORTED_KEY_PARTS:
                found.setdefault(UNSUPPORTED_KEY_PARTS[part], key)
    if found:
        what = "; ".join(f"{desc} ({key})" for desc, key in found.items())
        raise CheckpointError(f"{path} is not a plain ViT: it has {what}. vitdeploy's ViT has none of these, and "
                              "loading it without them would compute a different function")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _default_name(found: Source, recipe: Recipe) -> str:
    if found.format == TIMM:
        return recipe.architecture.replace(".", "-")
    return found.weights.parent.resolve().name


# ---------------------------------------------------------------------------------------------- Hugging Face


def hf_recipe(found: Source, state: dict[str, torch.Tensor], note: Callable[[str], None]) -> Recipe:
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
    dim, inter = int(c.get("hidden_size", 768)), int(c.get("intermediate_size", 3072))
    head_classes = int(state["classifier.weight"].shape[0]) if "classifier.weight" in state else None
    model = _model_config(
        where, image_size=_square(c.get("image_size", 224), "image_size", where),
        patch_size=_square(c.get("patch_size", 16), "patch_size", where), in_channels=int(c.get("num_channels", 3)),
        num_classes=head_classes or 2, dim=dim, depth=int(c.get("num_hidden_layers", 12)),
        num_heads=int(c.get("num_attention_heads", 12)), mlp_ratio=_mlp_ratio(dim, inter, where),
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
    source_labels = _ordered_labels(id2label, where) if id2label and head_classes else None
    architecture = (c.get("architectures") or ["ViTForImageClassification" if head_classes else "ViTModel"])[0]
    return Recipe(architecture, model, head_classes, source_key, spec, source_labels, ignored, facts)


def hf_preprocess(path: Path, image_size: int, note: Callable[[str], None]) -> tuple[PreprocessSpec, dict[str, Any]]:
    """The image processor's preprocessing, as written in preprocessor_config.json: resized straight to size
    (height x width, aspect ratio not kept), an optional center crop, rescaled by 1/255, normalized."""
    p = _read_json(path)
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
    resize = _square([size["height"], size["width"]], "size", path)
    crop = resize
    if p.get("do_center_crop"):
        crop_size = p.get("crop_size", resize)
        crop = _square([crop_size["height"], crop_size["width"]] if isinstance(crop_size, dict) else crop_size,
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


def _ordered_labels(id2label: dict[str, str], where: Path) -> list[str]:
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: id2label keys must be class indices") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise CheckpointError(f"{where}: id2label does not number the classes 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]


# ------------------------------------------------------------------------------------------------------ timm


def timm_recipe(found: Source, state: dict[str, torch.Tensor], note: Callable[[str], None]) -> Recipe:
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
    dim = int(args.get("embed_dim", dim))
    image_size = _square(args.get("img_size", int(match["img"])), "img_size", where)
    head_classes = int(state["head.weight"].shape[0]) if "head.weight" in state else None
    model = _model_config(
        where, image_size=image_size, patch_size=_square(args.get("patch_size", int(match["patch"])), "patch_size", where),
        in_channels=int(args.get("in_chans", 3)), num_classes=head_classes or 2, dim=dim,
        depth=int(args.get("depth", depth)), num_heads=int(args.get("num_heads", heads)),
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
    return Recipe(name, model, head_classes, source_key, spec, _timm_labels(found.config, where), {}, facts)


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
    size = _square(list(cfg["input_size"])[1:], "input_size", Path("pretrained_cfg"))
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


def _timm_labels(config: dict[str, Any], where: Path) -> list[str] | None:
    names = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names")
    if isinstance(names, dict):
        return _ordered_labels(names, where)
    return [str(n) for n in names] if names else None


# ------------------------------------------------------------------------------------------------ shared


def _model_config(where: Path, **fields: Any) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None


def _with_classes(cfg: ModelConfig, num_classes: int) -> ModelConfig:
    try:
        return dataclasses.replace(cfg, num_classes=num_classes)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def _square(value: Any, what: str, where: Path) -> int:
    """An int, or a [h, w] pair with h == w; anything else is a non-square grid vitdeploy does not model."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"{where}: {what} {list(value)} is not square (a non-square patch grid)")
        value = value[0]
    return int(value)


def _mlp_ratio(dim: int, hidden: int, where: Path) -> float:
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise CheckpointError(f"{where}: an MLP width of {hidden} for dim {dim} cannot be expressed as a ratio")
    return ratio


def map_weights(
    path: Path, state: dict[str, torch.Tensor], recipe: Recipe, cfg: ModelConfig, note: Callable[[str], None]
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under vitdeploy's names, fp32; missing, extra and misshapen ones are listed."""
    expected = build_model(cfg).state_dict()
    if recipe.head_classes is None:
        expected = {k: v for k, v in expected.items() if not k.startswith("head.")}
    plan = {key: recipe.source_key(key) for key in expected}
    wanted = {src for src, _ in plan.values()}
    described = f"{recipe.architecture} ({cfg.depth} blocks, dim {cfg.dim}, {cfg.num_heads} heads, patch " \
                f"{cfg.patch_size}, {cfg.image_size} px)"
    missing = sorted(wanted - state.keys())
    extra = sorted(set(state) - wanted - set(recipe.ignored))
    problems = ([f"missing {_listing(missing)}"] if missing else []) + ([f"unexpected {_listing(extra)}"] if extra else [])
    if problems:
        raise CheckpointError(f"{path} does not hold the tensors of {described}: " + "; ".join(problems))
    shapes: dict[str, str] = {}
    for key, (src, third) in plan.items():
        want = tuple(expected[key].shape)
        want = (3 * want[0], *want[1:]) if third is not None else want
        if tuple(state[src].shape) != want:
            shapes[src] = f"{src} {tuple(state[src].shape)} in the file, {want} expected"
    if shapes:
        hint = ""
        if "pos_embed" in shapes and state["pos_embed"].shape[1] == cfg.num_patches:
            hint = " (position embeddings without the class token's: no_embed_class is not a plain ViT)"
        raise CheckpointError(f"{path}: shapes disagree with {described}: {_listing(list(shapes.values()))}{hint}")
    for key, why in sorted(recipe.ignored.items()):
        note(f"not imported: {key}: {why}")
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()} - {"float32"})
    if dtypes:
        note(f"weights stored as {', '.join(dtypes)}: converted to float32")
    return {key: (state[src].chunk(3)[third] if third is not None else state[src]).float().contiguous()
            for key, (src, third) in plan.items()}


def resolve_labels(
    from_source: list[str] | None, labels_file: Path | None, head_classes: int | None, note: Callable[[str], None]
) -> list[str]:
    """--labels FILE (one per line), else the checkpoint's own names, else class_0..N-1 with a warning."""
    if labels_file is not None:
        try:
            names = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"--labels {labels_file}: {e}") from None
        if head_classes is not None and len(names) != head_classes:
            raise CheckpointError(f"--labels {labels_file} names {len(names)} classes, the checkpoint's head has "
                                  f"{head_classes}")
        if len(set(names)) != len(names):
            raise CheckpointError(f"--labels {labels_file} names a class twice")
        return names
    if head_classes is None:
        raise CheckpointError("the checkpoint has no classifier: pass --labels FILE with the classes (one per line) "
                              "for a new head to fine-tune")
    if from_source is not None:
        if len(from_source) != head_classes:
            raise CheckpointError(f"the checkpoint names {len(from_source)} labels but its head has {head_classes} "
                                  "classes")
        return from_source
    note(f"warning: the checkpoint names no labels: class_0..class_{head_classes - 1}; pass --labels FILE to name them")
    return [f"class_{i}" for i in range(head_classes)]


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > MAX_LISTED else "")
