"""The precision ladder: fused fp32, fp16 and INT8 variants of an exported model for ONNX Runtime, bf16 and INT8
variants for OpenVINO, each handed out only after it has been shown to be as accurate as the PyTorch fp32 model on
the bundle's held-out real images, on the runtime it is made for.

    model.onnx (fp32, parity-checked by export)
      -> exact rewrites -> ORT transformer fusions (model_type="vit")                    the fused fp32 graph
           -> model.fp32-opt.onnx   the fused graph                                        (ORT: CPU or GPU)
           -> model.fp16.onnx       fp16 weights and activations, fp32 input and output    (ORT: GPU)
           -> model.int8.onnx       INT8 dynamic quantization (--int8-method dynamic)      (ORT: CPU)
      -> model.int8.onnx            INT8 static QDQ, calibrated on training images (default) (ORT: CPU)
      -> model.ov-bf16.onnx         the same graph, run by OpenVINO in bf16 (AVX512_BF16 / AMX CPUs)
      -> model.ov-int8.onnx         NNCF post-training INT8 (QDQ, transformer preset), calibrated on training
                                    images; OpenVINO runs it with f32 pinned for the ops left unquantized
    each variant: staged beside its destination with its self-describing metadata (the fp32 file's, plus precision,
    runtime, fusions) -> accuracy gate on the held-out images, on its runtime -> the measured accuracy recorded ->
    moved into place; a variant that fails the gate is not written.

Building the graphs is graph_variants.py; judging them is accuracy_gate.py; this module runs the ladder.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdeploy.atomic import reported_as
from vitdeploy.accuracy_gate import AccuracyGate, GateData, GateResult, gate_data, judge
from vitdeploy.errors import CheckFailed, ConfigError, DataError
from vitdeploy.graph_variants import (
    FusionReport,
    fuse_transformer,
    to_fp16,
    to_int8_dynamic,
    to_int8_static,
    to_ov_int8,
)
from vitdeploy.onnx_file import (
    META_EXPORT,
    META_INTERMEDIATES,
    META_PARITY,
    copy_proto,
    read_metadata,
    save_onnx,
    set_metadata,
    variant_path,
)
from vitdeploy.runtimes.ort import CPU

if TYPE_CHECKING:
    import onnx

    from vitdeploy.bundle import BundleInfo

PRECISIONS = ("fp32", "fp16", "int8", "ov-bf16", "ov-int8")
# Variant name -> file name part: model.onnx -> model.fp32-opt.onnx, model.fp16.onnx, model.int8.onnx, ...
FUSED_FP32 = "fp32-opt"
VARIANT_PRECISION = {FUSED_FP32: "fp32", "fp16": "fp16", "int8": "int8", "ov-bf16": "bf16", "ov-int8": "int8"}
# The runtime each variant is made for, judged on, and run on by default (predict, bench); others: "ort".
VARIANT_RUNTIME = {"ov-bf16": "openvino", "ov-int8": "openvino"}
# OpenVINO variants: the precision OpenVINO computes in, as a setting of the runtime (recorded in the file). ov-int8
# pins f32 for the ops NNCF leaves unquantized, so that nothing runs in bf16 unless it is named.
INFERENCE_PRECISION = {"ov-bf16": "bf16", "ov-int8": "fp32"}
# The fused fp32 graph must also match PyTorch's logits as closely as the plain export must (verify's fp32 atol).
FUSED_FP32_ATOL = 1e-4
INT8_METHODS = ("static", "dynamic")
CALIBRATION_IMAGES = 128  # training images whose activation ranges set the static INT8 scales

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
    """Refuse, before any work, what cannot be built here: an unknown variant or method, an OpenVINO variant
    without OpenVINO (and NNCF for ov-int8), bf16 on a CPU that has no native bf16."""
    unknown = [v for v in variants if v not in VARIANT_PRECISION]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; choose from: {', '.join(VARIANT_PRECISION)}")
    if int8_method not in INT8_METHODS:
        raise ConfigError(f"unknown INT8 method {int8_method!r}; choose one of: {', '.join(INT8_METHODS)}")
    openvino_variants = [v for v in variants if VARIANT_RUNTIME.get(v) == "openvino"]
    if openvino_variants:
        from vitdeploy.extras import require

        require("openvino", f"export --precision {','.join(openvino_variants)}")
    if "ov-bf16" in variants:
        from vitdeploy.runtimes.openvino import check_precision

        check_precision("bf16")


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

    check_request(variants, int8_method)
    if not variants:
        return []
    data = data or gate_data(model, info)
    base_meta = read_metadata(base)
    results = []
    with reported_as(base.parent), tempfile.TemporaryDirectory(prefix=".vitdeploy-variants-",
                                                                dir=base.parent) as staging_dir:
        staging = Path(staging_dir)
        fused: tuple[onnx.ModelProto, FusionReport] | None = None
        for variant in variants:
            started = time.perf_counter()
            quantization, fusions = None, None
            if variant == "int8" and int8_method == "static":
                proto, quantization = to_int8_static(base, calibration_inputs(info), staging)
            elif variant == "ov-bf16":
                proto = onnx.load(os.fspath(base))  # the same graph: bf16 is how OpenVINO runs it
            elif variant == "ov-int8":
                proto, quantization = to_ov_int8(base, calibration_inputs(info), staging)
            else:
                fused = fused or fuse_transformer(base, info.model)
                fusions = fused[1]
                if variant == FUSED_FP32:
                    proto = copy_proto(fused[0])
                elif variant == "fp16":
                    proto = to_fp16(fused[0])
                else:
                    proto, quantization = to_int8_dynamic(fused[0], staging)
            out = variant_path(base, variant)
            staged = staging / out.name
            describe_variant(proto, base_meta, variant, fusions, quantization)  # the runtime judging it reads this
            save_onnx(proto, staged)
            onnx.checker.check_model(os.fspath(staged), full_check=True)  # verify's load_onnx insists on it too
            build_seconds = time.perf_counter() - started
            result = judge(variant, VARIANT_PRECISION[variant], staged, data, gate, gate_device(variant),
                           FUSED_FP32_ATOL if variant == FUSED_FP32 else None, VARIANT_RUNTIME.get(variant, "ort"))
            notes = _notes(variant, result, quantization)
            set_metadata(proto, {META_PARITY: result.summary()})
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


def describe_variant(
    proto: onnx.ModelProto, base_meta: dict[str, str], variant: str, fusions: FusionReport | None,
    quantization: dict[str, Any] | None,
) -> None:
    """The fp32 file's self-description, plus what makes this variant different: precision, the runtime it is made
    for (and, for OpenVINO, the precision it computes in), fusions, quantization. The gate's result is added once
    it has run."""
    del proto.metadata_props[:]
    for key, value in base_meta.items():
        proto.metadata_props.add(key=key, value=value)
    export = json.loads(base_meta.get(META_EXPORT, "{}"))
    export.update({
        "precision": VARIANT_PRECISION[variant],
        "variant": variant,
        "runtime": VARIANT_RUNTIME.get(variant, "ort"),
        "optimization": {"transformer_fusions": fusions.to_dict() if fusions else None},
        "quantization": quantization,
    })
    if variant in INFERENCE_PRECISION:
        export["inference_precision"] = INFERENCE_PRECISION[variant]
    # The fp32 file's intermediates name tensors that fusion renamed or removed: verify cannot expose them here.
    set_metadata(proto, {META_EXPORT: export, META_PARITY: {}, META_INTERMEDIATES: {}})


def _notes(variant: str, result: GateResult, quantization: dict[str, Any] | None) -> list[str]:
    notes = []
    if variant == "fp16" and result.provider == CPU:
        notes.append("fp16 judged on ONNX Runtime's CPU provider (no usable CUDA here): its fp16 speed needs a GPU")
    if quantization and quantization["method"] == "dynamic":
        notes.append("dynamic quantization scales activations per batch: outputs depend slightly on the batch")
    return notes
