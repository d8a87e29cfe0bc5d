"""The precision ladder: fused fp32, fp16 and INT8 variants of an exported model, each handed out only after it
has been shown to be as accurate as the PyTorch fp32 model on the bundle's held-out real images.

    model.onnx (fp32, parity-checked by export)
      -> exact rewrites -> ORT transformer fusions (model_type="vit")                    the fused fp32 graph
           -> model.fp32-opt.onnx   the fused graph                                        (CPU or GPU)
           -> model.fp16.onnx       fp16 weights and activations, fp32 input and output    (GPU)
           -> model.int8.onnx       INT8 dynamic quantization (--int8-method dynamic)      (CPU)
      -> model.int8.onnx            INT8 static QDQ, calibrated on training images (default) (CPU)
    each variant: staged beside its destination -> accuracy gate on the held-out images -> self-describing
    metadata (the fp32 file's, plus precision, fusions, measured accuracy) -> moved into place; a variant that
    fails the gate is not written.

The gate compares each variant with PyTorch fp32 on the same preprocessed images: top-1 agreement, accuracy and
its change, max |logit difference|. Defaults: at most 0.5 percentage points of accuracy lost and at least 99% of
images with the same top-1 class. On a few hundred images 0.5 pt is one or two images: the gate is as coarse as
the held-out split is small, and the report says how many images it judged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdeploy.config import ModelConfig
from vitdeploy.errors import CheckFailed, ConfigError, DataError
from vitdeploy.runtime import (
    CPU,
    INPUT_NAME,
    META_EXPORT,
    META_INTERMEDIATES,
    META_PARITY,
    make_session,
    run_batch,
)

if TYPE_CHECKING:
    import onnx

    from vitdeploy.checkpoint import BundleInfo

PRECISIONS = ("fp32", "fp16", "int8")
# Variant name -> file name part: model.onnx -> model.fp32-opt.onnx, model.fp16.onnx, model.int8.onnx.
FUSED_FP32 = "fp32-opt"
VARIANT_PRECISION = {FUSED_FP32: "fp32", "fp16": "fp16", "int8": "int8"}
DEFAULT_MAX_ACCURACY_DROP = 0.5  # percentage points
DEFAULT_MIN_TOP1_AGREEMENT = 0.99
# The fused fp32 graph must also match PyTorch's logits as closely as the plain export must (verify's fp32 atol).
FUSED_FP32_ATOL = 1e-4
GATE_BATCH_SIZE = 32  # INT8 dynamic quantization scales by the whole batch: judge it at a serving batch size
GATE_MAX_IMAGES = 2000
INT8_METHODS = ("static", "dynamic")
CALIBRATION_IMAGES = 128  # training images whose activation ranges set the static INT8 scales
# Ops that fp16 leaves in fp32 (casts around them), as the issue asks for the numerically sensitive ones. Once
# every block is fused only the first LayerNorm is left standalone, so this costs two casts. Measured on the digits
# bundle (ORT CPU): same top-1 on all 359 held-out images either way; max |diff| 2.4e-3 kept vs 3.1e-3 converted.
FP16_KEEP_FP32_OPS = ("LayerNormalization", "Softmax")


@dataclass(frozen=True)
class AccuracyGate:
    """When a reduced-precision variant may replace the fp32 model."""

    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP  # percentage points of held-out accuracy
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT  # share of images with PyTorch's top-1 class

    def __post_init__(self) -> None:
        if not self.max_accuracy_drop >= 0:
            raise ConfigError(f"--max-accuracy-drop must be >= 0 percentage points, got {self.max_accuracy_drop}")
        if not 0 <= self.min_top1_agreement <= 1:
            raise ConfigError(f"the minimum top-1 agreement must be within 0..1, got {self.min_top1_agreement}")


@dataclass
class FusionReport:
    """Which of ORT's transformer fusions happened, against how many this model could have."""

    counts: dict[str, int]  # fused op type -> nodes, e.g. {"Attention": 11, "SkipLayerNormalization": 24}
    expected: dict[str, int]  # what a fully fused ViT of this depth has
    rewrites: dict[str, int]  # exact rewrites applied first so that ORT's matchers recognise the graph

    def shortfalls(self) -> dict[str, str]:
        """Fusions that happened fewer times than the model has places for them, e.g. {"Attention": "11 of 12"}."""
        found = {
            "Attention": self.counts.get("Attention", 0) + self.counts.get("MultiHeadAttention", 0),
            "SkipLayerNormalization": self.counts.get("SkipLayerNormalization", 0),
            "Gelu": sum(self.counts.get(op, 0) for op in ("BiasGelu", "Gelu", "FastGelu")),
        }
        return {op: f"{found[op]} of {n}" for op, n in self.expected.items() if found[op] < n}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shortfalls": self.shortfalls()}


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
        return why

    @property
    def passed(self) -> bool:
        return not self.failures()

    def summary(self) -> dict[str, Any]:
        """What goes into the variant's metadata (vitdeploy.parity) and the --json output."""
        return {
            "passed": self.passed,
            "precision": self.precision,
            "variant": self.variant,
            "providers": [self.provider],
            "samples": {"real": self.images, "real_source": self.image_source, "random": 0},
            "batch_size": self.batch_size,
            "reference_accuracy": self.reference_accuracy,
            "accuracy": self.accuracy,
            "accuracy_drop_pt": round(self.accuracy_drop_pt, 4),
            "top1_agreement": self.top1_agreement,
            "max_abs": self.max_abs,
            "gate": {**asdict(self.gate), "max_abs": self.max_abs_allowed},
            "failures": self.failures(),
        }


@dataclass
class VariantResult:
    variant: str
    precision: str
    path: Path
    written: bool  # False: the gate failed and nothing was written to `path`
    gate: GateResult
    fusions: FusionReport | None  # None: built without ORT's transformer fusions (static INT8)
    quantization: dict[str, Any] | None
    size_bytes: int  # of the staged file, whether or not it was written
    build_seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "precision": self.precision,
            "path": str(self.path),
            "written": self.written,
            "gate": self.gate.summary(),
            "fusions": self.fusions.to_dict() if self.fusions else None,
            "quantization": self.quantization,
            "size_bytes": self.size_bytes,
            "build_seconds": round(self.build_seconds, 3),
            "notes": self.notes,
        }


class AccuracyGateFailed(CheckFailed):
    """At least one variant failed the accuracy gate (exit code 3); the ones that passed were written."""

    def __init__(self, results: list[VariantResult]):
        failed = [r for r in results if not r.written]
        detail = "; ".join(f"{r.variant}: {', '.join(r.gate.failures())}" for r in failed)
        super().__init__(f"accuracy gate failed ({detail}): {', '.join(str(r.path) for r in failed)} not written")
        self.results = results
        self.export: Any = None  # export.ExportResult of the fp32 file, which was written, when export raised this


# ---------------------------------------------------------------------------------------------------- requests


def parse_precisions(values: Sequence[str]) -> tuple[str, ...]:
    """['fp32,int8', 'fp16'] -> ('fp32', 'fp16', 'int8'): each option may list several, in any order."""
    wanted = {p.strip().lower() for value in values for p in value.split(",") if p.strip()}
    unknown = sorted(wanted - set(PRECISIONS))
    if unknown or not wanted:
        raise ConfigError(f"unknown precision(s) {unknown or values}; choose from: {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p in wanted)


def requested_variants(precisions: Sequence[str], optimize: bool) -> list[str]:
    """Variants to build beside the plain fp32 file: fp32-opt with --optimize, then fp16 and int8 as asked."""
    return ([FUSED_FP32] if optimize else []) + [p for p in precisions if p != "fp32"]


def variant_path(base: Path, variant: str) -> Path:
    """model.onnx -> model.int8.onnx (beside it)."""
    return base.with_name(f"{base.stem}.{variant}{base.suffix}")


# ---------------------------------------------------------------------------------------------------- graphs


def fuse_transformer(model_path: Path, config: ModelConfig) -> tuple[onnx.ModelProto, FusionReport]:
    """Apply ONNX Runtime's ViT fusions offline (Attention, SkipLayerNormalization, BiasGelu, ...).

    Provider-independent: only ORT's basic graph optimizations run first (use_gpu=False), so the result loads on
    CPU and CUDA alike.
    """
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    proto = onnx.load(os.fspath(model_path))
    rewrites = prepare_for_fusion(proto)
    with _quiet_root_logger():
        optimized = optimize_model(proto, model_type="vit", num_heads=config.num_heads, hidden_size=config.dim)
    counts = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    expected = {"Attention": config.depth, "SkipLayerNormalization": 2 * config.depth, "Gelu": config.depth}
    return optimized.model, FusionReport(counts, expected, rewrites)


def prepare_for_fusion(proto: onnx.ModelProto) -> dict[str, int]:
    """Rewrite exact-arithmetic spellings that ORT's ViT matchers do not recognise; return counts per rewrite.

    Each is a bit-for-bit identical computation, and the gate compares the fused graph with PyTorch anyway.
    (The attention scale needs no rewrite: model.py divides by sqrt(head_dim), the spelling ORT matches.)
    """
    from onnxruntime.transformers.onnx_model import OnnxModel

    graph = OnnxModel(proto)
    rewrites = {"residual_branch_first": _residual_branch_first(graph)}
    graph.prune_graph()
    return rewrites


def _residual_branch_first(graph: Any) -> int:
    """Residual Add(x, branch) -> Add(branch, x) where x comes from a plain Add and the branch from a Linear.

    NOTE: ORT's SkipLayerNormalization bias fusion and its attention matcher take the first Add parent they find;
    in block 0, x is the embeddings (cls + position Add), so they pick that and block 0's attention stays unfused
    (11 of 12 blocks in ViT-Ti). Swapped in every block (two residuals each); the other blocks fuse either way.
    """
    producers = graph.output_name_to_node()

    def linear_output(name: str) -> bool:  # Add(MatMul(...), bias)
        node = producers.get(name)
        return node is not None and node.op_type == "Add" and any(
            producers.get(i) is not None and producers[i].op_type == "MatMul" for i in node.input)

    swapped = 0
    for add in graph.get_nodes_by_op_type("Add"):
        if len(add.input) != 2:
            continue
        x, branch = add.input
        if x in producers and producers[x].op_type == "Add" and not linear_output(x) and linear_output(branch):
            add.input[0], add.input[1] = branch, x
            swapped += 1
    return swapped


def to_fp16(fused: onnx.ModelProto, keep_fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS) -> onnx.ModelProto:
    """fp16 weights and activations; the graph input and output stay fp32, so callers feed the same batch."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    graph = OnnxModel(_copy(fused))
    with _quiet_root_logger():
        graph.convert_float_to_float16(keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *keep_fp32_ops])
    graph.topological_sort()  # the converter appends the input/output casts at the end; onnx.checker wants order
    return graph.model


def linear_matmuls(proto: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(MatMuls with a weight initializer: the Linear layers, MatMuls of two activations: Q K^T and weights V)."""
    weights = {t.name for t in proto.graph.initializer}
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul"]
    with_weight = [n.name for n in matmuls if any(i in weights for i in n.input)]
    return with_weight, [n.name for n in matmuls if n.name not in with_weight]


def to_int8_static(
    model_path: Path, calibration: np.ndarray, workdir: Path
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """INT8 static quantization (QDQ) of the Linear layers: per-channel int8 weights, uint8 activations with
    ranges calibrated on training images, from the unfused fp32 graph (ORT's CPU provider fuses the QDQ pairs).

    Kept in fp32, measured on the briefly trained ViT-Ti (benchmarks/precision.md): the patch embedding (it reads
    raw pixels) and the head, and the two activation-by-activation MatMuls of attention (Q K^T, weights V).
    Quantizing them too took top-1 agreement from 100% down to 94% for no measurable speed. Static scales also
    make each image's result independent of the rest of its batch.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(calibration), GATE_BATCH_SIZE))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.starts, None)
            return None if start is None else {INPUT_NAME: calibration[start : start + GATE_BATCH_SIZE]}

    linear, activation_products = linear_matmuls(onnx.load(os.fspath(model_path), load_external_data=False))
    out = workdir / "int8-static.onnx"
    with _quiet_root_logger():
        quantize_static(
            os.fspath(model_path), os.fspath(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
            nodes_to_exclude=activation_products, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    settings = {"method": "static", "format": "QDQ", "weights": "int8 per channel", "activations": "uint8",
                "calibration": "MinMax", "calibration_images": len(calibration), "quantized_matmuls": len(linear),
                "kept_fp32": "patch embedding, head, attention's activation x activation MatMuls"}
    return onnx.load(os.fspath(out)), settings


def to_int8_dynamic(fused: onnx.ModelProto, workdir: Path) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """INT8 dynamic quantization of the fused graph's Linear layers and Attention: int8 weights, activations
    quantized per batch at run time. The patch embedding and the head stay fp32, as in to_int8_static.

    A transformers-optimised graph needs the default tensor type spelled out (DESIGN.md 5.5).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, out = workdir / "fused.onnx", workdir / "int8-dynamic.onnx"
    onnx.save_model(fused, os.fspath(source))
    with _quiet_root_logger():
        quantize_dynamic(os.fspath(source), os.fspath(out), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Attention"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return onnx.load(os.fspath(out)), {"method": "dynamic", "weights": "int8 per tensor", "activations": "per batch",
                                       "kept_fp32": "patch embedding, head"}


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ORT's optimizer and quantizer log advice to the root logger on every call; keep it off the terminal."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(before)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


# ---------------------------------------------------------------------------------------------------- the gate


@dataclass
class GateData:
    """The held-out images, preprocessed once, with PyTorch fp32's logits on them."""

    inputs: np.ndarray  # (N, C, H, W) float32
    labels: np.ndarray  # (N,) int64
    reference: np.ndarray  # (N, num_classes) PyTorch fp32 logits
    source: str


def gate_data(model: Any, info: BundleInfo, limit: int = GATE_MAX_IMAGES) -> GateData:
    """The bundle's held-out real images through THE preprocessing, and PyTorch fp32's logits on them."""
    import torch

    from vitdeploy.data import heldout_images
    from vitdeploy.images import preprocess

    if not info.dataset:
        raise DataError("the bundle records no dataset, so there are no held-out images to judge a reduced-precision "
                        "variant on; export fp32 only, or retrain with vitdeploy train")
    pairs = heldout_images(info.dataset, info.labels, limit, info.preprocess)  # decoded as predict decodes
    if not pairs:
        raise DataError("the bundle's held-out split is empty: nothing to judge a variant on")
    inputs = np.ascontiguousarray(np.stack([preprocess(img, info.preprocess) for img, _ in pairs]), np.float32)
    model = getattr(model, "module", model).eval()
    with torch.inference_mode():
        reference = np.concatenate([
            model(torch.from_numpy(inputs[i : i + GATE_BATCH_SIZE])).float().numpy()
            for i in range(0, len(inputs), GATE_BATCH_SIZE)
        ])
    source = f"held-out split of {info.dataset.get('source', 'the bundle dataset')}"
    return GateData(inputs, np.array([y for _, y in pairs], np.int64), reference, source)


def judge(
    variant: str, model_path: Path | bytes, data: GateData, gate: AccuracyGate, device: str = "cpu",
    max_abs_allowed: float | None = None,
) -> GateResult:
    """Run the variant on the gate images (batches of GATE_BATCH_SIZE) and compare it with PyTorch fp32."""
    from vitdeploy.verify import compare_logits

    session, provider = make_session(model_path, device=device)
    logits = np.concatenate([
        run_batch(session, data.inputs[i : i + GATE_BATCH_SIZE]) for i in range(0, len(data.inputs), GATE_BATCH_SIZE)
    ]).astype(np.float32)
    diff = compare_logits(data.reference, logits)
    return GateResult(
        variant=variant,
        precision=VARIANT_PRECISION.get(variant, variant),
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
    )


def gate_device(variant: str) -> str:
    """Where a variant is judged: where it will be deployed, when that really works here.

    fp16 is for GPUs: judged on CUDA when a session really gets it, else on ORT's CPU provider. NOTE: ORT's CPU
    provider has no fp16 kernels for MatMul, Attention, BiasGelu, Conv or Gemm (ORT 1.31): it inserts casts and
    runs them in fp32, so a CPU judgement covers the fp16 rounding of the weights and activations between ops,
    not fp16 arithmetic inside the matmuls. INT8 is for CPUs.
    """
    return "auto" if variant == "fp16" else "cpu"


# ---------------------------------------------------------------------------------------------------- export


def check_request(variants: Sequence[str], int8_method: str) -> None:
    unknown = [v for v in variants if v not in VARIANT_PRECISION]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; choose from: {', '.join(VARIANT_PRECISION)}")
    if int8_method not in INT8_METHODS:
        raise ConfigError(f"unknown INT8 method {int8_method!r}; choose one of: {', '.join(INT8_METHODS)}")


def calibration_inputs(info: BundleInfo, limit: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Up to `limit` of the bundle's training images (never the held-out ones the gate judges), evenly spread
    over the split so that every class is represented, through THE preprocessing."""
    from vitdeploy.data import recorded_split_images
    from vitdeploy.images import preprocess

    try:
        pairs = recorded_split_images(info.dataset, info.labels, "train", limit, info.preprocess, spread=True)
    except DataError as e:
        raise DataError(f"no training images to calibrate INT8 on ({e}); use --int8-method dynamic") from None
    return np.ascontiguousarray(np.stack([preprocess(img, info.preprocess) for img, _ in pairs]), np.float32)


def export_variants(
    model: Any,
    info: BundleInfo,
    base: Path,
    variants: Sequence[str],
    gate: AccuracyGate = AccuracyGate(),
    data: GateData | None = None,
    int8_method: str = "static",
) -> list[VariantResult]:
    """Build each variant from the exported fp32 file `base`, judge it, and write the ones that pass beside it.

    Raises AccuracyGateFailed (exit code 3) after the loop when any variant failed; the others were written.
    """
    import onnx

    from vitdeploy.export import save_onnx, set_metadata

    check_request(variants, int8_method)
    if not variants:
        return []
    data = data or gate_data(model, info)
    base_meta = _metadata(base)
    results = []
    with tempfile.TemporaryDirectory(prefix=".vitdeploy-optimize-", dir=base.parent) as staging_dir:
        staging = Path(staging_dir)
        fused: tuple[onnx.ModelProto, FusionReport] | None = None
        for variant in variants:
            started = time.perf_counter()
            quantization = None
            if variant == "int8" and int8_method == "static":
                proto, quantization = to_int8_static(base, calibration_inputs(info), staging)
                fusions = None
            else:
                fused = fused or fuse_transformer(base, info.model)
                fusions = fused[1]
                if variant == FUSED_FP32:
                    proto = _copy(fused[0])
                elif variant == "fp16":
                    proto = to_fp16(fused[0])
                else:
                    proto, quantization = to_int8_dynamic(fused[0], staging)
            out = variant_path(base, variant)
            staged = staging / out.name
            save_onnx(proto, staged)
            onnx.checker.check_model(os.fspath(staged), full_check=True)  # verify's load_onnx insists on it too
            build_seconds = time.perf_counter() - started
            result = judge(variant, staged, data, gate, gate_device(variant),
                           FUSED_FP32_ATOL if variant == FUSED_FP32 else None)
            notes = _notes(variant, result, quantization)
            _describe(proto, base_meta, variant, fusions, quantization, result, set_metadata)
            size = staged.stat().st_size
            if result.passed:
                external = save_onnx(proto, staged)  # only metadata changed since the gate ran on this file
                if external:
                    os.replace(external, out.parent / external.name)
                os.replace(staged, out)
            elif out.exists():
                notes.append(f"an earlier {out.name} is still there, from a previous export: it is not this one")
            results.append(VariantResult(
                variant=variant, precision=VARIANT_PRECISION[variant], path=out, written=result.passed, gate=result,
                fusions=fusions, quantization=quantization, size_bytes=size, build_seconds=build_seconds, notes=notes,
            ))
    if any(not r.written for r in results):
        raise AccuracyGateFailed(results)
    return results


def _metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(os.fspath(path), load_external_data=False).metadata_props}


def _describe(
    proto: onnx.ModelProto, base_meta: dict[str, str], variant: str, fusions: FusionReport | None,
    quantization: dict[str, Any] | None, result: GateResult, set_metadata: Any,
) -> None:
    """The fp32 file's self-description, plus what makes this variant different and how it measured."""
    import json

    del proto.metadata_props[:]
    for key, value in base_meta.items():
        proto.metadata_props.add(key=key, value=value)
    export = json.loads(base_meta.get(META_EXPORT, "{}"))
    export.update({
        "precision": VARIANT_PRECISION[variant],
        "variant": variant,
        "optimization": {"transformer_fusions": fusions.to_dict() if fusions else None},
        "quantization": quantization,
    })
    # The fp32 file's intermediates name tensors that fusion renamed or removed: verify cannot expose them here.
    set_metadata(proto, {META_EXPORT: export, META_PARITY: result.summary(), META_INTERMEDIATES: {}})


def _notes(variant: str, result: GateResult, quantization: dict[str, Any] | None) -> list[str]:
    notes = []
    if variant == "fp16" and result.provider == CPU:
        notes.append("fp16 judged on ONNX Runtime's CPU provider (no usable CUDA here): its fp16 speed needs a GPU")
    if quantization and quantization["method"] == "dynamic":
        notes.append("dynamic quantization scales activations per batch: outputs depend slightly on the batch")
    return notes


def variants_table(results: Sequence[VariantResult]) -> Any:
    """The gate for people: one row per variant; fusion counts, and any that fell short, in the last column."""
    from rich.table import Table

    table = Table("variant", "on", "images", "accuracy", "change", "top-1 agree", "max |diff|", "fusions", "",
                  title="precision variants vs PyTorch fp32", show_edge=False)
    for r in results:
        g = r.gate
        short = r.fusions.shortfalls() if r.fusions else {}
        fusions = "-" if r.fusions is None else "all" if not short else ", ".join(f"{op} {n}" for op, n in short.items())
        table.add_row(
            r.variant, g.provider.removesuffix("ExecutionProvider"), str(g.images), f"{g.accuracy:.2%}",
            f"{100 * (g.accuracy - g.reference_accuracy):+.2f} pt", f"{g.top1_agreement:.1%}", f"{g.max_abs:.1e}",
            fusions if not short else f"[yellow]{fusions}[/]",
            f"[green]{r.path.name}[/]" if r.written else "[red]FAIL: not written[/]",
        )
    return table
