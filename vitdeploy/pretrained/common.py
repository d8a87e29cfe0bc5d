"""What both checkpoint formats share: where the files are, what a format says, mapping and refusing tensors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitdeploy.config import ModelConfig, PreprocessSpec
from vitdeploy.errors import CheckpointError, ConfigError
from vitdeploy.model import build_model

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



def read_json(path: Path) -> dict[str, Any] | None:
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
    if isinstance(state, dict) and not all_tensors(state):
        for key in ("state_dict", "model"):  # training checkpoints keep the weights in one entry
            if isinstance(state.get(key), dict) and all_tensors(state[key]):
                note(f"weights read from the checkpoint's {key!r} entry")
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} does not hold a state dict (names mapped to tensors)")
    others = [f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise CheckpointError(f"{path} holds entries that are not tensors: {listing(others)}")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def all_tensors(d: dict) -> bool:
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



# ------------------------------------------------------------------------------------------------ shared


def model_config(where: Path, **fields: Any) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None


def with_classes(cfg: ModelConfig, num_classes: int) -> ModelConfig:
    try:
        return dataclasses.replace(cfg, num_classes=num_classes)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def square_size(value: Any, what: str, where: Path) -> int:
    """An int, or a [h, w] pair with h == w; anything else is a non-square grid vitdeploy does not model."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"{where}: {what} {list(value)} is not square (a non-square patch grid)")
        value = value[0]
    return int(value)


def mlp_ratio_of(dim: int, hidden: int, where: Path) -> float:
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
    problems = ([f"missing {listing(missing)}"] if missing else []) + ([f"unexpected {listing(extra)}"] if extra else [])
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
        raise CheckpointError(f"{path}: shapes disagree with {described}: {listing(list(shapes.values()))}{hint}")
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


def listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > MAX_LISTED else "")


def ordered_labels(id2label: dict[str, str], where: Path) -> list[str]:
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: id2label keys must be class indices") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise CheckpointError(f"{where}: id2label does not number the classes 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]
