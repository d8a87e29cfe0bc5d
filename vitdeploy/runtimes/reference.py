"""The ONNX reference implementation (onnx.reference.ReferenceEvaluator) as a runtime: a slow oracle.

It computes each op as the ONNX specification states it, in numpy, one node at a time, and shares no kernel with
ONNX Runtime or OpenVINO, so agreement with them is evidence about the file rather than about one runtime. It is
slow (measured on the 2-core Xeon, quiet): 7 ms for one digits image, 0.35 s for one ViT-Ti/16 image; `verify
--runtime ort,openvino,reference` on ViT-Ti/16 took 122 s against 31 s without it. So verify runs it on fewer
samples (REFERENCE_MAX_SAMPLES) and, by default, only on models of at most DEFAULT_MAX_GMACS. It needs the `onnx`
package (the [train] extra) and runs on the CPU only, in the file's own precision.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitdeploy.errors import ConfigError, ModelFileError
from vitdeploy.runtimes import base

NAME = "reference"
DEVICES = ("auto", "cpu")
PROVIDER = "onnx.reference"
# Samples verify runs through it: enough for every batch size up to 32, and seconds, not minutes, on small models.
REFERENCE_MAX_SAMPLES = 32
# Models above this many MACs per image are left out of the default set (digits: 0.002 G; ViT-Ti/16, 1.25 G, would
# make verify 4x slower); naming the runtime runs it anyway.
DEFAULT_MAX_GMACS = 0.1
_ELEMENT_TYPES = {1: "float32", 2: "uint8", 10: "float16", 11: "float64", 16: "bfloat16"}  # onnx.TensorProto data types


# It computes every precision a file can hold exactly as the graph says (numpy): an oracle, never fast.
PRECISIONS = ("fp32", "fp16", "int8")


class ReferenceSession(base.Session):
    def __init__(self, model: base.ModelSource, device: str = "auto"):
        import onnx
        from google.protobuf.message import DecodeError
        from onnx.reference import ReferenceEvaluator

        if device not in DEVICES:
            raise ConfigError(f"the reference runtime runs on the CPU only, not {device!r}")
        self.path = None if isinstance(model, bytes) else Path(model)
        try:
            if self.path is not None:
                base.check_model_file(self.path)
                proto = onnx.load(os.fspath(self.path))  # external data beside it is read too
            else:
                proto = onnx.load_model_from_string(model)
        except DecodeError:
            raise ModelFileError(f"{self.path or 'model bytes'} is not an ONNX model (it does not parse)") from None
        try:
            self.evaluator = ReferenceEvaluator(proto)
        except RuntimeError as e:  # onnx.reference raises RuntimeError (NotImplementedError for unknown domains)
            # for an op, or an op version, it has no implementation of; the message names the op
            raise ModelFileError(f"{self.path or 'model bytes'}: the reference runtime cannot run it: "
                                 f"{_missing_op(str(e))}") from None
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        self.inputs = [_tensor(v) for v in proto.graph.input]
        self.outputs = [_tensor(v) for v in proto.graph.output]
        precision = self.graph_precision
        self.description = base.Description(NAME, "cpu", PROVIDER, precision)

    def run_outputs(self, batch: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        self.check_open()
        results = self.evaluator.run(list(names), self.feed(batch))
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(names, results)}

    def release(self) -> None:
        del self.evaluator


def _missing_op(message: str) -> str:
    """onnx.reference's refusal, shortened to the op (and version or domain) it has no implementation of."""
    versioned = re.search(r"No implementation for operator '([^']+)' domain '([^']*)' and version (\d+)", message)
    if versioned:
        op, domain, version = versioned.groups()
        return f"no implementation of op {op} (domain {domain or 'ai.onnx'}) at opset {version}"
    unknown = re.search(r"Node type '([^']+)' from domain '([^']*)' is unknown", message)
    if unknown:
        return f"no implementation of op {unknown.group(1)} (domain {unknown.group(2)})"
    return message.strip().splitlines()[0]


def _tensor(value: object) -> base.TensorSpec:
    tensor_type = value.type.tensor_type  # type: ignore[attr-defined]
    dims = (tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
            if tensor_type.HasField("shape") else None)
    elem = _ELEMENT_TYPES.get(tensor_type.elem_type, str(tensor_type.elem_type))
    return base.TensorSpec(value.name, elem, dims)  # type: ignore[attr-defined]


def _open(model: base.ModelSource, device: str, precision: str | None, options: base.SessionOptions,
          machine: object) -> ReferenceSession:
    return ReferenceSession(model, device)


def _probe() -> base.RuntimeOffer:
    import onnx

    return base.RuntimeOffer(NAME, True, True, "", ("cpu",), {"cpu": PRECISIONS}, onnx.__version__)


def _needs(device: str, precision: str) -> str:
    return f"the reference runs on the CPU only, in {', '.join(PRECISIONS)}"


SPEC = base.RuntimeSpec(
    name=NAME,
    title="the ONNX reference",
    help="onnx.reference: the ONNX specification in numpy, op by op; a slow oracle that shares no kernel with the "
         "others",
    devices=("cpu",),
    open=_open,
    probe=_probe,
    needs=_needs,
    modules=("onnx",),
    extra="train",
    parity_max_samples=REFERENCE_MAX_SAMPLES,
    default_max_gmacs=DEFAULT_MAX_GMACS,
)
