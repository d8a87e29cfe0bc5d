"""The registry: every runtime's declaration (RUNTIME_MODULES, one line each), what this machine offers them (the
record, probed once), and open_runtime(), the one way anything in vitdeploy opens a model.

    ort        ONNX Runtime: CPU, CUDA, TensorRT          pip install vitdeploy (always there)
    openvino   OpenVINO: CPU (GPU, NPU where present)     pip install "vitdeploy[openvino]"
    reference  onnx.reference, a slow pure-Python oracle  pip install "vitdeploy[train]" (the onnx package)
    web        onnxruntime-web in headless Chromium       Chromium + npm (runtimes/web/); only when named

Each runtime module declares itself (SPEC, a base.RuntimeSpec) and imports its library only when a session or its
probe needs it, so a deployment install without openvino or onnx reads every declaration and runs ORT. Nothing
outside runtimes/ imports a runtime module: it asks this one (tests/test_imports.py checks).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vitdeploy.core.config import comma_list
from vitdeploy.errors import ConfigError, DeviceError, MissingExtra
from vitdeploy.files.onnx_file import OnnxModelInfo
from vitdeploy.files.onnx_wire import metadata_props_from_bytes
from vitdeploy.runtimes.base import (
    RuntimeOffer,
    RuntimeSpec,
    Session,
    SessionOptions,
    export_record,
    note_other_isa,
)
from vitdeploy.runtimes.machine import Machine, probe

logger = logging.getLogger(__name__)

# Every runtime, in the order defaults and tables list them: one line per runtime module (its SPEC).
RUNTIME_MODULES = (
    "vitdeploy.runtimes.ort",
    "vitdeploy.runtimes.openvino",
    "vitdeploy.runtimes.reference",
    "vitdeploy.runtimes.web.session",
)
SPECS: tuple[RuntimeSpec, ...] = tuple(importlib.import_module(module).SPEC for module in RUNTIME_MODULES)
RUNTIMES = tuple(spec.name for spec in SPECS)
# What a runtime offers here; the name the earlier interface used.
RuntimeStatus = RuntimeOffer


def runtime_specs() -> tuple[RuntimeSpec, ...]:
    return SPECS


def runtime_spec(name: str) -> RuntimeSpec:
    check_runtime_name(name)
    return next(spec for spec in SPECS if spec.name == name)


# ------------------------------------------------------------------------------------------------ the machine

_lock = threading.Lock()
_machine: Machine | None = None


def this_machine() -> Machine:
    """What this machine offers: made on first use, once per process (each runtime probed when first asked), or
    the record assume() put in place."""
    global _machine
    with _lock:
        if _machine is None:
            _machine = probe(SPECS)
        return _machine


@contextlib.contextmanager
def assume(machine: Machine) -> Iterator[Machine]:
    """Every decision reads `machine` instead of this one's record while the block runs (tests: CPU families and
    installs no test machine has)."""
    global _machine
    with _lock:
        before, _machine = _machine, machine
    try:
        yield machine
    finally:
        with _lock:
            _machine = before


def runtime_status(name: str) -> RuntimeOffer:
    """Installed (its modules import) and usable (it has a device here), its devices and native precisions."""
    check_runtime_name(name)
    return this_machine().offer(name)


def installed_runtimes() -> list[RuntimeOffer]:
    return [runtime_status(name) for name in RUNTIMES]


def install_command(name: str) -> str:
    return runtime_spec(name).install_command()


# ------------------------------------------------------------------------------------------------ choosing


def check_runtime_name(name: str) -> None:
    if name not in RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}; choose from: {', '.join(RUNTIMES)}")


def parse_runtimes(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """'ort,openvino' -> ('ort', 'openvino'); None or '' -> None (the default set). Unknown names are refused."""
    names = comma_list(text, lower=True)
    for name in names:
        check_runtime_name(name)
    return names or None


def select_runtimes(requested: tuple[str, ...] | None, *, exclude_by_default: tuple[str, ...] = ()) -> list[str]:
    """The runtimes to use: the ones named (each must be installed, else MissingExtra, and usable, else
    DeviceError: exit 2 either way), or by default every one installed and usable here that runs by default,
    minus `exclude_by_default` (said in a log line), with one line naming each missing one and its install
    command."""
    if requested:
        for name in requested:
            status = runtime_status(name)
            if not status.installed:
                raise MissingExtra(f"--runtime {name} is not installed here: {status.reason}")
            if not status.usable:
                raise DeviceError(f"--runtime {name} is not usable here: {status.reason}")
        return list(requested)
    chosen = []  # runtimes that run only when named are not even probed: they start a browser
    for status in (runtime_status(spec.name) for spec in SPECS if spec.by_default):
        if not status.usable:
            logger.info("runtime %s skipped: %s", status.name, status.reason)
        elif status.name in exclude_by_default:
            logger.info("runtime %s skipped by default here (too slow for this model; name it with --runtime to "
                        "run it anyway)", status.name)
        else:
            chosen.append(status.name)
    return chosen


def runtime_for_file(model: str | os.PathLike[str] | bytes) -> str:
    """THE rule for which runtime runs a file when none is named (predict, serve, open_runtime(None)): the one
    it was made for, as export recorded it (an OpenVINO variant says openvino), else ONNX Runtime. Read from the
    file's metadata on the wire, without the onnx package; a file that does not parse gets ONNX Runtime, whose
    loader then says what is wrong with it."""
    try:
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        metadata = metadata_props_from_bytes(data)
    except (OSError, ValueError):  # unreadable or not protobuf: the runtime's own loader reports it
        return "ort"
    recorded = export_record(metadata).get("runtime")
    return recorded if recorded in RUNTIMES else "ort"


# ------------------------------------------------------------------------------------------------ opening


def open_runtime(
    name: str | None,
    model: str | os.PathLike[str] | bytes,
    device: str = "auto",
    precision: str | None = None,
    **options: Any,
) -> Session:
    """Open `model` (a path, or a serialized ModelProto) on runtime `name` (None: runtime_for_file's rule). The
    session carries the file's description (Session.info, checked as it is first read); close it (or use it as a
    context manager) to release the runtime's memory.

    precision: None runs the file as it is made (its recorded precision; OpenVINO pins fp32 for fp32 files); a
    named one must be the file's, except that OpenVINO may run an fp32 file in bf16 or fp16 where the machine
    computes it natively. options: base.SessionOptions' fields (threads, spin, graph_optimization, static_batch,
    throughput, cuda_graph, cuda_stream); each runtime reads those that concern it.
    """
    name = name or runtime_for_file(model)
    spec = runtime_spec(name)
    try:
        session_options = SessionOptions(**options)
    except TypeError:
        raise ConfigError(f"unknown session option(s) {sorted(options)}") from None
    status = runtime_status(name)
    if not status.installed:
        if spec.check_file is not None:
            spec.check_file(model, device)
        raise MissingExtra(status.reason)
    session = spec.open(model, device, precision, session_options, this_machine())
    try:
        _check_file_precision(session, name, precision)
    except ConfigError:
        session.close()
        raise
    note_other_isa(session, this_machine().isa)  # a file gated on another CPU class says so, once
    return session


def foreign_setting(name: str, record: dict[str, Any]) -> str | None:
    """THE rule for which runtimes run a file as it was made: all of them, unless its precision is a setting of the
    runtime it was made for rather than of its graph (ov-bf16: an fp32 graph OpenVINO runs in bf16), which no other
    runtime would apply. Why `name` cannot (naming the runtime that can), or None."""
    made_for = record.get("runtime")
    if made_for and made_for != name and record.get("inference_precision") not in (None, "fp32"):
        return (f"it is {made_for}'s {record.get('variant')} variant ({record['inference_precision']} is an "
                f"{made_for} setting, not in the graph): run it with --runtime {made_for}")
    return None


def _check_file_precision(session: Session, name: str, asked: str | None) -> None:
    """ORT and the reference run a file in the precision it is made in; a file whose precision is a setting of the
    runtime it was made for is refused by the others rather than run as fp32 (foreign_setting)."""
    problem = foreign_setting(name, export_record(session.metadata))
    if problem:
        raise ConfigError(f"{session.path or 'the model'}: {problem}")
    if asked is not None and asked != session.description.precision:
        raise ConfigError(f"{name} runs a file in the precision it was made in ({session.description.precision}), "
                          f"not {asked}")


def open_to_read(path: str | os.PathLike[str]) -> Session:
    """A session opened to read what the file is (Session.info, input_shape), not to run it fast: ONNX Runtime on
    the CPU with graph optimizations off, so it is cheap; numpy + onnxruntime only (no onnx, no torch)."""
    return open_runtime("ort", path, "cpu", graph_optimization="disabled")


def read_model_info(path: str | os.PathLike[str]) -> OnnxModelInfo:
    """Validate a vitdeploy .onnx file (exists, is ONNX, describes itself, its graph matches) -> its description."""
    with open_to_read(path) as session:
        return session.info
