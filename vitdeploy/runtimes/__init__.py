"""Runtimes: one interface (base.Session) to open an .onnx file and run a batch, one module per runtime, each
declaring itself (base.RuntimeSpec), and the machine record every decision about what can run here reads.

    base.py          Session (a context manager), Description, SessionOptions, RuntimeSpec, RuntimeOffer
    machine.py       Machine: the CPU's ISA class and flags, the OS, what each runtime offers here
    registry.py      RUNTIME_MODULES, this_machine() (probed once), open_runtime(), the file -> runtime rule
    ort.py           ONNX Runtime: CPU, CUDA, TensorRT, each used only when a session really gets it
    openvino.py      OpenVINO: CPU (GPU, NPU where present), f32 pinned unless another precision is named
    reference.py     onnx.reference.ReferenceEvaluator: the slow pure-Python oracle
    web/session.py   onnxruntime-web in headless Chromium (only when named)

Everything outside this package uses what this file exports, never a runtime module.
"""

from vitdeploy.errors import PrecisionError
from vitdeploy.runtimes.base import (
    Description,
    RuntimeOffer,
    RuntimeSpec,
    Session,
    TensorSpec,
    export_record,
    short_provider_name,
)
from vitdeploy.runtimes.machine import Machine
from vitdeploy.runtimes.registry import (
    RUNTIMES,
    RuntimeStatus,
    assume,
    foreign_setting,
    install_command,
    installed_runtimes,
    open_runtime,
    open_to_read,
    parse_runtimes,
    read_model_info,
    runtime_for_file,
    runtime_spec,
    runtime_specs,
    runtime_status,
    select_runtimes,
    this_machine,
)

__all__ = [
    "RUNTIMES", "Description", "Machine", "PrecisionError", "RuntimeOffer", "RuntimeSpec", "RuntimeStatus",
    "Session", "TensorSpec", "assume", "export_record", "foreign_setting", "install_command", "installed_runtimes", "open_runtime",
    "open_to_read", "parse_runtimes", "read_model_info", "runtime_for_file", "runtime_spec", "runtime_specs",
    "runtime_status", "select_runtimes", "short_provider_name", "this_machine",
]
