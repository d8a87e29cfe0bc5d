"""Export a model bundle to one self-describing, parity-checked ONNX file.

    bundle -> exporter (TorchScript or dynamo; dynamic batch axis) -> metadata_props -> onnx.checker
           -> staged file -> parity check against PyTorch (verify.export_parity), which also finds the tensors
              holding each block's output -> their names recorded -> moved into place

Two exporters, one guarantee (dynamic batch, one file under 2 GB, metadata, parity, per-block report):
  - "torchscript": torch.onnx.export(dynamo=False). Deprecated since torch 2.9 and announced for removal with
    TorchScript; where a torch no longer ships it, the default falls back to dynamo with one line saying so.
  - "dynamo": torch.onnx.export(dynamo=True) with `dynamic_shapes` keyed by forward's argument name. It exports
    opset 18 natively and converts down to 17; below 17 its converter silently leaves 18 (measured, torch 2.13),
    so 17 is its lowest opset here.
The default is chosen by measurement on ViT-Ti/16 (benchmarks/exporters.md: export time, nodes, ORT fusions,
parity). The per-block report does not depend on either exporter's node names: the tensors are found by value.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitdeploy.core.atomic import reported_as
from vitdeploy.core.strict_json import record
from vitdeploy.errors import ConfigError
from vitdeploy.files.bundle import BundleInfo, load_bundle, sha256_bytes
from vitdeploy.files.discovery import find_latest_bundle
from vitdeploy.files.onnx_file import (
    DEFAULT_FILE_NAME,
    INPUT_NAME,
    META_EXPORT,
    META_INTERMEDIATES,
    META_LABELS,
    META_METRICS,
    META_MODEL_CONFIG,
    META_PARITY,
    META_PREPROCESS,
    OUTPUT_NAME,
    save_onnx,
    set_metadata,
)
from vitdeploy.files.outputs import check_output_file
from vitdeploy.requests import ExportRequest
from vitdeploy.runtimes import open_runtime

if TYPE_CHECKING:
    from vitdeploy.exporting.gate import AccuracyGate
    from vitdeploy.exporting.ladder import VariantResult
    from vitdeploy.verification.parity import ParityReport

logger = logging.getLogger(__name__)

DEFAULT_OPSET = ExportRequest.opset
EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"
EXPORTER_CALLS = {"torchscript": "torch.onnx.export(dynamo=False)", "dynamo": "torch.onnx.export(dynamo=True)"}
# Measured with this model: opset 7 has no Expand for the cls token, opset 8 no ConstantOfShape; 9 and up export.
TORCHSCRIPT_MIN_OPSET = 9
# Measured (torch 2.13): dynamo exports 18 and converts down to 17; asked for 16 or less it silently returns 18.
DYNAMO_MIN_OPSET = 17
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
    auto: list[str] = field(default_factory=list)  # variants --precision auto chose: failing the gate is no failure
    skipped: dict[str, str] = field(default_factory=dict)  # --precision auto: variant -> why not here, what would
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """The variants named explicitly that failed their accuracy gate (not written); parity failing writes
        nothing and raises. One --precision auto chose is not a failure: auto asks for those that pass."""
        return [gate_failure(v) for v in self.variants if not v.written and v.variant not in self.auto]

    def auto_not_written(self) -> list[str]:
        """The variants --precision auto built that failed their gate: named (not written), not failures."""
        return [gate_failure(v) for v in self.variants if not v.written and v.variant in self.auto]

    @property
    def passed(self) -> bool:
        return not self.failures()

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **record(self, export_seconds=round(self.export_seconds, 3),
                                                 verify_seconds=round(self.verify_seconds, 3))}


def gate_failure(result: VariantResult) -> str:
    return (f"accuracy gate failed: {result.variant}: {', '.join(result.gate.failures())}: {result.path.name} "
            "not written")


@functools.cache
def onnxruntime_max_opset() -> int:
    """The newest default-domain opset this onnxruntime loads, found by asking it (one tiny session per try)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "opset_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    for opset in range(onnx.defs.onnx_opset_version(), 0, -1):
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        try:
            open_runtime("ort", probe.SerializeToString(), "cpu").close()
        except Exception:  # ORT's "opset not supported" has no narrower type; any failure means "not this one"
            continue
        return opset
    return 0


def torchscript_exporter_available() -> bool:
    """Whether this torch still ships the TorchScript-based exporter (deprecated since torch 2.9)."""
    return importlib.util.find_spec("torch.onnx._internal.torchscript_exporter") is not None


def resolve_exporter(requested: str | None) -> str:
    """The exporter to use: the requested one, or the default (dynamo, said in one line, where TorchScript's is gone).

    An explicitly requested TorchScript exporter that this torch no longer has is a usage error.
    """
    import torch

    if requested is not None and requested not in EXPORTERS:
        raise ConfigError(f"unknown exporter {requested!r}; choose one of: {', '.join(EXPORTERS)}")
    exporter = requested or DEFAULT_EXPORTER
    if exporter == "torchscript" and not torchscript_exporter_available():
        if requested:
            raise ConfigError(f"--exporter torchscript: torch {torch.__version__} no longer has the TorchScript-based "
                              "ONNX exporter; use --exporter dynamo")
        logger.info("torch %s has no TorchScript-based ONNX exporter: exporting with dynamo", torch.__version__)
        exporter = "dynamo"
    return exporter


def supported_opsets(exporter: str = DEFAULT_EXPORTER) -> range:
    """Opsets that the exporter, this model and the installed onnxruntime all handle."""
    from torch.onnx import _constants  # private, but the only place torch states its exporters' ranges

    if exporter == "torchscript":
        low = max(TORCHSCRIPT_MIN_OPSET, _constants.ONNX_MIN_OPSET)
        high = _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    else:
        low, high = DYNAMO_MIN_OPSET, _constants.ONNX_MAX_OPSET
    return range(low, min(high, onnxruntime_max_opset()) + 1)


def check_opset(opset: int, exporter: str = DEFAULT_EXPORTER) -> None:
    supported = supported_opsets(exporter)
    if opset not in supported:
        raise ConfigError(
            f"opset {opset} is not supported here with the {exporter} exporter: choose "
            f"{supported.start}..{supported.stop - 1} (the range that it, this model and onnxruntime all handle)"
        )


def export(request: ExportRequest) -> ExportResult:
    """`vitdeploy export`: the file, then the variants asked for, each judged by the accuracy gate."""
    from vitdeploy.exporting.gate import AccuracyGate
    from vitdeploy.exporting.ladder import parse_precisions, resolve_variants

    variants, result_auto, skipped = resolve_variants(parse_precisions(request.precision), request.optimize,
                                                      request.image_input)
    if request.tome_r is not None and not any("tome" in name for name in variants):
        raise ConfigError("--tome-r sets the token merging variants: add --precision tome (or tome-int8)")
    if request.image_layout != ExportRequest.image_layout and not request.image_input:
        raise ConfigError(f"--image-layout {request.image_layout} sets model.image.onnx's input: add --image-input")
    result = export_onnx(request.bundle, request.out, request.opset, request.verify, variants,
                         AccuracyGate(max_accuracy_drop=request.max_accuracy_drop), request.int8_method,
                         request.exporter, request.tome_r, request.image_layout)
    result.auto, result.skipped = result_auto, skipped
    return result


def export_onnx(
    bundle: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    opset: int = ExportRequest.opset,
    verify: bool = ExportRequest.verify,
    variants: Sequence[str] = (),
    gate: AccuracyGate | None = None,
    int8_method: str = ExportRequest.int8_method,
    exporter: str | None = None,
    tome_r: int | None = ExportRequest.tome_r,
    image_layout: str = ExportRequest.image_layout,
) -> ExportResult:
    """Export a bundle (default: the latest under models/) to `out` (default: BUNDLE/model.onnx).

    `exporter`: "torchscript" or "dynamo" (None: the default, falling back to dynamo where TorchScript's is gone).
    `variants` (precision.requested_variants: fp32-opt, fp16, int8, ov-bf16, ov-int8) are then built from that file
    and written beside it (model.int8.onnx, ...) only if they pass the accuracy gate on the runtime each is
    for; the result's `passed` is False when one does not (the others are written). `tome_r`: tokens merged per
    block by the token merging variants (tome, tome-int8); None: searched. `image_layout`: the raw-image
    variant's input, nhwc or nchw (uint8 either way).
    """
    exporter = resolve_exporter(exporter)
    check_opset(opset, exporter)  # before loading anything: a bad opset is a usage error
    bundle_dir = Path(bundle) if bundle is not None else find_latest_bundle()
    model, info = load_bundle(bundle_dir)
    if variants:
        from vitdeploy.exporting.gate import AccuracyGate
        from vitdeploy.exporting.ladder import check_request, export_variants, gate_data_for

        check_request(variants, int8_method, tome_r, image_layout)  # usage errors, before anything is written
        data = gate_data_for(model, info, variants)
    result = export_model(model, info, Path(out) if out else bundle_dir / DEFAULT_FILE_NAME, opset, verify,
                          bundle_dir, exporter)
    if variants:
        # A variant failing its gate is a result, not an error: it is not written, the others are (result.passed).
        def export_again(changed: Any, path: Path, verify_it: bool) -> ExportResult:  # token merging's variants
            return export_model(changed, info, path, opset, verify_it, bundle_dir, exporter)

        result.variants = export_variants(model, info, result.path, variants, gate or AccuracyGate(), data,
                                          int8_method, export=export_again, tome_r=tome_r,
                                          image_layout=image_layout)
    return result


def export_model(
    model: Any,
    info: BundleInfo,
    out: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    verify: bool = ExportRequest.verify,
    bundle_dir: Path | None = None,
    exporter: str = DEFAULT_EXPORTER,
) -> ExportResult:
    """Export an in-memory model; the file appears at `out` only once it passed the checker and, by default, parity.

    Raises errors.ParityError (exit code 3) when parity fails; nothing new is then left at `out`.
    """
    import onnx

    check_opset(opset, exporter)
    out = check_output_file(out)  # a folder there, a file on the way, an unwritable place: exit 2
    model = getattr(model, "module", model).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Stage beside the destination so that the final moves are renames on one filesystem. A full disk is one line
    # naming the file (exit 2); the staging folder goes with the exception, so nothing is left behind.
    with reported_as(out), tempfile.TemporaryDirectory(prefix=".vitdeploy-export-", dir=out.parent) as staging_dir:
        staging = Path(staging_dir)
        proto = run_exporter(exporter, model, info, opset)
        facts = _export_facts(model, opset, exporter, bundle_dir)
        set_metadata(
            proto,
            {
                META_LABELS: list(info.labels),
                META_PREPROCESS: info.preprocess.to_dict(),
                META_MODEL_CONFIG: info.model.to_dict(),
                META_EXPORT: facts,
                META_METRICS: info.metrics,
            },
        )
        staged = staging / out.name
        external = save_onnx(proto, staged)
        onnx.checker.check_model(os.fspath(staged), full_check=True)
        export_seconds = time.perf_counter() - started

        parity = None
        if verify:
            from vitdeploy.errors import ParityError
            from vitdeploy.verification.run import export_parity

            parity = export_parity(model, info, staged)
            if not parity.passed:
                raise ParityError(parity, f"nothing written to {out}")
            # Only metadata changes after the parity run: the graph and weights on disk are the ones verified.
            set_metadata(proto, {META_PARITY: parity.summary(), META_INTERMEDIATES: parity.located})
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
        exporter=exporter,
        num_nodes=len(proto.graph.node),
        size_bytes=size,
        external_data=final_external,
        weights_sha256=facts["weights_sha256"],
        export_seconds=export_seconds,
        verify_seconds=verify_seconds,
        parity=parity,
    )


def run_exporter(exporter: str, model: Any, info: BundleInfo, opset: int) -> Any:
    """Trace `model` with a symbolic batch axis; return the ModelProto (weights included)."""
    import torch

    size = info.model.image_size
    example = torch.zeros(TRACE_BATCH, info.model.in_channels, size, size)
    with _quiet_exporter(), tempfile.TemporaryDirectory(prefix="vitdeploy-trace-") as tmp:
        if exporter == "dynamo":
            return _export_dynamo(model, example, opset)
        return _export_torchscript(model, example, opset, Path(tmp) / "trace.onnx")


def _export_torchscript(model: Any, example: Any, opset: int, path: Path) -> Any:
    import onnx
    import torch

    torch.onnx.export(
        model,
        (example,),
        os.fspath(path),
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=True,
    )
    return onnx.load(os.fspath(path))


def _export_dynamo(model: Any, example: Any, opset: int) -> Any:
    import torch

    # NOTE: dynamic_shapes is keyed by the name of forward's argument, not by the ONNX input name.
    argument = next(iter(inspect.signature(model.forward).parameters))
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={argument: {0: torch.export.Dim("batch")}},
        optimize=True,
    )
    proto = program.model_proto
    exported = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if exported != opset:  # the version converter gave up (it does below 17): never ship another opset silently
        raise ConfigError(f"the dynamo exporter produced opset {exported}, not the requested {opset}")
    return proto


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporters' deprecation warnings, progress prints (on stdout, which --json keeps clean) and log lines."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _export_facts(model: Any, opset: int, exporter: str, bundle_dir: Path | None) -> dict[str, Any]:
    from vitdeploy.core.provenance import git_commit, now_iso, package_versions

    return {
        "opset": opset,
        "exporter": EXPORTER_CALLS[exporter],
        "precision": PRECISION,
        "weights_sha256": weights_sha256(model),
        "bundle": str(bundle_dir.resolve()) if bundle_dir else None,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "created_at": now_iso(),
    }


def weights_sha256(model: Any) -> str:
    """sha256 of the weights serialized exactly as bundle.save_bundle writes model.safetensors.

    So an export of an unchanged bundle records the same hash as the bundle's config.json.
    """
    from safetensors.torch import save as safetensors_save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return sha256_bytes(safetensors_save(tensors, metadata={"format": "pt"}))
