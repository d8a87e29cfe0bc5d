"""Which token merging setting the tome variants use: the fastest one that keeps the model's answers, searched the
way quant_search searches what INT8 leaves in float.

    candidates: r tokens merged per block (TOME_R_CANDIDATES), from the first block or from the middle one
      (merging later keeps every token while the features are still local), plus r = 0 as the curve's start
    in order of multiply-accumulates, fewest (fastest) first:
      1. the PyTorch model with that merging on, exported with the bundle's exporter and opset
      2. (tome-int8) quantized by the int8 variant's own builder, calibrated like it
      3. run on the variant's runtime on the search images: top-1 agreement with the unmerged fp32 model, and the
         time of one batch (indicative only: export runs on a shared machine; bench is the measurement)
    chosen: the fewest multiply-accumulates whose agreement reaches the gate's minimum (SEARCH_MIN_AGREEMENT);
    it is exported once more with export's parity check against PyTorch with the same merging (every runtime,
    batch 1 and 7), and the accuracy gate then judges the file on the held-out images against the unmerged model.

The search images are the calibration (training) images, never the held-out ones the gate judges, so the gate stays
an independent check. Every setting tried is kept as the curve (r, blocks -> tokens, MACs, agreement, time), which
goes into the file's metadata (export's "token_merging") and from there into bench's report. With a fixed r
(`export --tome-r R`) the curve has that one point.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitdeploy.core.flops import count_macs
from vitdeploy.core.notes import Notes
from vitdeploy.errors import ConfigError
from vitdeploy.runtimes import open_runtime


# The builders (exporting.graphs) call this module with their VariantSource and, for tome-int8, the int8 builder;
# it returns what they wrap, so that it never imports them back. Quantize: VariantSource -> BuiltGraph.
Quantize = Callable[[Any], Any]
logger = logging.getLogger(__name__)

TOME_R_CANDIDATES = (4, 8, 13, 16)  # the paper's ViT-S/DeiT settings and its r=16 extreme for ViT-Ti/S
# Agreement with the unmerged model on the search images that a setting needs: the gate's own default minimum. (A
# stricter one, as quant_search's 100%, would reject nearly every merge: merging changes every logit a little.)
SEARCH_MIN_AGREEMENT = 0.99
TIMING_BATCH = 32
TIMING_RUNS = 3
RUNTIME = "ort"  # what the search runs the candidates on: the runtime the tome variants are made for


@dataclass(frozen=True)
class Setting:
    """One token merging setting: r tokens per block from `first_block` on."""

    r: int
    first_block: int

    @property
    def name(self) -> str:
        return f"r{self.r}" + (f"@{self.first_block}" if self.first_block else "")


@dataclass
class Point:
    """One setting tried: what it costs and how well it keeps the unmerged model's answers on the search images."""

    r: int
    first_block: int
    per_block: list[int]
    tokens_out: int  # tokens leaving the last block, the class token included
    gmacs: float
    macs_share: float  # of the unmerged model's
    agreement: float | None = None  # top-1 agreement with the unmerged fp32 model (None: not run)
    ms_per_image: float | None = None  # at TIMING_BATCH, best of TIMING_RUNS, on the variant's runtime
    passed: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"r": self.r, "first_block": self.first_block, "per_block": self.per_block,
                "tokens_out": self.tokens_out, "gmacs": round(self.gmacs, 4), "macs_share": round(self.macs_share, 4),
                "agreement": None if self.agreement is None else round(self.agreement, 4),
                "ms_per_image": None if self.ms_per_image is None else round(self.ms_per_image, 3),
                "passed": self.passed}


@dataclass
class TomeSearch:
    """The chosen setting and the evidence for it."""

    chosen: Point
    curve: list[Point]  # every setting tried, in the order tried
    searched: bool  # False: r was given (export --tome-r)
    runtime: str
    images: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "r": self.chosen.r, "first_block": self.chosen.first_block, "per_block": self.chosen.per_block,
            "proportional_attention": True, "tokens_out": self.chosen.tokens_out,
            "macs_share": round(self.chosen.macs_share, 4), "searched": self.searched,
            "criterion": f"top-1 agreement with the unmerged fp32 model >= {SEARCH_MIN_AGREEMENT:.0%} on the "
                         "calibration images" if self.searched else "r given (--tome-r)",
            "runtime": self.runtime, "search_images": self.images, "seconds": round(self.seconds, 1),
            "curve": [p.to_dict() for p in self.curve], "notes": self.notes,
        }


def candidates(depth: int, r: int | None) -> list[Setting]:
    """The settings to try: the given r from the first block, or every candidate r from the first block and from
    the middle one, with r = 0 first (the unmerged model, the curve's reference)."""
    if r is not None:
        if r < 0:
            raise ConfigError(f"--tome-r must be >= 0 (tokens merged per block), got {r}")
        return [Setting(r, 0)]
    starts = sorted({0, depth // 2})
    return [Setting(0, 0)] + [Setting(c, start) for c in TOME_R_CANDIDATES for start in starts]


def point(config: Any, setting: Setting) -> Point:
    from vitdeploy.model import tome

    merge = tome.schedule(config, setting.r, setting.first_block)
    full = count_macs(config).total
    macs = count_macs(config, merge.per_block).total
    return Point(setting.r, setting.first_block, list(merge.per_block), merge.tokens(config)[-1], macs / 1e9,
                 macs / full)


def build(source: Any, quantize: Quantize | None = None) -> tuple[Any, dict[str, Any]]:
    """The tome graph (an onnx.ModelProto; quantize None) or tome-int8's (what `quantize`, the int8 variant's
    builder, made of the merged graph), and the token merging summary for the file's metadata: search (or take)
    the setting, export it parity-checked, record the curve.

    tome-int8 quantizes only the settings that kept the answers in fp32 (each quantization costs more than an
    export), fastest first, and stops at the first that still keeps them."""
    if source.model is None or source.export is None:
        raise ConfigError("token merging variants are built from the PyTorch model: make them with vitdeploy export")
    started = time.perf_counter()
    images = source.calibration_inputs()
    model = getattr(source.model, "module", source.model).eval()
    searched = source.tome_r is None
    fp32_curve = _fp32_curve(source, model, images)
    notes = Notes()
    if quantize is None:
        curve = fp32_curve
        chosen = _fastest_passing(curve)
    else:
        kept = sorted((p for p in fp32_curve if p.passed and p.r > 0), key=lambda p: p.gmacs)
        order = kept or [_mildest(fp32_curve)]
        curve = []
        chosen = None
        for candidate in order:
            p = dataclasses.replace(candidate, agreement=None, ms_per_image=None, passed=None)
            _evaluate(source, model, p, images, quantize)
            curve.append(p)
            if p.passed:
                chosen = p
                break
    if chosen is None:
        chosen = _mildest(curve)
        if searched:
            notes.add(f"no setting kept {SEARCH_MIN_AGREEMENT:.0%} agreement on the search images: the mildest "
                         f"({Setting(chosen.r, chosen.first_block).name}) goes to the gate")
    # The chosen setting once more, with export's parity check against PyTorch with the same merging.
    final = _build_setting(source, model, chosen, quantize, verify=True)
    found = TomeSearch(chosen, sorted(curve, key=lambda p: -p.gmacs), searched, RUNTIME, len(images),
                       time.perf_counter() - started, notes)
    summary = found.to_dict()
    if quantize is not None:
        summary["curve_fp32"] = [p.to_dict() for p in sorted(fp32_curve, key=lambda p: -p.gmacs)]
    return final, summary


def _fp32_curve(source: Any, model: Any, images: np.ndarray) -> list[Point]:
    """Every candidate setting exported and run in fp32 (made once per export, shared by tome and tome-int8)."""
    if "fp32_curve" not in source._tome:
        settings = candidates(source.config.depth, source.tome_r)
        unique: dict[tuple[int, ...], Point] = {}  # r capped by the tokens left can make two settings the same
        for p in sorted((point(source.config, s) for s in settings), key=lambda p: (p.gmacs, p.r)):
            unique.setdefault(tuple(p.per_block), p)
        curve = list(unique.values())
        for p in curve:  # a single setting (r given) is the file: exported with the parity check straight away
            _evaluate(source, model, p, images, None, verify=len(curve) == 1)
        source._tome["fp32_curve"] = curve
    return source._tome["fp32_curve"]


def _evaluate(source: Any, model: Any, p: Point, images: np.ndarray, quantize: Quantize | None,
              verify: bool = False) -> None:
    """Build the setting's graph and measure it on the search images against the unmerged fp32 model."""
    reference = _reference(source, images)
    if p.r == 0 and quantize is None:
        session = open_runtime(RUNTIME, source.base, device="cpu")  # the unmerged file itself
    else:
        graph = _build_setting(source, model, p, quantize, verify)
        session = open_runtime(RUNTIME, getattr(graph, "proto", graph).SerializeToString(), device="cpu")
    logits = _run(session, images)
    p.agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    p.ms_per_image = _time(session, images)
    p.passed = p.agreement >= SEARCH_MIN_AGREEMENT
    logger.info("token merging %s%s: %d tokens out, %.0f%% of MACs, agreement %.4f, %.2f ms/image",
                Setting(p.r, p.first_block).name, " int8" if quantize else "", p.tokens_out, 100 * p.macs_share,
                p.agreement, p.ms_per_image)


def _reference(source: Any, images: np.ndarray) -> np.ndarray:
    """The unmerged fp32 file's logits on the search images (it passed export's parity check)."""
    if "reference" not in source._tome:
        source._tome["reference"] = _run(open_runtime(RUNTIME, source.base, device="cpu"), images)
    return source._tome["reference"]


def _fastest_passing(curve: Sequence[Point]) -> Point | None:
    passing = [p for p in curve if p.passed and p.r > 0]
    return min(passing, key=lambda p: p.gmacs) if passing else None


def _mildest(curve: Sequence[Point]) -> Point:
    merging = [p for p in curve if p.r > 0] or list(curve)
    return max(merging, key=lambda p: p.gmacs)


def _build_setting(source: Any, model: Any, p: Point, quantize: Quantize | None, verify: bool) -> Any:
    """Export the model with this merging (parity-checked against it when `verify`); quantized when asked."""
    import onnx

    from vitdeploy.model import tome

    path = source.workdir / f"tome-{Setting(p.r, p.first_block).name}.onnx"
    exported = source._tome.setdefault("exported", {})  # path -> whether export's parity check ran on it
    if path not in exported or (verify and not exported[path]):
        with tome.merging(model, tome.MergeSchedule(tuple(p.per_block))):
            source.export(model, path, verify)
        exported[path] = verify
    if quantize is None:
        return onnx.load(str(path))
    return quantize(dataclasses.replace(source, base=path, _fused=None))  # the same calibration images


def _run(session: Any, images: np.ndarray) -> np.ndarray:
    return session.run_in_batches(images, TIMING_BATCH).astype(np.float32)


def _time(session: Any, images: np.ndarray) -> float:
    batch = images[:TIMING_BATCH]
    best = float("inf")
    for _ in range(TIMING_RUNS):
        started = time.perf_counter()
        session.run(batch)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(batch)
