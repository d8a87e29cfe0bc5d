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

# What `vitdeploy web`'s static folder shares with the web runtime: the page's files, the browser toolchain that
# fetches onnxruntime-web, and the checks a file must pass to run in a browser (the folder imports no runtime module).
from vitdeploy.runtimes.web import toolchain as web_toolchain  # noqa: E402
from vitdeploy.runtimes.web.limits import ASSETS as WEB_ASSETS  # noqa: E402
from vitdeploy.runtimes.web.limits import check_variant as check_web_variant  # noqa: E402
from vitdeploy.runtimes.web.limits import check_web_file, check_web_size  # noqa: E402

__all__ = [
    "RUNTIMES", "Description", "Machine", "PrecisionError", "RuntimeOffer", "RuntimeSpec", "RuntimeStatus", "Session",
    "TensorSpec", "assume", "export_record", "foreign_setting", "install_command", "installed_runtimes", "open_runtime",
    "open_to_read", "parse_runtimes", "read_model_info", "runtime_for_file", "runtime_spec", "runtime_specs",
    "runtime_status", "select_runtimes", "short_provider_name", "this_machine", "WEB_ASSETS", "check_web_file",
    "check_web_size", "check_web_variant", "web_toolchain",
]
