"""Which layers INT8 leaves unquantized: a sensitivity search that returns the cheapest set that keeps the model's
answers, instead of one fixed choice.

    1. quantize everything (every MatMul, the patch embedding, the head), once
    2. sensitivity: for each group of MatMuls (per block: q/k/v, attention's two activation x activation MatMuls,
       the output projection, fc1, fc2; plus the patch embedding and the head), the logit error left when only that
       group's activations are taken back to float (graph surgery on the quantized file: cheap, no re-quantization)
    3. greedy: order the groups by error removed per multiply-accumulate they cost, and find (by bisection) the
       shortest prefix of that order which, back in float, makes the quantized model's top-1 answers agree with
       the fp32 model's on the search images
    4. the caller re-quantizes once with the chosen groups in NNCF's ignored scope (exact float weights for them)

The search images are the calibration (training) images, never the held-out ones the accuracy gate judges, so the
gate stays an independent check. Speed is estimated from multiply-accumulates, not timed: timings on a shared
machine during export would decide nothing reliably. Numpy and onnx only; the caller supplies the runtime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdeploy.core.config import ModelConfig

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

# Every search image must agree: the gate judges other images (the held-out ones), and the search needs a margin.
# Measured on the digits bundle (8 epochs, 128 search images, 359 held-out): held to the gate's own 99% the search
# kept nothing in float (99.2% on its images) and the file failed the gate (98.3%, -0.56 pt); held to 100% it kept
# the head, the patch embedding and 7 of 15 other groups, and passed (99.7%, 0.0 pt).
SEARCH_MIN_AGREEMENT = 1.0
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class Group:
    """Nodes that are kept in float together, and what running them in float costs (multiply-accumulates)."""

    name: str  # e.g. "block3.fc1", "patch_embed", "head"
    nodes: tuple[str, ...]
    macs: int  # per image


@dataclass
class SearchResult:
    """The chosen groups and the evidence for them."""

    kept_fp32: list[str]  # group names, in the order the search took them back to float
    kept_nodes: list[str]
    agreement: float  # top-1 agreement with fp32 on the search images, chosen configuration (surgery estimate)
    agreement_all_quantized: float
    quantized_macs_share: float  # of the model's multiply-accumulates, the share that runs in INT8
    evaluations: int
    seconds: float
    images: int
    sensitivity: dict[str, float]  # group -> mean squared logit error removed by keeping it in float

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept_fp32": self.kept_fp32, "search_images": self.images, "criterion":
                f"top-1 agreement with fp32 >= {SEARCH_MIN_AGREEMENT:.0%} on the calibration images",
            "agreement": round(self.agreement, 4), "agreement_all_quantized": round(self.agreement_all_quantized, 4),
            "quantized_macs_share": round(self.quantized_macs_share, 4), "evaluations": self.evaluations,
            "seconds": round(self.seconds, 1),
            "most_sensitive": dict(sorted(self.sensitivity.items(), key=lambda kv: -kv[1])[:8]),
        }


def matmul_groups(proto: onnx.ModelProto, config: ModelConfig) -> list[Group]:
    """The quantizable nodes of a vitdeploy ViT graph, grouped per block, in graph order. The graph is vitdeploy's
    own export (model/vit.py), so its Linear layers come in a known order: per block q, k, v, proj, fc1, fc2, then the
    head; and two activation x activation MatMuls per block. A graph that does not match gets one group per node."""
    weights = {t.name for t in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if n.op_type in QUANTIZED_OPS]
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    linear = [n.name for n in nodes if n.op_type != "Conv" and any(i in weights for i in n.input)]
    products = [n.name for n in nodes if n.op_type == "MatMul" and n.name not in linear]
    depth, dim, hidden = config.depth, config.dim, config.mlp_hidden
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    if len(convs) != 1 or len(linear) != 6 * depth + 1 or len(products) != 2 * depth:
        logger.info("graph layout not recognised (%d convs, %d linear, %d products): one group per node",
                    len(convs), len(linear), len(products))
        return [Group(n.name, (n.name,), 1) for n in nodes]
    groups = [Group("patch_embed", (convs[0],), (tokens - 1) * dim * config.in_channels * config.patch_size ** 2)]
    for b in range(depth):
        q, k, v, proj, fc1, fc2 = linear[6 * b : 6 * b + 6]
        groups += [
            Group(f"block{b}.qkv", (q, k, v), 3 * tokens * dim * dim),
            Group(f"block{b}.attention", tuple(products[2 * b : 2 * b + 2]), 2 * tokens * tokens * dim),
            Group(f"block{b}.proj", (proj,), tokens * dim * dim),
            Group(f"block{b}.fc1", (fc1,), tokens * dim * hidden),
            Group(f"block{b}.fc2", (fc2,), tokens * hidden * dim),
        ]
    return groups + [Group("head", (linear[-1],), dim * config.num_classes)]


def without_activation_quantizers(quantized: onnx.ModelProto, nodes: Sequence[str]) -> onnx.ModelProto:
    """The quantized graph with the named nodes reading their activations in float again: each input that comes
    through QuantizeLinear -> DequantizeLinear is rewired to the QuantizeLinear's own input (other readers of the
    same quantizer keep it). Weights stay as quantized (an estimate of keeping the node in float: the final file
    is re-quantized with the node ignored, float weights and all)."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(quantized)
    producer = {out: n for n in proto.graph.node for out in n.output}
    wanted = set(nodes)
    for node in proto.graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    _prune(proto)
    return proto


def _prune(proto: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing reads (the quantizers no node uses any more)."""
    while True:
        read = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
        dead = [n for n in proto.graph.node if not any(o in read for o in n.output)]
        if not dead:
            return
        for n in dead:
            proto.graph.node.remove(n)


def agreement(reference: np.ndarray, logits: np.ndarray) -> float:
    return float(np.mean(reference.argmax(1) == logits.argmax(1)))


def search(
    quantized_all: onnx.ModelProto,
    groups: Sequence[Group],
    run: Callable[[onnx.ModelProto], np.ndarray],
    reference: np.ndarray,
    min_agreement: float = SEARCH_MIN_AGREEMENT,
) -> SearchResult:
    """The groups to keep in float: the fewest multiply-accumulates kept in float (greedy by error removed per
    MAC, the shortest passing prefix found by bisection) with which `run` (the quantized graph on the runtime it
    is for, on the search images) agrees with `reference` (fp32 logits on the same images)."""
    started = time.perf_counter()

    def error(logits: np.ndarray) -> float:
        return float(np.mean((logits - reference) ** 2))

    base = run(quantized_all)
    evaluations = 1
    base_error, base_agreement = error(base), agreement(reference, base)
    kept: list[Group] = []
    sensitivity: dict[str, float] = {}
    best = base
    if base_agreement < min_agreement:
        for g in groups:
            sensitivity[g.name] = base_error - error(run(without_activation_quantizers(quantized_all, g.nodes)))
            evaluations += 1
        order = sorted((g for g in groups if sensitivity[g.name] > 0),
                       key=lambda g: -sensitivity[g.name] / max(g.macs, 1))
        order += [g for g in groups if sensitivity[g.name] <= 0]  # last resort: everything back to float
        # The shortest prefix of `order` that passes, by bisection: agreement grows (nearly) monotonically as more
        # groups go back to float, and bisection needs log2(groups) evaluations instead of up to one per group.
        found: np.ndarray | None = None
        low, high = 0, len(order)  # taken as passing: every group back in float
        while low < high:
            middle = (low + high) // 2
            logits = run(without_activation_quantizers(quantized_all, [n for g in order[:middle] for n in g.nodes]))
            evaluations += 1
            logger.info("int8 search: %d group(s) back in float: agreement %.4f", middle, agreement(reference, logits))
            if agreement(reference, logits) >= min_agreement:
                high, found = middle, logits
            else:
                low = middle + 1
        kept = order[:high]
        if found is None:  # no prefix short of all of them was tried and passed: measure all of them back in float
            found = run(without_activation_quantizers(quantized_all, [n for g in kept for n in g.nodes]))
            evaluations += 1
        best = found
    total = sum(g.macs for g in groups)
    return SearchResult(
        kept_fp32=[g.name for g in kept], kept_nodes=[n for g in kept for n in g.nodes],
        agreement=agreement(reference, best), agreement_all_quantized=base_agreement,
        quantized_macs_share=1.0 - sum(g.macs for g in kept) / total if total else 0.0,
        evaluations=evaluations, seconds=time.perf_counter() - started, images=len(reference),
        sensitivity={k: round(v, 6) for k, v in sensitivity.items()},
    )
