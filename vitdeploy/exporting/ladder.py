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

Each variant is a row of files/variants.py (precision, runtime, gate device, tolerances, builder); building the graphs is
graphs.py; judging them is gate.py; this module runs the ladder.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdeploy.core.atomic import reported_as
from vitdeploy.core.config import comma_list
from vitdeploy.core.notes import Notes
from vitdeploy.core.strict_json import record
from vitdeploy.errors import ConfigError, DataError
from vitdeploy.exporting.capabilities import auto_variants, check_exportable
from vitdeploy.exporting.gate import (
    AccuracyGate,
    GateData,
    GateResult,
    gate_data,
    judge,
    judge_image_input,
    synthetic_gate_data,
)
from vitdeploy.exporting.graphs import FusionReport, VariantSource, build_variant
from vitdeploy.exporting.image_input import EXPORT_LAYOUTS, with_pixels_output
from vitdeploy.files.onnx_file import (
    META_EXPORT,
    META_INPUT,
    META_INTERMEDIATES,
    META_PARITY,
    read_metadata,
    save_onnx,
    set_metadata,
)
from vitdeploy.files.variants import EXPORT, PRECISIONS, ExportVariant
from vitdeploy.requests import ExportRequest
from vitdeploy.runtimes import this_machine

if TYPE_CHECKING:
    import onnx

    from vitdeploy.files.bundle import BundleInfo

# The variants themselves (precision, runtime, gate device, tolerances, builder) are rows of vitdeploy.files.variants.
INT8_METHODS = ("static", "dynamic")
AUTO = "auto"  # --precision auto: every variant this machine computes natively and can gate
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
    token_merging: dict[str, Any] | None = None  # the tome variants' setting and search curve (tome_search)

    def to_dict(self) -> dict[str, Any]:
        return record(self, gate=self.gate.summary(), build_seconds=round(self.build_seconds, 3))




# ---------------------------------------------------------------------------------------------------- requests


def parse_precisions(values: Sequence[str]) -> tuple[str, ...]:
    """['fp32,int8', 'fp16'] -> ('fp32', 'fp16', 'int8'): each option may list several, in any order; "auto"
    stays as it is (resolve_variants says what it means here)."""
    wanted = set(comma_list(values, lower=True))
    unknown = sorted(wanted - set(PRECISIONS) - {AUTO})
    if unknown or not wanted:
        raise ConfigError(f"unknown precision(s) {unknown or values}; choose from: {', '.join(PRECISIONS)}, {AUTO}")
    return tuple(p for p in (*PRECISIONS, AUTO) if p in wanted)


def resolve_variants(precisions: Sequence[str], optimize: bool,
                     image_input: bool = False) -> tuple[list[str], list[str], dict[str, str]]:
    """The variants to build (requested_variants); with "auto", those of them auto chose (every variant this
    machine can build and gate: capabilities.auto_variants, less those named too) and the ones it cannot, each
    with why and what would."""
    chosen: list[str] = []
    skipped: dict[str, str] = {}
    if AUTO in precisions:
        named = [p for p in precisions if p != AUTO]
        chosen, skipped = auto_variants()
        chosen = [name for name in chosen if name not in named and not (optimize and EXPORT[name].option == "optimize")]
        precisions = [*named, *chosen]
    return requested_variants(precisions, optimize, image_input), chosen, skipped


def requested_variants(precisions: Sequence[str], optimize: bool, image_input: bool = False) -> list[str]:
    """Variants to build beside the plain fp32 file, in table order: fp32-opt with --optimize, the raw-image file with
    --image-input, the rest as asked."""
    asked = {"optimize": optimize, "image": image_input}
    return [v.name for v in EXPORT.values() if v.builder and (v.name in precisions or asked.get(v.option, False))]


# ---------------------------------------------------------------------------------------------------- export


def check_request(variants: Sequence[str], int8_method: str, tome_r: int | None = None,
                  image_layout: str = ExportRequest.image_layout) -> None:
    """Refuse, before any work, what cannot be built here: an unknown variant or method, an OpenVINO variant
    without OpenVINO (and NNCF for ov-int8), bf16 on a CPU that has no native bf16."""
    built = [v for v in EXPORT.values() if v.builder]
    unknown = [v for v in variants if v not in EXPORT or not EXPORT[v].builder]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; choose from: {', '.join(v.name for v in built)}")
    if int8_method not in INT8_METHODS:
        raise ConfigError(f"unknown INT8 method {int8_method!r}; choose one of: {', '.join(INT8_METHODS)}")
    if tome_r is not None and tome_r < 1:
        raise ConfigError(f"--tome-r {tome_r}: token merging needs at least 1 token merged per block (0 merges "
                          "nothing: that is model.onnx); leave it out to search")
    if image_layout not in EXPORT_LAYOUTS:
        raise ConfigError(f"unknown --image-layout {image_layout!r}; choose one of: {', '.join(EXPORT_LAYOUTS)}")
    check_exportable(variants)


def calibration_inputs(info: BundleInfo, limit: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Up to `limit` of the bundle's training images (never the held-out ones the gate judges), evenly spread
    over the split so that every class is represented, through THE preprocessing."""
    from vitdeploy.core.images import preprocess
    from vitdeploy.training.data import recorded_split_images

    try:
        pairs = recorded_split_images(info.dataset, info.labels, "train", limit, info.preprocess, spread=True)
    except DataError as e:
        raise DataError(f"no training images to calibrate INT8 on ({e}); use --int8-method dynamic") from None
    return np.ascontiguousarray(np.stack([preprocess(img, info.preprocess) for img, _ in pairs]), np.float32)


def gate_data_for(model: Any, info: BundleInfo, variants: Sequence[str]) -> GateData:
    """The held-out images the variants are judged on; the raw-image file alone, of a bundle that records none (an
    imported checkpoint), is judged on seeded smooth images instead (its pixels and PyTorch's logits)."""
    if not info.dataset and all(EXPORT[v].option == "image" for v in variants):
        return synthetic_gate_data(model, info.preprocess)
    return gate_data(model, info)


def export_variants(
    model: Any,
    info: BundleInfo,
    base: Path,
    variants: Sequence[str],
    gate: AccuracyGate = AccuracyGate(),
    data: GateData | None = None,
    int8_method: str = ExportRequest.int8_method,
    isa: str | None = None,
    export: Callable[[Any, Path, bool], Any] | None = None,
    tome_r: int | None = None,
    image_layout: str = ExportRequest.image_layout,
) -> list[VariantResult]:
    """Build each variant from the exported fp32 file `base`, judge it, and write the ones that pass beside it.

    A variant that failed is returned with written=False; the others were written. `isa`: the CPU class the INT8
    recipe is chosen for and the file records (default: this CPU's, core.cpu.isa_class); the gate runs here.
    `export(model, path, verify)` exports `model` as `base` was exported (the token merging variants re-export the
    model with merging on); `tome_r`: their tokens merged per block (None: searched); `image_layout`: the raw-image
    variant's input (nhwc | nchw).
    """
    import onnx

    check_request(variants, int8_method, tome_r, image_layout)
    if not variants:
        return []
    data = data or gate_data_for(model, info, variants)
    base_meta = read_metadata(base)
    results = []
    with reported_as(base.parent), tempfile.TemporaryDirectory(prefix=".vitdeploy-variants-",
                                                                dir=base.parent) as staging_dir:
        staging = Path(staging_dir)
        source = VariantSource(base, info.model, staging, lambda: calibration_inputs(info), int8_method,
                               isa or this_machine().isa, model=model,
                               export=export, tome_r=tome_r, image_layout=image_layout)
        for row in (EXPORT[name] for name in variants):
            started = time.perf_counter()
            built = build_variant(row, source)
            proto, fusions, quantization = built.proto, built.fusions, built.quantization
            out = row.path(base)
            staged = staging / out.name
            # the runtime judging it reads this
            describe_variant(proto, base_meta, row.name, fusions, quantization, source.isa,
                             built.token_merging)
            save_onnx(proto, staged)
            onnx.checker.check_model(os.fspath(staged), full_check=True)  # verify's load_onnx insists on it too
            build_seconds = time.perf_counter() - started
            if row.option == "image":  # raw images in: judged image by image, its pixels too
                result = judge_image_input(row.name, with_pixels_output(proto).SerializeToString(), data, gate,
                                           info.preprocess)
            else:
                result = judge(row.name, row.precision, staged, data, gate, row.gate_device, row.gate_max_abs,
                               row.runtime, source.isa)
            if quantization and "search" in quantization:
                result = replace(result, int8_macs_share=quantization["search"]["quantized_macs_share"])
            notes = Notes((built.token_merging or {}).get("notes", []))  # the merging search said these
            _caveats(notes, row, result, quantization)
            set_metadata(proto, {META_PARITY: result.summary()})
            size = staged.stat().st_size
            if result.passed:
                external = save_onnx(proto, staged)  # only metadata changed since the gate ran on this file
                if external:
                    os.replace(external, out.parent / external.name)
                os.replace(staged, out)
            elif out.exists():
                notes.add(f"an earlier {out.name} is still there, from a previous export: it is not this one")
            results.append(VariantResult(
                variant=row.name, precision=row.precision, path=out, written=result.passed, gate=result,
                fusions=fusions, quantization=quantization, size_bytes=size, build_seconds=build_seconds, notes=notes,
                token_merging=built.token_merging,
            ))
    return results


def describe_variant(
    proto: onnx.ModelProto, base_meta: dict[str, str], variant: str, fusions: FusionReport | None,
    quantization: dict[str, Any] | None, isa: str | None = None,
    token_merging: dict[str, Any] | None = None,
) -> None:
    """The fp32 file's self-description, plus what makes this variant different: precision, the runtime it is made
    for (and, for OpenVINO, the precision it computes in), fusions, quantization, and the CPU class it was built
    and gated for (`isa`, default this CPU's, core.cpu.isa_class: a file run on another class is re-gated or warned
    about). The gate's result is added once it has run."""
    own_input = {p.key: p.value for p in proto.metadata_props if p.key == META_INPUT}  # a raw-image graph's
    del proto.metadata_props[:]
    for key, value in {**base_meta, **own_input}.items():
        proto.metadata_props.add(key=key, value=value)
    row = EXPORT[variant]
    export = json.loads(base_meta.get(META_EXPORT, "{}"))
    export.update({
        "precision": row.precision,
        "variant": variant,
        "runtime": row.runtime,
        "optimization": {"transformer_fusions": fusions.to_dict() if fusions else None},
        "quantization": quantization,
        "isa_class": this_machine().isa if isa is None else isa,
    })
    if row.inference_precision is not None:
        export["inference_precision"] = row.inference_precision
    if token_merging is not None:  # verify rebuilds PyTorch with this merging to compare the file with
        export["token_merging"] = token_merging
    # The fp32 file's intermediates name tensors that fusion renamed or removed: verify cannot expose them here.
    set_metadata(proto, {META_EXPORT: export, META_PARITY: {}, META_INTERMEDIATES: {}})


def _caveats(notes: Notes, row: ExportVariant, result: GateResult, quantization: dict[str, Any] | None) -> None:
    if row.precision == "fp16" and result.runtime.get("device") == "cpu":
        notes.add("fp16 judged on ONNX Runtime's CPU provider (no usable CUDA here): its fp16 speed needs a GPU")
    if quantization and quantization["method"] == "dynamic":
        notes.add("dynamic quantization scales activations per batch: outputs depend slightly on the batch")
