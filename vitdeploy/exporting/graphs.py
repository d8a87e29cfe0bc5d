"""Faster forms of an exported fp32 graph: ONNX Runtime's transformer fusions, fp16, INT8 (static and dynamic), and
NNCF's INT8 for OpenVINO.

Pure graph-to-graph functions; whether a result may be handed out is the accuracy gate's decision (ladder.py).
The build_* functions at the end are the builders the variant table (vitdeploy.files.variants) names, one per row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdeploy.core.config import ModelConfig
from vitdeploy.core.cpu import int8_saturates
from vitdeploy.core.strict_json import record
from vitdeploy.errors import ConfigError
from vitdeploy.exporting import quant_search, tome_search
from vitdeploy.files.onnx_file import INPUT_NAME, copy_proto, save_onnx
from vitdeploy.files.variants import ExportVariant
from vitdeploy.requests import ExportRequest
from vitdeploy.runtimes import open_runtime, this_machine

if TYPE_CHECKING:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

logger = logging.getLogger(__name__)

CALIBRATION_BATCH_SIZE = 32
# Ops that fp16 leaves in fp32 (casts around them): the numerically sensitive ones. Once every block is fused only
# the first LayerNorm is left standalone, so this costs two casts. Measured on the digits bundle (ORT CPU): same
# top-1 on all 359 held-out images either way; max |diff| 2.4e-3 kept vs 3.1e-3 converted.
FP16_KEEP_FP32_OPS = ("LayerNormalization", "Softmax")


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
        return record(self, shortfalls=self.shortfalls())


@dataclass
class VariantSource:
    """What a variant is built from: the exported fp32 file and its model config, a folder for intermediate files,
    and the calibration inputs the INT8 builders ask for (the bundle's training images at export, seeded random
    inputs for bench's presets). The fused graph and the calibration inputs are made once, when first needed."""

    base: Path
    config: ModelConfig
    workdir: Path
    calibration: Callable[[], np.ndarray]
    int8_method: str = ExportRequest.int8_method  # static | dynamic
    # the CPU class it is built (and gated) for: the machine record's (core.cpu.isa_class, or a faked machine's)
    isa: str = field(default_factory=lambda: this_machine().isa)
    # Token merging variants change the PyTorch model's forward, not the graph: they are exported again from `model`
    # with `export(model, path, verify)` (export's own exporter and opset; verify: its parity check against `model`).
    model: Any = None
    export: Callable[[Any, Path, bool], Any] | None = None
    tome_r: int | None = None  # tokens merged per block; None: searched (tome_search)
    image_layout: str = ExportRequest.image_layout  # the raw-image variant's input: nhwc | nchw
    _fused: tuple[onnx.ModelProto, FusionReport] | None = field(default=None, repr=False)
    _calibration: np.ndarray | None = field(default=None, repr=False)
    _tome: dict[str, Any] = field(default_factory=dict, repr=False)  # tome_search's memo, for tome and tome-int8

    def fused(self) -> tuple[onnx.ModelProto, FusionReport]:
        if self._fused is None:
            self._fused = fuse_transformer(self.base, self.config)
        return self._fused

    def calibration_inputs(self) -> np.ndarray:
        if self._calibration is None:
            self._calibration = self.calibration()
        return self._calibration

    @property
    def int8_recipe(self) -> Int8Recipe:
        return int8_recipe(self.isa)


@dataclass(frozen=True)
class Int8Recipe:
    """How the INT8 builders store weights for the CPU class a file is built and gated for.

    x86 INT8 kernels multiply uint8 activations by int8 weights. With VNNI or AMX every product is accumulated in
    32 bits. Without them (AVX2, AVX-512 without VNNI) both ONNX Runtime's MLAS and OpenVINO's oneDNN use
    VPMADDUBSW, which adds two adjacent u8 x s8 products into a saturating 16-bit sum: 255 x 127 x 2 overflows it.
    Weights in 7 bits (|w| <= 64: 2 x 255 x 64 < 2^15) keep every pair in range: ORT's reduce_range, NNCF's
    OverflowFix.ENABLE.
    Measured on an Ice Lake running its own AVX2 kernels (tests/test_int8_isa.py, benchmarks/int8_isa.md): on a
    random-init ViT with PyTorch's default Linear init, ORT's u8s8 file agreed with fp32 on 97.0% of inputs on the
    VNNI kernel and 74.5% on the AVX2 one, 7-bit weights 95.5% on both; NNCF's default (7 bits in the first layer
    only) 96.5% / 84.5% on OpenVINO, OverflowFix.ENABLE 95.5% on both. Where nothing saturates the full 8 bits are
    the more accurate, so VNNI / AMX keep them.
    """

    isa: str  # core.cpu.isa_class
    reduce_range: bool  # 7-bit weights (ORT static and dynamic: reduce_range; NNCF: OverflowFix.ENABLE)

    @property
    def overflow_fix(self) -> str:
        """NNCF's overflow_fix: "enable" (every layer's weights in 7 bits), "first_layer" (NNCF's default)."""
        return "enable" if self.reduce_range else "first_layer"

    def to_dict(self) -> dict[str, Any]:
        return {"isa_class": self.isa, "weights_7_bit": self.reduce_range,
                "why": ("u8 x s8 products can saturate in 16 bits on this CPU class (no VNNI or AMX)"
                        if self.reduce_range else "VNNI / AMX (or arm64) accumulate u8 x s8 products in 32 bits")}


def int8_recipe(isa: str | None = None) -> Int8Recipe:
    """The INT8 recipe for a CPU class (default: this CPU's): 7-bit weights where u8 x s8 can saturate, the full
    8 bits where it cannot (no accuracy to lose there, and the same kernels run either way)."""
    isa = this_machine().isa if isa is None else isa
    return Int8Recipe(isa, reduce_range=int8_saturates(isa))


@dataclass
class BuiltGraph:
    proto: onnx.ModelProto
    fusions: FusionReport | None = None  # None: built without ORT's transformer fusions
    quantization: dict[str, Any] | None = None  # the quantization settings, for the file's metadata
    token_merging: dict[str, Any] | None = None  # the merging setting and its search curve (tome_search)


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
    # NOTE: handed a ModelProto, ORT's optimizer moves every initializer out of the graph into session options, and
    # then cannot read a Reshape's target shape when that shape is an initializer (dynamo's graphs; TorchScript's
    # use Constant nodes): "Cannot parse data from external tensors". Handed a file, it reads the tensors itself.
    with tempfile.TemporaryDirectory(prefix="vitdeploy-fuse-") as tmp, _quiet_root_logger():
        prepared = Path(tmp) / "prepared.onnx"
        save_onnx(proto, prepared)
        optimized = optimize_model(os.fspath(prepared), model_type="vit", num_heads=config.num_heads,
                                   hidden_size=config.dim)
    counts = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    expected = {"Attention": config.depth, "SkipLayerNormalization": 2 * config.depth, "Gelu": config.depth}
    return optimized.model, FusionReport(counts, expected, rewrites)


def prepare_for_fusion(proto: onnx.ModelProto) -> dict[str, int]:
    """Rewrite exact-arithmetic spellings that ORT's ViT matchers do not recognise; return counts per rewrite.

    Each is a bit-for-bit identical computation, and the gate compares the fused graph with PyTorch anyway.
    (The attention scale needs no rewrite: model/vit.py divides by sqrt(head_dim), the spelling ORT matches.)
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

    graph = OnnxModel(copy_proto(fused))
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


def calibration_reader(calibration: np.ndarray) -> CalibrationDataReader:
    """The calibration images as ONNX Runtime's quantizer reads them: CALIBRATION_BATCH_SIZE at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(calibration), CALIBRATION_BATCH_SIZE))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.starts, None)
            return None if start is None else {INPUT_NAME: calibration[start : start + CALIBRATION_BATCH_SIZE]}

    return Batches()


def to_int8_static(
    model_path: Path, calibration: np.ndarray, workdir: Path, recipe: Int8Recipe | None = None
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """INT8 static quantization (QDQ) of the Linear layers: per-channel int8 weights, uint8 activations with
    ranges calibrated on training images, from the unfused fp32 graph (ORT's CPU provider fuses the QDQ pairs).
    `recipe` (default: this CPU's): 7-bit weights (reduce_range) where u8 x s8 can saturate.

    Kept in fp32, measured on the briefly trained ViT-Ti (benchmarks/precision.md): the patch embedding (it reads
    raw pixels) and the head, and the two activation-by-activation MatMuls of attention (Q K^T, weights V).
    Quantizing them too took top-1 agreement from 100% down to 94% for no measurable speed. Static scales also
    make each image's result independent of the rest of its batch.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    recipe = recipe or int8_recipe()
    linear, activation_products = linear_matmuls(onnx.load(os.fspath(model_path), load_external_data=False))
    out = workdir / "int8-static.onnx"
    with _quiet_root_logger():
        quantize_static(
            os.fspath(model_path), os.fspath(out), calibration_reader(calibration), quant_format=QuantFormat.QDQ,
            per_channel=True, reduce_range=recipe.reduce_range, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"], nodes_to_exclude=activation_products,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    settings = {"method": "static", "format": "QDQ", "weights": _weights("int8 per channel", recipe),
                "activations": "uint8", "calibration": "MinMax", "calibration_images": len(calibration),
                "quantized_matmuls": len(linear), "recipe": recipe.to_dict(),
                "kept_fp32": "patch embedding, head, attention's activation x activation MatMuls"}
    return onnx.load(os.fspath(out)), settings


def _weights(kind: str, recipe: Int8Recipe) -> str:
    return f"{kind}, 7-bit range" if recipe.reduce_range else kind


def to_int8_dynamic(
    fused: onnx.ModelProto, workdir: Path, recipe: Int8Recipe | None = None
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """INT8 dynamic quantization of the fused graph's Linear layers and Attention: int8 weights, activations
    quantized per batch at run time. The patch embedding and the head stay fp32, as in to_int8_static; 7-bit
    weights where the recipe says so (the same u8 x s8 kernels run it).

    NOTE: quantize_dynamic on a transformers-optimised graph fails unless the default tensor type is spelled out
    (extra_options DefaultTensorType=FLOAT).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    recipe = recipe or int8_recipe()
    source, out = workdir / "fused.onnx", workdir / "int8-dynamic.onnx"
    onnx.save_model(fused, os.fspath(source))
    with _quiet_root_logger():
        quantize_dynamic(os.fspath(source), os.fspath(out), weight_type=QuantType.QInt8,
                         reduce_range=recipe.reduce_range, op_types_to_quantize=["MatMul", "Attention"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return onnx.load(os.fspath(out)), {"method": "dynamic", "weights": _weights("int8 per tensor", recipe),
                                       "activations": "per batch", "recipe": recipe.to_dict(),
                                       "kept_fp32": "patch embedding, head"}


def to_ov_int8(
    model_path: Path, calibration: np.ndarray, workdir: Path, kept: Sequence[str] | None = None,
    recipe: Int8Recipe | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """INT8 post-training quantization by NNCF (`nncf.quantize`, ONNX backend, transformer model type) of the
    unfused fp32 graph, calibrated on training images: an ONNX file with QuantizeLinear / DequantizeLinear pairs,
    which OpenVINO turns into its INT8 kernels (ONNX Runtime can run it too). NNCF's transformer model type keeps
    the numerically sensitive ops (LayerNorm, Softmax, GELU, the residual additions) unquantized; kept in fp32 as
    in to_int8_static: the patch embedding, the head and attention's activation x activation MatMuls (measured on
    the digits bundle: quantized too, they cost 0.56 pt of held-out accuracy, more than the gate allows).
    `kept`: the node names to leave unquantized instead (a search's choice; [] quantizes every one). `recipe`
    (default: this CPU's): NNCF's OverflowFix.ENABLE (7-bit weights in every layer) where u8 x s8 can saturate,
    its default (the first layer only) elsewhere.

    NOTE: NNCF reports progress with rich on stdout and logs through its own logger: both are kept off the
    terminal here, as `--json` needs a clean stdout.
    """
    import onnx

    recipe = recipe or int8_recipe()
    with _quiet_root_logger(), _quiet_nncf():
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        source = onnx.load(os.fspath(model_path))
        dataset = nncf.Dataset([{INPUT_NAME: calibration[i : i + 1]} for i in range(len(calibration))])
        fixed = kept is None
        kept = fp32_nodes(source) if kept is None else list(kept)
        overflow_fix = OverflowFix.ENABLE if recipe.reduce_range else OverflowFix.FIRST_LAYER
        quantized = nncf.quantize(source, dataset, model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(calibration), ignored_scope=nncf.IgnoredScope(names=kept),
                                  advanced_parameters=AdvancedQuantizationParameters(overflow_fix=overflow_fix))
    settings = {"method": "nncf", "tool": f"nncf {nncf.__version__} quantize, ONNX backend",
                "format": "QDQ (ONNX)", "model_type": "transformer",
                "preset": "mixed (NNCF's default for transformers)", "overflow_fix": recipe.overflow_fix,
                "recipe": recipe.to_dict(),
                "calibration_images": len(calibration),
                "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node),
                "kept_fp32": "patch embedding, head, attention's activation x activation MatMuls" if fixed
                else f"{len(kept)} node(s) chosen by a search (see search)"}
    return quantized, settings


def fp32_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes INT8 leaves in fp32: the patch embedding (Conv), the head (the last Linear) and the two
    activation x activation MatMuls of each attention."""
    weights = {t.name for t in proto.graph.initializer}
    linear = [n.name for n in proto.graph.node
              if n.op_type in ("MatMul", "Gemm") and any(i in weights for i in n.input)]
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    return convs + linear[-1:] + linear_matmuls(proto)[1]


# ---------------------------------------------------------------------------------------------------- builders


def build_fused_fp32(source: VariantSource) -> BuiltGraph:
    proto, fusions = source.fused()
    return BuiltGraph(copy_proto(proto), fusions)


def build_fp16(source: VariantSource) -> BuiltGraph:
    proto, fusions = source.fused()
    return BuiltGraph(to_fp16(proto), fusions)


def build_int8(source: VariantSource) -> BuiltGraph:
    """Static QDQ from the unfused graph, or (int8_method dynamic) dynamic quantization of the fused one."""
    if source.int8_method == "dynamic":
        proto, fusions = source.fused()
        quantized, settings = to_int8_dynamic(proto, source.workdir, source.int8_recipe)
        return BuiltGraph(quantized, fusions, settings)
    quantized, settings = to_int8_static(source.base, source.calibration_inputs(), source.workdir,
                                         source.int8_recipe)
    return BuiltGraph(quantized, None, settings)


def build_tome(source: VariantSource) -> BuiltGraph:
    """The PyTorch model with token merging on (the setting searched unless --tome-r), exported again."""
    proto, merging = tome_search.build(source)
    return BuiltGraph(proto, token_merging=merging)


def build_tome_int8(source: VariantSource) -> BuiltGraph:
    """Token merging stacked with INT8: the merged graph, quantized by the int8 variant's own builder."""
    built, merging = tome_search.build(source, quantize=build_int8)
    return dataclasses.replace(built, token_merging=merging)


def build_ov_tome_int8(source: VariantSource) -> BuiltGraph:
    """Token merging stacked with NNCF INT8 for OpenVINO: the merged graph, quantized by ov-int8's own builder."""
    built, merging = tome_search.build(source, quantize=build_ov_int8)
    return dataclasses.replace(built, token_merging=merging)


def build_same_graph(source: VariantSource) -> BuiltGraph:
    """The fp32 graph unchanged: the variant is a setting of its runtime (ov-bf16: OpenVINO computes in bf16)."""
    import onnx

    return BuiltGraph(onnx.load(os.fspath(source.base)))


def build_image_input(source: VariantSource) -> BuiltGraph:
    """The fp32 graph behind THE preprocessing in ONNX operators: input the decoded image (image_input.py)."""
    import onnx

    from vitdeploy.exporting.image_input import EXPORT_LAYOUTS, with_image_input
    from vitdeploy.files.onnx_file import parse_metadata

    model = onnx.load(os.fspath(source.base))
    spec = parse_metadata(source.base, {p.key: p.value for p in model.metadata_props}).preprocess
    return BuiltGraph(with_image_input(model, spec, EXPORT_LAYOUTS[source.image_layout]))


def build_ov_int8(source: VariantSource) -> BuiltGraph:
    quantized, settings = to_ov_int8(source.base, source.calibration_inputs(), source.workdir,
                                     recipe=source.int8_recipe)
    return BuiltGraph(quantized, None, settings)


def build_ov_int8_bf16(source: VariantSource) -> BuiltGraph:
    """NNCF INT8 for OpenVINO with the ops it leaves unquantized in bf16, the unquantized layers chosen by a
    sensitivity search on the calibration images (quant_search), run in bf16 as the file will be."""
    return ov_int8_searched(source, "bf16")


def ov_int8_searched(source: VariantSource, inference_precision: str) -> BuiltGraph:
    """Quantize everything once, search which groups to keep in float (quant_search.search, on OpenVINO in
    `inference_precision`), then quantize again with exactly those in NNCF's ignored scope (where the search keeps
    none, the first quantization is the answer: NNCF is deterministic, and a second run would cost as much again)."""
    import onnx

    started = time.perf_counter()
    images = source.calibration_inputs()

    def run(proto: onnx.ModelProto, precision: str = inference_precision) -> np.ndarray:
        # One compilation per candidate: a second (static shape, THROUGHPUT) would cost more than it saves here.
        with open_runtime("openvino", proto.SerializeToString(), "cpu", precision, static_batch=False,
                          throughput=False) as session:
            return session.run_in_batches(images, CALIBRATION_BATCH_SIZE)

    reference = run(onnx.load(os.fspath(source.base)), "fp32")
    everything, settings = to_ov_int8(source.base, images, source.workdir, kept=[], recipe=source.int8_recipe)
    groups = quant_search.matmul_groups(onnx.load(os.fspath(source.base)), source.config)
    found = quant_search.search(everything, groups, run, reference)
    if found.kept_nodes:
        quantized, settings = to_ov_int8(source.base, images, source.workdir, kept=found.kept_nodes,
                                         recipe=source.int8_recipe)
        final = quant_search.agreement(reference, run(quantized))
    else:  # nothing kept in float: that is the graph quantized first, already run on these images by the search
        quantized, final = everything, found.agreement_all_quantized
    settings["search"] = {**found.to_dict(), "agreement_requantized": round(final, 4),
                          "inference_precision": inference_precision,
                          "seconds_with_quantization": round(time.perf_counter() - started, 1)}
    logger.info("int8 search: %s kept in float, %.0f%% of MACs in INT8, %d evaluations, %.0f s",
                ", ".join(found.kept_fp32) or "nothing", 100 * found.quantized_macs_share, found.evaluations,
                time.perf_counter() - started)
    return BuiltGraph(quantized, None, settings)


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF's progress bars go to stdout and its INFO lines to its own logger."""
    nncf_logger = logging.getLogger("nncf")
    before = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(before)


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


def build_variant(row: ExportVariant, source: VariantSource) -> BuiltGraph:
    """Build the variant table's row `row` from source.base with the builder the row names."""
    if row.builder is None:
        raise ConfigError(f"{row.name} is the plain export, not a variant built from it")
    builder: Callable[[VariantSource], BuiltGraph] = globals()[row.builder]
    return builder(source)
