"""`vitdeploy train --init BUNDLE`: fine-tune from a bundle's weights (typically one made by `vitdeploy import`).

    bundle -> its architecture and preprocessing (another --image-size: same crop fraction and filter)
           -> a fresh model seeded as usual, then the bundle's weights loaded into it, except
                - the head, when the data's classes are not the bundle's (the new head keeps its fresh init);
                - the position embeddings, resampled (bicubic) to the new patch grid when --image-size differs
           -> fine-tuning defaults: fewer epochs, a lower learning rate, a short warm-up (each overridable)

run.py calls plan_init (run planning) and initial_model (model construction); the loop is the usual one.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from vitdeploy.core.config import DEFAULT_MODELS_DIR, ModelConfig, RunPlan, TrainConfig
from vitdeploy.errors import ConfigError
from vitdeploy.files.bundle import load_bundle, read_bundle_info
from vitdeploy.model.vit import VisionTransformer, build_model

if TYPE_CHECKING:
    from vitdeploy.requests import TrainRequest

logger = logging.getLogger(__name__)

# Pretrained weights want small steps, or the first updates (through a new, random head) wreck them: against the
# presets' from-scratch 60 epochs at 2e-3, 10 epochs at 1e-4, batch 32, the first epoch in ten warming up.
FINETUNE = TrainConfig(epochs=10, batch_size=32, lr=1e-4, weight_decay=0.05, warmup_fraction=0.1)


def plan_init(request: TrainRequest, overrides: dict[str, object]) -> RunPlan:
    """The run of `train --init`: the bundle's architecture and preprocessing, fine-tuning defaults."""
    if request.preset is not None:
        raise ConfigError("--init takes the architecture from the bundle; drop --preset")
    info = read_bundle_info(request.init)
    model, spec = info.model, info.preprocess
    if request.image_size and request.image_size != model.image_size:
        model = dataclasses.replace(model, image_size=request.image_size)  # validates the patch multiple
        spec = spec.resized(request.image_size)
    train = dataclasses.replace(FINETUNE, **overrides)
    name = request.data.resolve().name if request.data else f"{Path(request.init).resolve().name}-finetuned"
    return RunPlan("init", model, train, spec, request.data, Path(request.out or DEFAULT_MODELS_DIR / name),
                   init=str(Path(request.init).resolve()))


def initial_model(bundle: Path, cfg: ModelConfig, labels: list[str]) -> VisionTransformer:
    """A model for `cfg` (the data's classes, maybe another image size) holding the bundle's weights.

    Seed torch before calling: the parts not taken from the bundle (a new head) keep build_model's init.
    """
    model = build_model(cfg)
    source, info = load_bundle(bundle)
    state = source.state_dict()
    if info.labels != labels:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        logger.info("new head for the data's %d classes (the bundle's %d differ), randomly initialised",
                    len(labels), len(info.labels))
    if cfg.image_size != info.model.image_size:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], cfg.image_size // cfg.patch_size)
        old = info.model.image_size // info.model.patch_size
        new = cfg.image_size // cfg.patch_size
        logger.info("position embeddings interpolated from %dx%d to %dx%d patches (%d -> %d px, bicubic)",
                    old, old, new, new, info.model.image_size, cfg.image_size)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ConfigError(f"{bundle} does not fit the fine-tuning model: missing {missing}, unexpected {unexpected}")
    return model


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + g*g, D) -> (1, 1 + grid*grid, D): the class token's embedding kept, the patch grid's resampled."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    old = int(round(patches.shape[1] ** 0.5))
    dim = patches.shape[-1]
    image = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2)  # (1, D, g, g)
    # antialias only matters when shrinking; it keeps a smaller grid from aliasing the learned pattern
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False, antialias=grid < old)
    return torch.cat([cls, image.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)], dim=1)
