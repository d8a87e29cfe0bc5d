"""Every variant in one place: the export variants (files) and the bench variants (a runtime on a device, timing one
of those files). Export, verify, bench, the accuracy gate and the CLI help all read these two tables.

    export variant   a FILE beside model.onnx: model.<name>.onnx, one row of EXPORT_VARIANTS (fp32 is model.onnx)
    bench variant    a RUNTIME x DEVICE x FILE that bench times, one row of BENCH_VARIANTS (ort-cpu-int8 runs the
                     int8 export variant on ONNX Runtime's CPU provider); its precision is its file's

Adding an export variant is one ExportVariant row (its builder is a function of exporting/graphs.py named in the
row, built by exporting.graphs.build_variant);
a bench variant that times it is one more row below. Imports numpy and vitdeploy's light modules only: the CLI
builds its help from these tables at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitdeploy.errors import ConfigError


@dataclass(frozen=True)
class Tolerance:
    """When ONNX logits count as equal to PyTorch's: |onnx - torch| <= atol + rtol * |torch| everywhere, and at
    least `min_top1_agreement` of the samples get the same top-1 class."""

    atol: float
    rtol: float
    min_top1_agreement: float = 1.0
    real_images_only: bool = False  # judge only the real images (random inputs are not what the variant is for)

    def allows(self, reference: np.ndarray, candidate: np.ndarray) -> bool:
        return bool(np.all(np.abs(candidate - reference) <= self.atol + self.rtol * np.abs(reference)))

    def agrees(self, top1_agreement: float, samples: int) -> bool:
        """At least min_top1_agreement of the samples with the same top-1 class; where that allows any
        disagreement at all, one disagreeing sample always passes: below 100 samples a single near-tie flipping
        would otherwise fail a 99% criterion that the sample count cannot resolve."""
        if top1_agreement >= self.min_top1_agreement:
            return True
        return self.min_top1_agreement < 1.0 and round((1.0 - top1_agreement) * samples) <= 1


@dataclass(frozen=True)
class ExportVariant:
    """One file `vitdeploy export` can write, and every fact about it."""

    name: str  # --precision value, the file's recorded "variant", and its file name part: model.<name>.onnx
    precision: str  # the graph's arithmetic precision, recorded in the file: fp32 | fp16 | int8 | bf16
    runtime: str  # the runtime it is made for, judged on at export, and run on by default (predict, serve)
    help: str  # what it is, for the --precision help
    tolerance: Tolerance  # verify's parity tolerance for this file against PyTorch fp32
    # The exporting/graphs function that builds it from model.onnx (a VariantSource -> BuiltGraph), by name so that
    # this table imports neither onnx nor onnxruntime; None: model.onnx itself.
    builder: str | None = None
    gate_device: str = "cpu"  # where the accuracy gate runs it: "auto" (the GPU when a session really gets it)
    # The precision the runtime computes in, as a setting of that runtime recorded in the file (OpenVINO: ov-bf16 is
    # the fp32 graph run in bf16; ov-int8 pins f32 for the ops NNCF leaves unquantized). None: the graph's own.
    inference_precision: str | None = None
    gate_on_logits: bool = False  # the gate also holds its logits to `tolerance.atol` (an exact rewrite must)
    option: str = "precision"  # how export is asked for it: "precision" (--precision NAME) | "optimize" | "image"
    auto: bool = True  # export --precision auto builds it where it can; False: by name only (it changes the model)

    def path(self, base: Path) -> Path:
        """The file beside the plain export `base`: model.onnx -> model.int8.onnx; model.onnx for fp32."""
        from vitdeploy.files.onnx_file import variant_path

        return base if self.builder is None else variant_path(base, self.name)

    @property
    def export_flag(self) -> str:
        return {"optimize": "--optimize", "image": "--image-input"}.get(self.option, f"--precision {self.name}")

    @property
    def gate_max_abs(self) -> float | None:
        return self.tolerance.atol if self.gate_on_logits else None

    @property
    def computes(self) -> tuple[str, ...]:
        """The precisions its runtime computes it in, which a machine must offer natively to run it fast: the
        graph's, and the runtime's setting for the ops the graph leaves in float (ov-int8-bf16: int8, bf16)."""
        return tuple(dict.fromkeys((self.precision, self.inference_precision or self.precision)))


# Tolerances. fp32: ONNX Runtime's own fp32 validation tolerance (1e-4); measured fp32 differences here are ~1e-6,
# so this leaves a 100x margin without hiding a bug. The fused fp32 graph is an exact rewrite: the gate holds its
# logits to the same atol. fp16: ONNX Runtime's own fp16 validation tolerance (atol 1e-1, rtol 5e-2); measured here
# (digits bundle, ORT CPU) 5e-3 at most. int8: no standard exists; on real held-out images the logits (|x| up to 4.5
# for digits) differed by at most 0.13 (digits, static), 0.06 (digits, dynamic), 0.02 / 0.04 (ViT-Ti): 0.5 leaves a
# margin and still fails a broken quantization. Static INT8 is calibrated on real images; random noise can fall
# outside those ranges (digits: up to 0.49 on noise vs 0.07 on the same number of real images), so int8 is judged on
# the real images only. bf16 (OpenVINO's ov-bf16: 8 significant bits, 3 fewer than fp16) has no standard either:
# fp16's rtol with a larger atol; measured on real held-out images (OpenVINO CPU, AMX): 3.4e-2 (digits), 1.9e-2
# (ViT-Ti/16 on photo regions). Judged on real images, as int8. The accuracy gate at export (vitdeploy.exporting.ladder)
# decides whether a variant is handed out at all; these tolerances re-check the file (verify).
FP32 = Tolerance(atol=1e-4, rtol=0.0)
FP16 = Tolerance(atol=1e-1, rtol=5e-2, min_top1_agreement=0.99)
INT8 = Tolerance(atol=0.5, rtol=0.0, min_top1_agreement=0.99, real_images_only=True)
BF16 = Tolerance(atol=0.25, rtol=5e-2, min_top1_agreement=0.99, real_images_only=True)
# Token merging against PyTorch with the same merging: fp32 arithmetic, but discrete choices. Where patches are nearly
# alike (flat regions of a photo) the best matches differ by less than fp32 rounding (gaps of 1e-7..5e-6 at the r-th
# match, ViT-Ti/16 on photo regions), so a runtime may merge another, nearly identical token and the logits move by
# more than fp32's 1e-4: measured on the 149 held-out images (|logits| up to 3.8), max |diff| 3.5e-4 / 3.6e-3 at r=4
# and 8.1e-3 / 7.8e-3 at r=8 (ORT / OpenVINO), top-1 always equal; random inputs ~2e-7. fp16's atol, and 99% top-1.
TOME = Tolerance(atol=1e-1, rtol=0.0, min_top1_agreement=0.99)

# NOTE fp16 is judged on CUDA when a session really gets it, else on ORT's CPU provider, which has no fp16 kernels
# for MatMul, Attention, BiasGelu, Conv or Gemm (ORT 1.31): it inserts casts and runs them in fp32, so a CPU judgement
# covers the fp16 rounding of the weights and activations between ops, not fp16 arithmetic inside the matmuls.
EXPORT_VARIANTS: tuple[ExportVariant, ...] = (
    ExportVariant("fp32", "fp32", "ort", "the plain export, MODEL.onnx, always written", FP32),
    ExportVariant("fp32-opt", "fp32", "ort", "ONNX Runtime's transformer fusions applied offline", FP32,
                  "build_fused_fp32", gate_on_logits=True, option="optimize"),
    ExportVariant("fp16", "fp16", "ort", "ONNX Runtime on GPUs, built from the fused graph", FP16, "build_fp16",
                  gate_device="auto"),
    ExportVariant("int8", "int8", "ort", "ONNX Runtime on CPUs: static QDQ unless --int8-method dynamic", INT8,
                  "build_int8"),
    ExportVariant("ov-bf16", "bf16", "openvino", "OpenVINO in bf16, on CPUs with AVX512_BF16 or AMX", BF16,
                  "build_same_graph", inference_precision="bf16"),
    ExportVariant("ov-int8", "int8", "openvino", "NNCF INT8 for OpenVINO, f32 for the rest", INT8, "build_ov_int8",
                  inference_precision="fp32"),
    # What stays unquantized is searched (quant_search), not fixed; bf16 for the rest needs native bf16.
    ExportVariant("ov-int8-bf16", "int8", "openvino",
                  "NNCF INT8 for OpenVINO, bf16 for the rest (CPUs with AVX512_BF16 or AMX), the layers kept "
                  "unquantized chosen by a sensitivity search", INT8, "build_ov_int8_bf16", inference_precision="bf16"),
    # THE preprocessing inside the graph (exporting/image_input.py), judged on raw held-out images of many sizes.
    ExportVariant("image", "fp32", "ort", "input the decoded image itself (uint8 [batch, height, width, channels], "
                  "or channels first with --image-layout nchw; any size), THE preprocessing inside the graph, for "
                  "clients that cannot reproduce Pillow", FP32,
                  "build_image_input", option="image"),
    # Token merging (model/tome.py): fewer tokens, not fewer bits. Parity is against PyTorch with the same merging
    # (verify rebuilds it from the file's metadata); the gate, as for every variant, against the unmerged model.
    ExportVariant("tome", "fp32", "ort",
                  "token merging (ToMe): r tokens merged per block, r and the blocks searched unless --tome-r",
                  TOME, "build_tome", auto=False),
    ExportVariant("tome-int8", "int8", "ort", "token merging stacked with the int8 variant's quantization", INT8,
                  "build_tome_int8", auto=False),
    ExportVariant("ov-tome-int8", "int8", "openvino",
                  "token merging stacked with ov-int8's NNCF INT8, f32 for the rest", INT8, "build_ov_tome_int8",
                  inference_precision="fp32", auto=False),
)
EXPORT = {v.name: v for v in EXPORT_VARIANTS}
PLAIN = EXPORT["fp32"]
# --precision's choices (fp32-opt comes from --optimize).
PRECISIONS = tuple(v.name for v in EXPORT_VARIANTS if v.option == "precision")


def export_variant(name: str) -> ExportVariant:
    if name not in EXPORT:
        raise ConfigError(f"unknown variant {name!r}; choose from: {', '.join(EXPORT)}")
    return EXPORT[name]


def tolerance_for(precision: str) -> Tolerance | None:
    """verify's tolerance for a file of this precision (rows of one precision share one), or None."""
    return next((v.tolerance for v in EXPORT_VARIANTS if v.precision == precision), None)


def precision_help() -> str:
    """export --precision's help, one clause per row."""
    rows = [v for v in EXPORT_VARIANTS if v.option == "precision" and v.builder]
    return (f"{', '.join(PRECISIONS)}; fp32 (default) is always written; several as fp16,int8 or repeated. "
            + "; ".join(f"{v.name}: {v.help}, to MODEL.{v.name}.onnx" for v in rows)
            + ". Each judged on the runtime it is for. auto: every variant this machine computes natively and "
            "can gate (--optimize's included); the others are named with what would build them.")


# ------------------------------------------------------------------------------------------------ bench variants


@dataclass(frozen=True)
class VariantSpec:
    """A bench variant: one runtime on one device, timing one file, in that file's precision."""

    name: str
    runtime: str  # "torch" | "ort" | "openvino"
    device: str  # "cpu" | "cuda" | "tensorrt"
    precision: str
    description: str
    # The export variant whose file it times (model.<name>.onnx beside model.onnx); None: model.onnx itself.
    export: ExportVariant | None = None
    cuda_graph: bool = False  # ONNX Runtime CUDA: capture each run as one CUDA graph

    def __post_init__(self) -> None:
        if self.export is not None and self.export.precision != self.precision:
            raise ValueError(f"{self.name}: precision {self.precision} but its file is {self.export.precision}")

    @property
    def computes(self) -> tuple[str, ...]:
        """The precisions it computes in: its file's (ExportVariant.computes), else its own."""
        return self.export.computes if self.export else (self.precision,)


def _on_file(name: str, runtime: str, device: str, variant: str, what: str, detail: str = "") -> VariantSpec:
    """A bench variant that times export variant `variant`: precision and file come from its row."""
    row = EXPORT[variant]
    return VariantSpec(name, runtime, device, row.precision,
                       f"{what} on model.{row.name}.onnx (export {row.export_flag}){detail}", row)


BENCH_VARIANTS: tuple[VariantSpec, ...] = (
    VariantSpec("torch", "torch", "cpu", "fp32", "PyTorch eager, inference_mode"),
    VariantSpec("ort-cpu", "ort", "cpu", "fp32", "ONNX Runtime CPU on model.onnx, graph optimisation ALL"),
    _on_file("ort-cpu-fused", "ort", "cpu", "fp32-opt", "ONNX Runtime CPU", ": transformer fusions applied offline"),
    _on_file("ort-cpu-int8", "ort", "cpu", "int8", "ONNX Runtime CPU", ": static QDQ unless --int8-method dynamic"),
    VariantSpec("torch-cuda", "torch", "cuda", "fp32", "PyTorch eager on CUDA, input resident on the GPU"),
    VariantSpec("ort-cuda", "ort", "cuda", "fp32", "ONNX Runtime CUDA on model.onnx, IO binding (input/output on GPU)"),
    VariantSpec("ort-cuda-graph", "ort", "cuda", "fp32",
                "ONNX Runtime CUDA on model.onnx, IO binding + CUDA graph (one captured graph per batch size)",
                cuda_graph=True),
    _on_file("ort-cuda-fp16", "ort", "cuda", "fp16", "ONNX Runtime CUDA", ", IO binding, fp32 input and output"),
    VariantSpec("ort-tensorrt", "ort", "tensorrt", "fp32",
                "ONNX Runtime TensorRT provider on model.onnx (CUDA runs what TensorRT does not take), IO binding"),
    VariantSpec("ov-cpu", "openvino", "cpu", "fp32", "OpenVINO CPU on model.onnx, f32 pinned"),
    _on_file("ov-cpu-bf16", "openvino", "cpu", "ov-bf16", "OpenVINO CPU", ": bf16 inference precision"),
    _on_file("ov-cpu-int8", "openvino", "cpu", "ov-int8", "OpenVINO CPU", ": NNCF INT8, f32 for the rest"),
    _on_file("ov-cpu-int8-bf16", "openvino", "cpu", "ov-int8-bf16", "OpenVINO CPU",
             ": NNCF INT8 (searched), bf16 for the rest"),
    _on_file("ort-cpu-tome", "ort", "cpu", "tome", "ONNX Runtime CPU", ": token merging"),
    _on_file("ov-cpu-tome", "openvino", "cpu", "tome", "OpenVINO CPU", ": token merging, f32 pinned"),
    _on_file("ort-cpu-tome-int8", "ort", "cpu", "tome-int8", "ONNX Runtime CPU", ": token merging + INT8"),
    _on_file("ov-cpu-tome-int8", "openvino", "cpu", "ov-tome-int8", "OpenVINO CPU", ": token merging + NNCF INT8"),
)
VARIANTS: dict[str, VariantSpec] = {v.name: v for v in BENCH_VARIANTS}
