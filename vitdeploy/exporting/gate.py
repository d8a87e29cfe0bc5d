"""The accuracy gate: a reduced-precision variant is handed out only when it is as accurate as PyTorch fp32.

Each variant is compared with PyTorch fp32 on the same preprocessed held-out real images of the bundle: top-1
agreement, accuracy and its change, max |logit difference|. Defaults: at most 0.5 percentage points of accuracy
lost and at least 99% of images with the same top-1 class. On a few hundred images 0.5 pt is one or two images:
the gate is as coarse as the held-out split is small, and the report says how many images it judged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from vitdeploy.core.config import PreprocessSpec
from vitdeploy.errors import ConfigError, DataError
from vitdeploy.exporting.image_input import CHECK_SIZES, MAX_PIXEL_LEVELS, PIXELS_OUTPUT, as_layout, pixel_levels
from vitdeploy.files.onnx_file import OUTPUT_NAME
from vitdeploy.files.variants import EXPORT
from vitdeploy.requests import MAX_ACCURACY_DROP, MIN_TOP1_AGREEMENT
from vitdeploy.runtimes import open_runtime, this_machine
from vitdeploy.verification.parity import ParityReport, compare_logits

if TYPE_CHECKING:
    from vitdeploy.files.bundle import BundleInfo

GATE_BATCH_SIZE = 32  # INT8 dynamic quantization scales by the whole batch: judge it at a serving batch size
GATE_MAX_IMAGES = 2000
# The raw-image variant (export --image-input) is judged on this many held-out images as decoded, and on as many of
# them again presented at image_input.CHECK_SIZES, as grey, RGB and RGBA images in turn.
IMAGE_GATE_IMAGES = 100


@dataclass(frozen=True)
class AccuracyGate:
    """When a reduced-precision variant may replace the fp32 model."""

    max_accuracy_drop: float = MAX_ACCURACY_DROP  # percentage points of held-out accuracy
    min_top1_agreement: float = MIN_TOP1_AGREEMENT  # share of images with PyTorch's top-1 class

    def __post_init__(self) -> None:
        if not self.max_accuracy_drop >= 0:
            raise ConfigError(f"--max-accuracy-drop must be >= 0 percentage points, got {self.max_accuracy_drop}")
        if not 0 <= self.min_top1_agreement <= 1:
            raise ConfigError(f"the minimum top-1 agreement must be within 0..1, got {self.min_top1_agreement}")


@dataclass
class GateResult:
    """One variant judged against PyTorch fp32 on the held-out images."""

    variant: str
    precision: str
    provider: str  # the provider the variant's session really used
    images: int
    image_source: str
    batch_size: int
    reference_accuracy: float  # PyTorch fp32
    accuracy: float
    top1_agreement: float
    max_abs: float  # max |logit difference| over all images and classes
    gate: AccuracyGate
    max_abs_allowed: float | None = None  # only the fused fp32 variant is also judged on its logits
    runtime: dict[str, str] | None = None  # what ran it: runtime, device, provider, precision (Session.describe)
    # the raw-image variant only: max |its preprocessed pixels - images.preprocess's|, in levels of 1/255
    max_pixel_levels: float | None = None
    pixel_images: int = 0  # the images that difference was measured on
    isa_class: str | None = None  # the CPU class it was judged on (core.cpu.isa_class)
    # a searched INT8 variant only: the share of multiply-accumulates its search left in INT8 (quant_search)
    int8_macs_share: float | None = None

    @property
    def accuracy_drop_pt(self) -> float:
        return 100.0 * (self.reference_accuracy - self.accuracy)

    def failures(self) -> list[str]:
        why = []
        if self.accuracy_drop_pt > self.gate.max_accuracy_drop + 1e-9:
            why.append(f"accuracy {self.accuracy:.2%} vs PyTorch fp32 {self.reference_accuracy:.2%} "
                       f"(-{self.accuracy_drop_pt:.2f} pt > {self.gate.max_accuracy_drop:g} pt allowed)")
        if self.top1_agreement < self.gate.min_top1_agreement:
            why.append(f"top-1 agreement {self.top1_agreement:.2%} < {self.gate.min_top1_agreement:.0%}")
        if self.max_abs_allowed is not None and self.max_abs > self.max_abs_allowed:
            why.append(f"max |diff| {self.max_abs:.2e} > {self.max_abs_allowed:g}")
        if self.max_pixel_levels is not None and not self.max_pixel_levels <= MAX_PIXEL_LEVELS + 1e-3:
            why.append(f"preprocessed pixels {self.max_pixel_levels:.2f}/255 from images.preprocess's "
                       f"(> {MAX_PIXEL_LEVELS:g} allowed)")
        if self.int8_macs_share == 0.0:  # an INT8 file with no INT8 in it would only mislead
            why.append("no INT8 left (its search took every layer back to float to keep PyTorch's answers)")
        return why

    @property
    def passed(self) -> bool:
        return not self.failures()

    def summary(self) -> dict[str, Any]:
        """What goes into the variant's metadata (vitdeploy.verification.parity) and the --json output."""
        return {
            "passed": self.passed,
            "precision": self.precision,
            "variant": self.variant,
            "providers": [self.provider],
            "runtimes": [(self.runtime or {}).get("runtime", "ort")],
            "runtime": self.runtime,
            "isa_class": self.isa_class,
            "samples": {"real": self.images, "real_source": self.image_source, "random": 0},
            "batch_size": self.batch_size,
            "reference_accuracy": self.reference_accuracy,
            "accuracy": self.accuracy,
            "accuracy_drop_pt": round(self.accuracy_drop_pt, 4),
            "top1_agreement": self.top1_agreement,
            "max_abs": self.max_abs,
            "gate": {**asdict(self.gate), "max_abs": self.max_abs_allowed},
            **({"max_pixel_levels": self.max_pixel_levels, "pixel_images": self.pixel_images,
                "max_pixel_levels_allowed": MAX_PIXEL_LEVELS} if self.max_pixel_levels is not None else {}),
            **({"int8_macs_share": self.int8_macs_share} if self.int8_macs_share is not None else {}),
            "failures": self.failures(),
        }


@dataclass
class GateData:
    """The held-out images, preprocessed once, with PyTorch fp32's logits on them."""

    inputs: np.ndarray  # (N, C, H, W) float32
    labels: np.ndarray  # (N,) int64
    reference: np.ndarray  # (N, num_classes) PyTorch fp32 logits
    source: str
    images: list[np.ndarray] = field(default_factory=list)  # the first IMAGE_GATE_IMAGES as decoded, uint8 HWC


def gate_data(model: Any, info: BundleInfo, limit: int = GATE_MAX_IMAGES) -> GateData:
    """The bundle's held-out real images through THE preprocessing, and PyTorch fp32's logits on them."""
    from vitdeploy.core.images import preprocess
    from vitdeploy.model.vit import logits_in_batches
    from vitdeploy.training.data import heldout_images

    if not info.dataset:
        raise DataError("the bundle records no dataset, so there are no held-out images to judge a reduced-precision "
                        "variant on; export fp32 only, or retrain with vitdeploy train")
    pairs = heldout_images(info.dataset, info.labels, limit, info.preprocess)  # decoded as predict decodes
    if not pairs:
        raise DataError("the bundle's held-out split is empty: nothing to judge a variant on")
    inputs = np.ascontiguousarray(np.stack([preprocess(img, info.preprocess) for img, _ in pairs]), np.float32)
    reference = logits_in_batches(model, inputs, GATE_BATCH_SIZE)
    source = f"held-out split of {info.dataset.get('source', 'the bundle dataset')}"
    decoded = [np.asarray(img) for img, _ in pairs[:IMAGE_GATE_IMAGES]]
    return GateData(inputs, np.array([y for _, y in pairs], np.int64), reference, source, decoded)


def synthetic_gate_data(model: Any, spec: PreprocessSpec, seed: int = 0) -> GateData:
    """For the raw-image variant of a bundle that records no held-out images (an imported checkpoint): seeded smooth
    random images (8x8 noise enlarged, so that one level of rounding cannot flip a near tie) at every CHECK_SIZES
    size, with PyTorch fp32's logits on THE preprocessing of each; their "labels" are PyTorch's top-1."""
    from vitdeploy.core.images import preprocess
    from vitdeploy.model.vit import logits_in_batches

    rng = np.random.default_rng(seed)
    images = [np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.BICUBIC)) for size in CHECK_SIZES]
    inputs = np.stack([preprocess(Image.fromarray(image), spec) for image in images])
    reference = logits_in_batches(model, inputs, GATE_BATCH_SIZE)
    return GateData(inputs, reference.argmax(1).astype(np.int64), reference,
                    f"{len(images)} seeded smooth random images (the bundle records no held-out images)", images)


def judge(
    variant: str, precision: str, model_path: Path | bytes, data: GateData, gate: AccuracyGate, device: str,
    max_abs_allowed: float | None, runtime: str, isa: str | None = None,
) -> GateResult:
    """Run the variant on `runtime` (as the file says it is to be run) on the gate images, in batches of
    GATE_BATCH_SIZE, and compare it with PyTorch fp32. `isa`: the CPU class recorded as judged on (default: this
    CPU's, core.cpu.isa_class)."""
    with open_runtime(runtime, model_path, device=device) as session:
        provider = session.provider
        logits = session.run_in_batches(data.inputs, GATE_BATCH_SIZE).astype(np.float32)
    diff = compare_logits(data.reference, logits)
    return GateResult(
        variant=variant,
        precision=precision,
        provider=provider,
        images=len(data.inputs),
        image_source=data.source,
        batch_size=GATE_BATCH_SIZE,
        reference_accuracy=float(np.mean(data.reference.argmax(1) == data.labels)),
        accuracy=float(np.mean(logits.argmax(1) == data.labels)),
        top1_agreement=diff["top1_agreement"],
        max_abs=float(np.abs(logits - data.reference).max()) if np.isfinite(logits).all() else math.inf,
        gate=gate,
        max_abs_allowed=max_abs_allowed,
        runtime=session.describe(),
        isa_class=this_machine().isa if isa is None else isa,
    )




def judge_image_input(variant: str, model: bytes, data: GateData, gate: AccuracyGate, spec: PreprocessSpec) -> GateResult:
    """The raw-image variant (`model`: its graph with the preprocessed tensor also as output PIXELS_OUTPUT, as
    image_input.with_pixels_output makes it), one image at a time on ONNX Runtime's CPU: its logits on the decoded
    held-out images against PyTorch fp32's, and its preprocessed pixels against images.preprocess's on those images
    and on each presented at another size, as grey, RGB or RGBA."""
    from vitdeploy.core.images import preprocess

    if not data.images:
        raise DataError("no decoded held-out images to judge the raw-image variant on")
    session = open_runtime("ort", model, device="cpu")
    layout = session.info.image_input["layout"]  # nhwc or nchw (export --image-layout); the images are HWC
    worst_levels, rows = 0.0, []
    checks = [(image, data.inputs[i]) for i, image in enumerate(data.images)]
    checks += [(raw, preprocess(rgb, spec)) for raw, rgb in
               (_presented(image, i) for i, image in enumerate(data.images))]
    for index, (raw, expected) in enumerate(checks):
        out = session.run_outputs(as_layout(raw[None], layout), [OUTPUT_NAME, PIXELS_OUTPUT])
        worst_levels = max(worst_levels, pixel_levels(out[PIXELS_OUTPUT][0], expected, spec))
        if index < len(data.images):
            rows.append(out[OUTPUT_NAME][0])
    logits = np.stack(rows).astype(np.float32)
    reference, labels = data.reference[: len(rows)], data.labels[: len(rows)]
    diff = compare_logits(reference, logits)
    return GateResult(
        variant=variant, precision="fp32", provider=session.provider, images=len(rows), image_source=data.source,
        batch_size=1, reference_accuracy=float(np.mean(reference.argmax(1) == labels)),
        accuracy=float(np.mean(logits.argmax(1) == labels)), top1_agreement=diff["top1_agreement"],
        max_abs=float(np.abs(logits - reference).max()) if np.isfinite(logits).all() else math.inf, gate=gate,
        runtime=session.describe(), max_pixel_levels=worst_levels, pixel_images=len(checks),
    )


def _presented(image: np.ndarray, index: int) -> tuple[np.ndarray, Image.Image]:
    """Held-out image `index` at CHECK_SIZES[index % ...], as grey, RGB or RGBA (alpha a gradient): the raw
    array a client sends, and the RGB image vitdeploy's decoder would hand preprocess (to_rgb composites on white)."""
    from vitdeploy.core.images import to_rgb

    width, height = CHECK_SIZES[index % len(CHECK_SIZES)]
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    mode = ("L", "RGB", "RGBA")[index % 3]
    if mode == "RGBA":
        resized.putalpha(Image.fromarray(np.linspace(0, 255, width * height).reshape(height, width).astype(np.uint8)))
    elif mode == "L":
        resized = resized.convert("L")
    raw = np.asarray(resized)
    return (raw[..., None] if raw.ndim == 2 else raw), to_rgb(resized)


def regate(report: ParityReport, here: str | None = None) -> GateResult | None:
    """verify's second look at a gated variant (INT8, fp16, bf16, ...) that was gated on another CPU class than
    `here` (default: this CPU's, core.cpu.isa_class), or on an unrecorded one: the accuracy gate again, on this
    machine, with the criteria the file records, on the bundle's held-out images. The result joins the report
    (report.regate: a failure fails verify); without held-out images a note says so. None: nothing to re-gate."""
    from vitdeploy.files.bundle import load_bundle
    from vitdeploy.files.onnx_file import parse_metadata, read_metadata

    path = Path(report.model_path)
    meta = parse_metadata(path, read_metadata(path))
    row = EXPORT.get(str(meta.export.get("variant")))
    here = this_machine().isa if here is None else here
    gated = meta.export.get("isa_class")
    if row is None or row.builder is None or row.option == "image" or gated == here or report.bundle is None:
        return None
    model, info = load_bundle(report.bundle)
    try:
        data = gate_data(model, info)
    except DataError as e:
        report.notes.add(f"gated on {gated or 'an unrecorded CPU class'}, not re-gated on this {here} CPU: {e}")
        return None
    recorded = meta.parity.get("gate") or {}
    gate = AccuracyGate(recorded.get("max_accuracy_drop", MAX_ACCURACY_DROP),
                        recorded.get("min_top1_agreement", MIN_TOP1_AGREEMENT))
    result = judge(row.name, row.precision, path, data, gate, row.gate_device, recorded.get("max_abs"),
                   row.runtime, here)
    report.regate = result.summary()
    report.notes.add(
        f"accuracy gate re-run on this {here} CPU (the file was gated on {gated or 'an unrecorded CPU class'}): "
        f"top-1 agreement {result.top1_agreement:.1%}, accuracy {-result.accuracy_drop_pt:+.2f} pt on "
        f"{result.images} held-out images: " + ("pass" if result.passed else "FAIL"))
    return result
