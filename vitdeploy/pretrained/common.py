"""What both checkpoint formats share: where the files are, what a format says, mapping and refusing tensors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitdeploy.core.config import ModelConfig, PreprocessSpec
from vitdeploy.errors import CheckpointError, ConfigError
from vitdeploy.model.vit import build_model

HF, TIMM = "huggingface", "timm"
STATE_DICT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in a model folder, either library's
MAX_LISTED = 8  # names shown per problem; the count says how many there are in all
MAX_HEADER_BYTES = 100 << 20  # a safetensors header larger than this is not a checkpoint's (the format caps it too)
log = logging.getLogger(__name__)
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
    fields: dict[str, str] = field(default_factory=dict)  # ModelConfig attribute -> where the source sets it


Shapes = dict[str, tuple[int, ...]]


@dataclass
class Checkpoint:
    """A checkpoint file's tensor names and shapes, known before any tensor is read (safetensors: its header)."""

    path: Path
    shapes: Shapes
    state: dict[str, torch.Tensor] | None = None  # a pickle's tensors, memory-mapped when the file allows

    def tensors(self, note: Callable[[str], None]) -> dict[str, torch.Tensor]:
        return self.state if self.state is not None else read_state_dict(self.path, note)



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


def read_checkpoint(path: Path, note: Callable[[str], None]) -> Checkpoint:
    """Names and shapes first: a .safetensors file's header alone (the tensors are read once the config has been
    checked against it); a pickle's state dict, memory-mapped (zip format), so its tensors are not copied yet."""
    if path.suffix.lower() == ".safetensors":
        return Checkpoint(path, safetensors_shapes(path))
    state = read_state_dict(path, note)
    return Checkpoint(path, {k: tuple(v.shape) for k, v in state.items()}, state)


def safetensors_shapes(path: Path) -> Shapes:
    """Tensor shapes from a .safetensors header (8 bytes little-endian length, then JSON), nothing else read."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(f"cannot read {path}: not a safetensors file (its header claims {length} "
                                      f"bytes of a {size}-byte file)")
            header = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"cannot read {path}: its safetensors header is not a JSON object")
    shapes: Shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise CheckpointError(f"cannot read {path}: tensor {name!r} has no valid shape in the header")
        shapes[name] = tuple(shape)
    if not shapes:
        raise CheckpointError(f"{path} does not hold a state dict (names mapped to tensors)")
    if all(k.startswith("module.") for k in shapes):  # as read_state_dict strips it
        shapes = {k.removeprefix("module."): v for k, v in shapes.items()}
    return shapes


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
            state = _torch_load(path)
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


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True), memory-mapped when the file is torch's zip format. torch's warnings (e.g.
    "Detected pickle protocol 4") are held back: a refused file is one line, vitdeploy's; a loaded file's
    warnings are logged."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    for warning in caught:
        log.warning("%s: %s", path, str(warning.message).splitlines()[0])
    return state


def all_tensors(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def refuse_unsupported(path: Path, names: Shapes | dict[str, torch.Tensor]) -> None:
    found: dict[str, str] = {}
    for key in names:
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


def positive_int(value: Any, name: str, where: Path) -> int:
    """A size read from a config file: an integer of at least 1, or CheckpointError naming its field."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or value < 1:
        raise CheckpointError(f"{where}: {name} {value!r} is not a positive integer")
    return value


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
    return positive_int(value, what, where)


def mlp_ratio_of(dim: int, hidden: int, where: Path) -> float:
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise CheckpointError(f"{where}: an MLP width of {hidden} for dim {dim} cannot be expressed as a ratio")
    return ratio


def check_config_fits(where: Path, shapes: Shapes, recipe: Recipe) -> None:
    """Refuse, naming the source's field, a config whose sizes the weights do not hold: depth against the blocks in
    the file, width, patch, channels, input size and MLP width against its tensors' shapes. Only names and shapes
    are read, so a config.json asking for 10000 blocks is refused before anything of its size is allocated; after
    this check the model built is no larger than the weights."""
    cfg, fields = recipe.model, recipe.fields

    def held(key: str) -> tuple[str, tuple[int, ...] | None]:
        name = recipe.source_key(key)[0]
        return name, shapes.get(name)

    def refuse(attr: str, value: Any, found: str) -> None:
        raise CheckpointError(f"{where}: {fields.get(attr, attr)} is {value}, but the weights hold {found}")

    blocks = 0
    while held(f"blocks.{blocks}.norm1.weight")[1] is not None:
        blocks += 1
    if blocks != cfg.depth:
        refuse("depth", cfg.depth, f"{blocks} blocks ({held('blocks.0.norm1.weight')[0].replace('.0.', '.N.')})")
    checks = [  # (attribute, tensor, dimension of its shape, what the config says it is)
        ("dim", "cls_token", -1, cfg.dim),
        ("in_channels", "patch_embed.proj.weight", 1, cfg.in_channels),
        ("patch_size", "patch_embed.proj.weight", 2, cfg.patch_size),
        ("patch_size", "patch_embed.proj.weight", 3, cfg.patch_size),
        ("image_size", "pos_embed", 1, cfg.num_patches + 1),
        ("mlp_ratio", "blocks.0.mlp.fc1.weight", 0, cfg.mlp_hidden),
    ]
    for attr, key, axis, want in checks:
        name, shape = held(key)
        if attr == "image_size" and shape is not None and len(shape) == 3 and shape[1] == cfg.num_patches:
            continue  # position embeddings without the class token's: check_tensors names that
        if shape is not None and len(shape) > max(axis, -axis - 1) and shape[axis] != want:
            value = getattr(cfg, attr) if attr != "mlp_ratio" else f"{cfg.mlp_hidden} wide ({cfg.mlp_ratio} x {cfg.dim})"
            extra = f" ({cfg.num_patches} patches + the class token)" if attr == "image_size" else ""
            refuse(attr, value, f"{name} {shape}{extra}")


def expected_shapes(cfg: ModelConfig) -> Shapes:
    """vitdeploy's tensor names and shapes for `cfg`, from a model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_tensors(path: Path, shapes: Shapes, recipe: Recipe, cfg: ModelConfig) -> None:
    """Every tensor the model needs, with its shape: missing, extra and misshapen ones are listed."""
    expected = expected_shapes(cfg)
    if recipe.head_classes is None:
        expected = {k: v for k, v in expected.items() if not k.startswith("head.")}
    plan = {key: recipe.source_key(key) for key in expected}
    wanted = {src for src, _ in plan.values()}
    described = f"{recipe.architecture} ({cfg.depth} blocks, dim {cfg.dim}, {cfg.num_heads} heads, patch " \
                f"{cfg.patch_size}, {cfg.image_size} px)"
    missing = sorted(wanted - shapes.keys())
    extra = sorted(set(shapes) - wanted - set(recipe.ignored))
    problems = ([f"missing {listing(missing)}"] if missing else []) + ([f"unexpected {listing(extra)}"] if extra else [])
    if problems:
        raise CheckpointError(f"{path} does not hold the tensors of {described}: " + "; ".join(problems))
    wrong: dict[str, str] = {}
    for key, (src, third) in plan.items():
        want = expected[key]
        want = (3 * want[0], *want[1:]) if third is not None else want
        if shapes[src] != want:
            wrong[src] = f"{src} {shapes[src]} in the file, {want} expected"
    if wrong:
        hint = ""
        if "pos_embed" in wrong and shapes["pos_embed"][1] == cfg.num_patches:
            hint = " (position embeddings without the class token's: no_embed_class is not a plain ViT)"
        raise CheckpointError(f"{path}: shapes disagree with {described}: {listing(list(wrong.values()))}{hint}")


def map_weights(
    state: dict[str, torch.Tensor], recipe: Recipe, cfg: ModelConfig, note: Callable[[str], None]
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (checked by check_tensors) under vitdeploy's names, fp32."""
    keys = expected_shapes(cfg)
    plan = {key: recipe.source_key(key) for key in keys if recipe.head_classes is not None or not key.startswith("head.")}
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
