"""Runtimes: one interface (base.Session) to open an .onnx file and run a batch, one module per runtime.

    base.py       Session, Description (runtime, device, provider, precision), the input contract
    ort.py        ONNX Runtime: CPU, CUDA, TensorRT, each used only when a session really gets it
    openvino.py   OpenVINO: CPU (GPU, NPU where present), f32 pinned unless another precision is named
    reference.py  onnx.reference.ReferenceEvaluator: the slow pure-Python oracle
    registry.py   which runtimes are installed and usable (and why not); open_runtime()
"""

from vitdeploy.errors import PrecisionError
from vitdeploy.runtimes.base import Description, Session, TensorSpec, export_record
from vitdeploy.runtimes.registry import (
    RUNTIMES,
    RuntimeStatus,
    install_command,
    installed_runtimes,
    open_runtime,
    parse_runtimes,
    runtime_status,
    select_runtimes,
)

__all__ = [
    "RUNTIMES", "Description", "PrecisionError", "RuntimeStatus", "Session", "TensorSpec", "export_record",
    "install_command", "installed_runtimes", "open_runtime", "parse_runtimes", "runtime_status", "select_runtimes",
]
