"""Per-block localisation: which of a ViT's intermediates (embeddings, each block's output, the final norm) an ONNX
graph still computes as PyTorch does, on one runtime, so that a parity failure names the first block that diverged.

Which ONNX tensor holds which intermediate is found by value, not by name: at export, every rank-3 float tensor
of the graph is exposed and each PyTorch intermediate is matched, in execution order, to the first tensor equal to
it within tolerance. That works for any exporter (the TorchScript exporter's module-scoped node names and dynamo's
are different, and neither is a contract); the names found are recorded in the file, so `verify` later compares
the same tensors, and a block whose output no longer matches is the block that diverged. The tensors are exposed
as extra outputs of a copy of the graph, never of the file itself.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdeploy.errors import ModelFileError
from vitdeploy.files.onnx_file import OUTPUT_NAME, uses_external_data

if TYPE_CHECKING:
    from vitdeploy.runtimes import Session

NOT_FOUND = "(no tensor matches)"


@dataclass
class LayerDiff:
    """One named intermediate (embed, block_i, norm, logits) on one provider."""

    name: str
    tensor: str
    max_abs: float
    tolerance: float
    passed: bool



def compare_intermediates(
    model: Any, onnx_path: Path, inputs: np.ndarray, intermediates: dict[str, str] | None, atol: float,
    open_copy: Callable[[str | bytes], Session],
) -> list[LayerDiff]:
    """Compare each of forward_with_intermediates()'s values with the ONNX tensor that holds it, in execution order.

    With `intermediates` None, every rank-3 float tensor of the graph is a candidate, and each intermediate takes
    the first candidate after the previous match that equals it within tolerance; one that none matches is a
    failed LayerDiff with its closest candidate's difference. Intermediates are compared at their own scale
    (atol * max(1, max|value|)): the residual stream of a trained ViT grows well beyond the logits' range, and
    fp32 rounding grows with it.
    """
    import torch

    with torch.inference_mode():
        _, named = model.forward_with_intermediates(torch.from_numpy(inputs))
    cfg = model.cfg
    candidates = _token_tensors(onnx_path, cfg.num_patches + 1, cfg.dim) if intermediates is None else [
        t for name, t in intermediates.items() if name in named]
    outputs = _run_with_outputs(onnx_path, inputs, candidates, open_copy)
    diffs, start = [], 0
    for name, value in named.items():  # execution order: embed, block_0.., norm, logits
        reference = value.float().numpy()
        allowed = atol * (1.0 if name == "logits" else max(1.0, float(np.abs(reference).max())))
        if name == "logits":
            tensor, max_abs = OUTPUT_NAME, _max_abs(outputs[OUTPUT_NAME], reference)
        elif intermediates is not None:
            if name not in intermediates:
                continue
            tensor = intermediates[name]
            max_abs = _max_abs(outputs[tensor], reference)
            if outputs[tensor].shape != reference.shape:
                raise ModelFileError(
                    f"{onnx_path}: recorded intermediate {name!r} ({tensor}) has shape {outputs[tensor].shape}, "
                    f"PyTorch's has {reference.shape}: the file's metadata does not match its graph")
        else:
            scores = [_max_abs(outputs[t], reference) for t in candidates[start:]]
            hit = next((i for i, d in enumerate(scores) if d <= allowed), None)
            if hit is None:
                tensor, max_abs = NOT_FOUND, min(scores, default=float("inf"))
            else:
                tensor, max_abs, start = candidates[start + hit], scores[hit], start + hit + 1
        diffs.append(LayerDiff(name, tensor, max_abs, allowed, max_abs <= allowed))
    return diffs


def _max_abs(got: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(got - reference).max()) if got.shape == reference.shape else float("inf")


def _token_tensors(onnx_path: Path, tokens: int, width: int) -> list[str]:
    """Float tensors shaped (batch, tokens, width) computed by the graph, in topological order: where the
    embeddings, every block's output and the final norm can live (a rank or dimension that shape inference left
    unknown is taken to fit)."""
    import onnx

    proto = onnx.load(os.fspath(onnx_path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type for v in [*inferred.value_info, *inferred.output]}

    def fits(name: str) -> bool:
        if name not in types or types[name].elem_type != onnx.TensorProto.FLOAT:
            return False
        if not types[name].HasField("shape"):  # rank unknown (older opsets defeat shape inference)
            return True
        dims = types[name].shape.dim
        return len(dims) == 3 and all(not d.HasField("dim_value") or d.dim_value == n
                                      for d, n in zip(dims[1:], (tokens, width)))

    return [name for node in proto.graph.node for name in node.output if fits(name)]


def _run_with_outputs(onnx_path: Path, inputs: np.ndarray, tensors: list[str],
                      open_copy: Callable[[str | bytes], Session]) -> dict[str, np.ndarray]:
    """Run a copy of the model (never the file itself) with `tensors` added as graph outputs, opened by
    `open_copy` (a path beside the original, or the serialized copy) on the runtime being checked."""
    import onnx

    proto = onnx.load(os.fspath(onnx_path), load_external_data=False)
    existing = {o.name for o in proto.graph.output}
    for name in tensors:
        if name not in existing:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    names = [OUTPUT_NAME, *[t for t in tensors if t != OUTPUT_NAME]]
    def run(model: str | bytes) -> dict[str, np.ndarray]:
        with open_copy(model) as session:
            return session.run_outputs(inputs, names)

    if not uses_external_data(proto):
        return run(proto.SerializeToString())
    # External data is resolved relative to the model file, so the copy must sit beside the original.
    fd, copy_path = tempfile.mkstemp(prefix=".vitdeploy-verify-", suffix=".onnx", dir=onnx_path.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, copy_path)
        return run(copy_path)
    finally:
        os.unlink(copy_path)
