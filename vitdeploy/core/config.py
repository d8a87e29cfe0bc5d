"""Frozen configuration dataclasses and the presets table.

Torch-free: the deployment path (predict, runtime) reads these too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitdeploy.errors import ConfigError

# Where train writes run folders, and where export, verify, predict and bench look for the latest model.
DEFAULT_MODELS_DIR = Path("models")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GELU_FORMS = ("erf", "tanh")
RESIZE_MODES = ("shorter_side", "stretch")


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 16  # input height = width, in pixels
    patch_size: int = 4  # side of each square patch; image_size must be a multiple
    in_channels: int = 3  # RGB; grayscale data is replicated to 3 channels by preprocessing
    num_classes: int = 10  # width of the classification head
    dim: int = 64  # D: width of every token embedding
    depth: int = 4  # L: number of transformer blocks
    num_heads: int = 4  # attention heads; dim must be a multiple
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * dim
    dropout: float = 0.0  # dropout on embeddings, attention output and MLP
    layer_norm_eps: float = 1e-6  # timm's ViTs: 1e-6; Hugging Face's: 1e-12
    qkv_bias: bool = True  # q, k and v Linear layers with a bias
    gelu: str = "erf"  # the MLP's GELU: "erf" (exact, nn.GELU) or "tanh" (the tanh approximation)

    def __post_init__(self) -> None:
        if self.gelu not in GELU_FORMS:
            raise ConfigError(f"gelu must be one of {', '.join(GELU_FORMS)}, not {self.gelu!r}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.num_heads:
            raise ConfigError(f"dim {self.dim} is not a multiple of num_heads {self.num_heads}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {self.num_classes}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, d)


@dataclass(frozen=True)
class PreprocessSpec:
    """THE preprocessing definition: decoded RGB image -> float32 [C, H, W] model input.

    Steps (implemented once, in images.preprocess):
      1. resize with `interpolation`, per `resize_mode`:
         "shorter_side": the shorter side to `resize_size`, aspect ratio kept (timm's eval transform, with
             resize_size = floor(image_size / crop_pct));
         "stretch": to `resize_size` x `resize_size`, aspect ratio not kept (Hugging Face's ViTImageProcessor,
             where resize_size = image_size, and timm's crop_mode "squash");
      2. center-crop `image_size` x `image_size` (the crop fraction is image_size / resize_size);
      3. scale uint8 to [0, 1], subtract `mean` and divide by `std` per channel;
      4. lay out as `channel_order` channels first (CHW).
    """

    image_size: int
    resize_size: int
    interpolation: str = "bilinear"  # bilinear | bicubic | nearest
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    resize_mode: str = "shorter_side"  # shorter_side | stretch (bundles and files from before it: shorter_side)

    def __post_init__(self) -> None:
        if self.resize_size < self.image_size:
            raise ConfigError("resize_size must be >= image_size")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ConfigError(f"unknown interpolation {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"unknown resize mode {self.resize_mode!r} (one of {', '.join(RESIZE_MODES)})")
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"unknown channel order {self.channel_order!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        return _from_dict(cls, d)

    @property
    def crop_fraction(self) -> float:
        """The share of the resized image's side that the center crop keeps (timm's crop_pct)."""
        return self.image_size / self.resize_size

    def resized(self, image_size: int) -> PreprocessSpec:
        """The same preprocessing for another input size: same crop fraction, resize mode, filter and statistics."""
        return dataclasses.replace(
            self, image_size=image_size, resize_size=math.floor(image_size * self.resize_size / self.image_size)
        )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3  # peak learning rate after warm-up
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05  # share of all steps spent warming up linearly
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    label_smoothing: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    seed: int = 0
    val_fraction: float = 0.2  # held-out share when the data has no val/ split

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, d)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # resize_size / image_size; 224 -> 256 is the classic ImageNet eval resize.
    resize_ratio: float = 256 / 224
    # torch intra-op threads while training (unless OMP_NUM_THREADS is set); None: torch's default, one per core.
    threads: int | None = None

    def preprocess_spec(self, image_size: int | None = None) -> PreprocessSpec:
        size = image_size or self.model.image_size
        return PreprocessSpec(
            image_size=size, resize_size=round(size * self.resize_ratio), mean=self.mean, std=self.std
        )


# The digits models' operations (32 images x 17 tokens x 64 dims) are too small to split across cores: a second
# intra-op thread gains little when the cores are idle and, when another process wants a core, every operation
# waits for both threads (measured: 10-20x slower per step, benchmarks/train_speed.md).
SMALL_MODEL_THREADS = 1


def _vit(dim: int, heads: int, **kw: Any) -> ModelConfig:
    return ModelConfig(
        image_size=224, patch_size=16, num_classes=1000, dim=dim, depth=12, num_heads=heads, mlp_ratio=4.0, **kw
    )


DEFAULT_PRESET = "digits"  # what `vitdeploy train` trains when no --preset, --data or --resume says otherwise
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="digits",
            description="small ViT for the embedded scikit-learn digits (16 px, patch 4); ~25 s of one CPU core",
            model=ModelConfig(image_size=16, patch_size=4, dim=64, depth=4, num_heads=4, mlp_ratio=2.0),
            # 36 epochs of 64 cost what 30 of 32 did (a step of 64 costs less than two of 32) and do better: best
            # held-out 98.82% on average over seeds 0-11 (98.05-99.72) against 98.40% (97.49-99.16). A CPU's own
            # kernels move the result as a seed does (benchmarks/train_speed.md).
            train=TrainConfig(epochs=36, batch_size=64, lr=2e-3, weight_decay=0.05),
            # digits are white-on-black strokes: ~0.2 mean, ~0.35 std after scaling to [0, 1]
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            resize_ratio=1.0,
            threads=SMALL_MODEL_THREADS,
        ),
        Preset(
            name="tiny",
            description="a very small ViT on the digits for smoke tests and CI (seconds, not accuracy)",
            model=ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, num_heads=2, mlp_ratio=2.0),
            train=TrainConfig(epochs=2, batch_size=32, lr=2e-3),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            resize_ratio=1.0,
            threads=SMALL_MODEL_THREADS,
        ),
        Preset("vit-ti16", "ViT-Ti/16 at 224 px (5.7M parameters)", _vit(192, 3)),
        Preset("vit-s16", "ViT-S/16 at 224 px (22M parameters)", _vit(384, 6)),
        Preset("vit-b16", "ViT-B/16 at 224 px (86M parameters)", _vit(768, 12)),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kwargs)


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable differences between two flat config dicts: 'key: a -> b'."""
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def comma_list(values: str | Sequence[str] | None, lower: bool = False) -> tuple[str, ...]:
    """The one reading of a comma-separated option: "a, b" or ["a,b", "b"] -> ("a", "b"). Parts are stripped
    (and lower-cased with `lower`), empty ones dropped, repeats kept once, in the order given; None -> ()."""
    if values is None:
        return ()
    texts = [values] if isinstance(values, str) else list(values)
    parts = (part.strip() for text in texts for part in text.split(","))
    return tuple(dict.fromkeys(part.lower() if lower else part for part in parts if part))


def parse_batch_sizes(text: str, option: str = "--batch-sizes") -> tuple[int, ...]:
    """'1,7,32' -> (1, 7, 32); anything but positive integers is a usage error naming the option."""
    try:
        sizes = tuple(int(part) for part in comma_list(text))
    except ValueError:
        sizes = ()
    if not sizes or any(b < 1 for b in sizes):
        raise ConfigError(f"{option} wants positive integers separated by commas, e.g. 1,7,32; got {text!r}")
    return sizes


@dataclass(frozen=True)
class RunPlan:
    """The resolved configuration of a run."""

    preset: str
    model: ModelConfig
    train: TrainConfig
    spec: PreprocessSpec
    data: Path | None
    out: Path
    init: str | None = None  # the bundle a fine-tuning run started from
    threads: int | None = None  # torch intra-op threads while training (Preset.threads); None: torch's default
