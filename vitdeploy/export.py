"""Export a model bundle to one self-describing, parity-checked ONNX file.

    bundle -> torch.onnx.export (TorchScript exporter, dynamic batch) -> metadata_props -> onnx.checker
           -> staged file -> parity check against PyTorch (verify.check_parity) -> moved into place

Exporter choice (measured on the shared 2-core CPU, torch 2.13, ViT-Ti/16, opset 17, interleaved runs): the
TorchScript exporter (dynamo=False) was 3-9x faster than dynamo=True (2.4-2.8 s vs 8.7-14.2 s; 3.7-6.6 s vs
26-37 s under heavier load), with the same parity (max |diff| 9.5e-7 vs 9.6e-7 at batch 7, traced at batch 2).
dynamo's raw graph is smaller (407 nodes vs 1065), but the difference is Constant/Identity/shape arithmetic
that ONNX Runtime folds at load (417 vs 394 nodes after ORT's optimizer).
TorchScript also names every node after its module (/blocks.3/mlp/fc1/MatMul), which is what lets verify expose
each block's output and say which block diverges; dynamo's nodes carry no module path.
NOTE: torch >= 2.9 warns that this exporter is deprecated; moving to dynamo needs another way to find the
intermediates (e.g. matching tensors numerically), and the tests pin the behaviour either way.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitdeploy.checkpoint import BundleInfo, find_latest_bundle, load_bundle, sha256_bytes
from vitdeploy.errors import ConfigError
from vitdeploy.runtime import (
    INPUT_NAME,
    META_EXPORT,
    META_INTERMEDIATES,
    META_LABELS,
    META_METRICS,
    META_MODEL_CONFIG,
    META_PARITY,
    META_PREPROCESS,
    OUTPUT_NAME,
)

if TYPE_CHECKING:
    from vitdeploy.optimize import AccuracyGate, VariantResult
    from vitdeploy.verify import ParityReport

DEFAULT_OPSET = 17
DEFAULT_FILE_NAME = "model.onnx"
EXPORTER = "torch.onnx.export(dynamo=False)"
# Measured with this model: opset 7 has no Expand for the cls token, opset 8 no ConstantOfShape; 9 and up export.
MODEL_MIN_OPSET = 9
# Protobuf cannot serialize a message over 2 GiB: above that the weights go to one external data file.
EXTERNAL_DATA_THRESHOLD_BYTES = 2**31 - 1
# A batch of 2 for tracing: batch 1 invites exporters to specialise the batch dimension away.
TRACE_BATCH = 2
PRECISION = "fp32"


@dataclass
class ExportResult:
    path: Path
    opset: int
    exporter: str
    num_nodes: int
    size_bytes: int  # the .onnx plus its external data file, if any
    external_data: Path | None
    weights_sha256: str
    export_seconds: float  # trace + metadata + checker + save
    verify_seconds: float
    parity: ParityReport | None  # None with verify=False
    variants: list[VariantResult] = field(default_factory=list)  # fused / fp16 / int8 files, when asked for

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "opset": self.opset,
            "exporter": self.exporter,
            "num_nodes": self.num_nodes,
            "size_bytes": self.size_bytes,
            "external_data": str(self.external_data) if self.external_data else None,
            "weights_sha256": self.weights_sha256,
            "export_seconds": round(self.export_seconds, 3),
            "verify_seconds": round(self.verify_seconds, 3),
            "parity": self.parity.to_dict() if self.parity else None,
            "variants": [v.to_dict() for v in self.variants],
        }


@functools.cache
def onnxruntime_max_opset() -> int:
    """The newest default-domain opset this onnxruntime loads, found by asking it (one tiny session per try)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from vitdeploy.runtime import CPU

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "opset_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    for opset in range(onnx.defs.onnx_opset_version(), 0, -1):
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=[CPU])
        except Exception:  # ORT's "opset not supported" has no narrower type; any failure means "not this one"
            continue
        return opset
    return 0


def supported_opsets() -> range:
    """Opsets that the installed TorchScript exporter, this model and onnxruntime all handle."""
    from torch.onnx import _constants  # private, but the only place torch states its exporter's range

    low = max(MODEL_MIN_OPSET, _constants.ONNX_MIN_OPSET)
    high = min(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET, onnxruntime_max_opset())
    return range(low, high + 1)


def check_opset(opset: int) -> None:
    supported = supported_opsets()
    if opset not in supported:
        raise ConfigError(
            f"opset {opset} is not supported here: choose {supported.start}..{supported.stop - 1} "
            f"(the range that torch's exporter, this model and onnxruntime all handle)"
        )


def export_onnx(
    bundle: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    variants: Sequence[str] = (),
    gate: AccuracyGate | None = None,
    int8_method: str = "static",
) -> ExportResult:
    """Export a bundle (default: the latest under models/) to `out` (default: BUNDLE/model.onnx).

    `variants` (optimize.requested_variants: fp32-opt, fp16, int8) are then built from that file and written
    beside it (model.int8.onnx, ...) only if they pass the accuracy gate; optimize.AccuracyGateFailed (exit 3)
    when one does not.
    """
    check_opset(opset)  # before loading anything: a bad opset is a usage error
    bundle_dir = Path(bundle) if bundle is not None else find_latest_bundle()
    model, info = load_bundle(bundle_dir)
    if variants:
        from vitdeploy.optimize import AccuracyGate, AccuracyGateFailed, check_request, export_variants, gate_data

        check_request(variants, int8_method)  # usage errors, and no held-out images, before anything is written
        data = gate_data(model, info)
    result = export_model(model, info, Path(out) if out else bundle_dir / DEFAULT_FILE_NAME, opset, verify, bundle_dir)
    if variants:
        try:
            result.variants = export_variants(
                model, info, result.path, variants, gate or AccuracyGate(), data, int8_method
            )
        except AccuracyGateFailed as e:
            result.variants = e.results
            e.export = result
            raise
    return result


def export_model(
    model: Any,
    info: BundleInfo,
    out: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    bundle_dir: Path | None = None,
) -> ExportResult:
    """Export an in-memory model; the file appears at `out` only once it passed the checker and, by default, parity.

    Raises verify.ParityError (exit code 3) when parity fails; nothing new is then left at `out`.
    """
    import onnx

    check_opset(opset)
    out = Path(out)
    model = getattr(model, "module", model).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Stage beside the destination so that the final moves are renames on one filesystem.
    with tempfile.TemporaryDirectory(prefix=".vitdeploy-export-", dir=out.parent) as staging_dir:
        staging = Path(staging_dir)
        proto = _trace(model, info, opset, staging / "trace.onnx")
        intermediates = find_intermediates(proto.graph, info.model.depth)
        facts = _export_facts(model, opset, bundle_dir)
        set_metadata(
            proto,
            {
                META_LABELS: list(info.labels),
                META_PREPROCESS: info.preprocess.to_dict(),
                META_MODEL_CONFIG: info.model.to_dict(),
                META_EXPORT: facts,
                META_METRICS: info.metrics,
                META_INTERMEDIATES: intermediates,
            },
        )
        staged = staging / out.name
        external = save_onnx(proto, staged)
        onnx.checker.check_model(str(staged), full_check=True)
        export_seconds = time.perf_counter() - started

        parity = None
        if verify:
            from vitdeploy import verify as verify_module

            parity = verify_module.export_parity(model, info, staged)
            if not parity.passed:
                raise verify_module.ParityError(parity, f"nothing written to {out}")
            # Only metadata changes after the parity run: the graph and weights on disk are the ones verified.
            set_metadata(proto, {META_PARITY: parity.summary()})
            save_onnx(proto, staged)
        verify_seconds = time.perf_counter() - started - export_seconds

        final_external = out.parent / external.name if external else None
        if external:
            os.replace(staging / external.name, final_external)
        os.replace(staged, out)
    size = out.stat().st_size + (final_external.stat().st_size if final_external else 0)
    return ExportResult(
        path=out,
        opset=opset,
        exporter=EXPORTER,
        num_nodes=len(proto.graph.node),
        size_bytes=size,
        external_data=final_external,
        weights_sha256=facts["weights_sha256"],
        export_seconds=export_seconds,
        verify_seconds=verify_seconds,
        parity=parity,
    )


def _trace(model: Any, info: BundleInfo, opset: int, path: Path) -> Any:
    """Run the TorchScript exporter with a symbolic batch axis and return the ModelProto (weights loaded)."""
    import onnx
    import torch

    size = info.model.image_size
    example = torch.zeros(TRACE_BATCH, info.model.in_channels, size, size)
    with warnings.catch_warnings():
        # torch >= 2.9 warns that this exporter is deprecated in favour of dynamo (see the module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    return onnx.load(str(path))


def save_onnx(proto: Any, path: Path) -> Path | None:
    """Save one self-contained file, or the graph plus one external data file when the weights need it."""
    import onnx

    if proto.ByteSize() <= EXTERNAL_DATA_THRESHOLD_BYTES:
        onnx.save_model(proto, str(path))
        return None
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # the second save (with parity metadata) would append to the first one's data
    # convert_attribute=False and a copy: save_model with external data rewrites the tensors it is given.
    onnx.save_model(
        _copy(proto), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=data.name, size_threshold=1024,
    )
    return data


def _copy(proto: Any) -> Any:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def _export_facts(model: Any, opset: int, bundle_dir: Path | None) -> dict[str, Any]:
    from vitdeploy.provenance import git_commit, now_iso, package_versions

    return {
        "opset": opset,
        "exporter": EXPORTER,
        "precision": PRECISION,
        "weights_sha256": weights_sha256(model),
        "bundle": str(bundle_dir.resolve()) if bundle_dir else None,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "created_at": now_iso(),
    }


def weights_sha256(model: Any) -> str:
    """sha256 of the weights serialized exactly as checkpoint.save_bundle writes model.safetensors.

    So an export of an unchanged bundle records the same hash as the bundle's config.json.
    """
    from safetensors.torch import save as safetensors_save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return sha256_bytes(safetensors_save(tensors, metadata={"format": "pt"}))


def set_metadata(proto: Any, values: dict[str, Any]) -> None:
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({key: json.dumps(value) for key, value in values.items()})
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)


def find_intermediates(graph: Any, depth: int) -> dict[str, str]:
    """Map 'embed', 'block_{i}' and 'norm' to the ONNX tensors holding VisionTransformer.forward_with_intermediates'
    values, from the module scopes that the TorchScript exporter puts in node names (/blocks.3/mlp/fc1/MatMul).

    A module's output is the one activation (a tensor computed from the input image) produced inside its scope and
    read outside it; 'embed' is the activation entering blocks.0. Names not found unambiguously are left out, and
    the parity check at export compares every recorded tensor with PyTorch, so a wrong mapping cannot pass.
    """
    activations = _activations(graph)
    consumers_outside: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers_outside.setdefault(name, set()).add(node.name)
    graph_outputs = {o.name for o in graph.output}

    def produced_in(scope: str) -> list[str]:
        return [t for n in graph.node if n.name.startswith(scope) for t in n.output]

    def read_outside(tensor: str, scope: str) -> bool:
        readers = consumers_outside.get(tensor, set())
        return tensor in graph_outputs or any(not r.startswith(scope) for r in readers)

    def exit_of(scope: str) -> str | None:
        exits = {t for t in produced_in(scope) if t in activations and read_outside(t, scope)}
        return exits.pop() if len(exits) == 1 else None

    found: dict[str, str | None] = {}
    first = "/blocks.0/"
    inside_first = set(produced_in(first))
    entering = {
        t for n in graph.node if n.name.startswith(first) for t in n.input if t in activations and t not in inside_first
    }
    found["embed"] = entering.pop() if len(entering) == 1 else None
    for i in range(depth):
        found[f"block_{i}"] = exit_of(f"/blocks.{i}/")
    found["norm"] = exit_of("/norm/")
    return {name: tensor for name, tensor in found.items() if tensor}


def _activations(graph: Any) -> set[str]:
    """Tensors computed from the input image (excluding shape arithmetic that only reads its size)."""
    live = {INPUT_NAME}
    for node in graph.node:  # ONNX graphs are stored in topological order
        if node.op_type != "Shape" and any(name in live for name in node.input):
            live.update(node.output)
    return live
