"""`vitdeploy import`: a timm or Hugging Face ViT checkpoint that the user already has -> a vitdeploy bundle.

    SOURCE -> which format: a Hugging Face model folder (config.json + model.safetensors | pytorch_model.bin), or a
              timm state dict (.safetensors | .pth | .bin) with its model name or timm's config.json beside it
           -> refuse what is not a plain ViT, naming what was found (the list: docs/pretrained.md): nothing is
              loaded that would silently compute another function
           -> ModelConfig (dims, heads, depth, patch, input size, LayerNorm eps, qkv bias, GELU form), the labels
              and the source's own evaluation preprocessing (PreprocessSpec)
           -> the config checked against the tensor names and shapes (a safetensors header alone), naming the
              field that asks for more than the weights hold, before anything of the config's size is allocated
           -> every tensor mapped onto vitdeploy's names (timm's packed qkv rows are [q; k; v]); missing, extra
              and misshapen tensors are listed
           -> save_bundle; provenance names the format and the source file's sha256

huggingface.py and timm.py read each format; common.py holds what both share (finding and reading the files,
refusing what is not a plain ViT, mapping tensors, labels). Neither timm nor transformers is imported: the files are read as what they are (JSON, safetensors, or a torch
pickle loaded with weights_only=True, which never runs code) following the two libraries' documented layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitdeploy.core import provenance
from vitdeploy.core.config import DEFAULT_MODELS_DIR, ModelConfig, PreprocessSpec
from vitdeploy.core.notes import Notes
from vitdeploy.errors import CheckpointError
from vitdeploy.files.bundle import BundleInfo, save_bundle
from vitdeploy.files.outputs import BUNDLE, check_output_folder
from vitdeploy.model.vit import build_model, count_parameters
from vitdeploy.pretrained.common import (
    HF,
    MAX_LISTED,
    STATE_DICT_SUFFIXES,
    TIMM,
    WEIGHT_FILES,
    Recipe,
    Source,
    check_config_fits,
    check_tensors,
    file_sha256,
    map_weights,
    read_checkpoint,
    read_json,
    refuse_unsupported,
    resolve_labels,
    with_classes,
)
from vitdeploy.pretrained.huggingface import hf_recipe
from vitdeploy.pretrained.timm import timm_recipe



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
    force: bool = False,
) -> ImportResult:
    """Import a timm or Hugging Face ViT checkpoint as a bundle at `out` (default models/<its name>): a new folder,
    an empty one or a bundle (replaced), else refused unless `force` (outputs.py)."""
    notes = Notes()
    if out is not None:
        out = check_output_folder(out, BUNDLE, force=force)
    found = find_source(Path(source), timm_model)
    checkpoint = read_checkpoint(found.weights, notes.add)
    refuse_unsupported(found.weights, checkpoint.shapes)
    recipe = (hf_recipe(found, checkpoint.shapes, notes.add) if found.format == HF
              else timm_recipe(found, checkpoint.shapes, notes.add))
    check_config_fits(found.weights.parent / "config.json" if found.format == HF else found.weights,
                      checkpoint.shapes, recipe)
    names = resolve_labels(recipe.labels, Path(labels) if labels else None, recipe.head_classes, notes.add)
    cfg = with_classes(recipe.model, len(names))
    check_tensors(found.weights, checkpoint.shapes, recipe, cfg)
    bundle_dir = Path(out) if out else check_output_folder(DEFAULT_MODELS_DIR / _default_name(found, recipe), BUNDLE,
                                                           force=force)
    weights = map_weights(checkpoint.tensors(notes.add), recipe, cfg, notes.add)

    with torch.random.fork_rng(devices=[]):  # a new head (when there is none) is the same on every import
        torch.manual_seed(0)
        model = build_model(cfg)
    model.load_state_dict(weights, strict=recipe.head_classes is not None)
    new_head = recipe.head_classes is None
    if new_head:
        notes.add(f"the checkpoint has no classifier: a new head for the {len(names)} classes of --labels, "
                  "randomly initialised; fine-tune it with vitdeploy train --init")
    sha = file_sha256(found.weights)
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
        config = read_json(source / "config.json")
        if weights is None or config is None:
            held = ", ".join(sorted(p.name for p in source.iterdir())[:MAX_LISTED]) or "nothing"
            raise CheckpointError(
                f"{source} is neither a Hugging Face model folder (config.json with model.safetensors or "
                f"pytorch_model.bin) nor a timm checkpoint (a .safetensors, .pth or .bin file); it holds: {held}"
            )
    else:
        if source.suffix.lower() not in STATE_DICT_SUFFIXES:
            raise CheckpointError(f"{source}: not a checkpoint file ({', '.join(STATE_DICT_SUFFIXES)})")
        weights, config = source, read_json(source.parent / "config.json")
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


def _default_name(found: Source, recipe: Recipe) -> str:
    if found.format == TIMM:
        return recipe.architecture.replace(".", "-")
    return found.weights.parent.resolve().name


