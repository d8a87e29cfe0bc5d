"""Which runtimes exist, which are installed and usable here (and why not), and open_runtime(), the one way every
consumer opens a model.

    ort        ONNX Runtime: CPU, CUDA, TensorRT         pip install vitdeploy (always there)
    openvino   OpenVINO: CPU (GPU, NPU where present)    pip install "vitdeploy[openvino]"
    reference  onnx.reference, a slow pure-Python oracle pip install "vitdeploy[train]" (the onnx package)
    web        onnxruntime-web in headless Chromium       Chromium + npm (runtimes/web/); only when named

A runtime module is imported only when it is used, so a deployment install without openvino or onnx runs ORT.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vitdeploy.core.config import comma_list
from vitdeploy.core.extras import importable
from vitdeploy.core.strict_json import record
from vitdeploy.errors import ConfigError, DeviceError, MissingExtra

if TYPE_CHECKING:
    from vitdeploy.runtimes.base import Session

logger = logging.getLogger(__name__)

RUNTIMES = ("ort", "openvino", "reference", "web")
# Runtimes used only when named (--runtime web): each start costs a browser.
NAMED_ONLY = ("web",)
# runtime -> (the extra that brings it, or None when the core install does, the modules it imports)
_NEEDS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "ort": (None, ("onnxruntime",)),
    "openvino": ("openvino", ("openvino",)),
    "reference": ("train", ("onnx",)),
    "web": (None, ()),  # not Python modules: a browser and onnxruntime-web (web_status says which is missing)
}


@dataclass(frozen=True)
class RuntimeStatus:
    name: str
    installed: bool
    usable: bool
    reason: str  # why it is not usable here, with the install command when it is missing; "" when usable
    devices: tuple[str, ...] = ()  # the devices a session really gets here

    def to_dict(self) -> dict[str, object]:
        return {"runtime": self.name, **record(self, exclude=("name",))}


def install_command(name: str) -> str:
    if name == "web":
        from vitdeploy.runtimes.web.toolchain import install_commands

        return install_commands()
    extra = _NEEDS[name][0]
    return f'pip install "vitdeploy[{extra}]"' if extra else "pip install vitdeploy"


def runtime_status(name: str) -> RuntimeStatus:
    """Installed (its modules import) and usable (it has a device here)."""
    check_runtime_name(name)
    if name == "web":
        from vitdeploy.runtimes.web.session import web_status

        installed, reason, devices = web_status()
        return RuntimeStatus(name, installed, installed, reason, devices)
    missing = [module for module in _NEEDS[name][1] if not importable(module)]
    if missing:
        return RuntimeStatus(name, False, False, f"{name} needs {', '.join(missing)}, which this installation "
                             f"lacks: {install_command(name)}")
    if name == "ort":
        from vitdeploy.runtimes.ort import usable_devices

        return RuntimeStatus(name, True, True, "", tuple(usable_devices()))
    if name == "openvino":
        from vitdeploy.runtimes.openvino import available_devices

        devices = available_devices()
        return RuntimeStatus(name, True, bool(devices), "" if devices else "OpenVINO lists no device here",
                             tuple(devices))
    return RuntimeStatus(name, True, True, "", ("cpu",))


def check_runtime_name(name: str) -> None:
    if name not in RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}; choose from: {', '.join(RUNTIMES)}")


def parse_runtimes(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """'ort,openvino' -> ('ort', 'openvino'); None or '' -> None (the default set). Unknown names are refused."""
    names = comma_list(text, lower=True)
    for name in names:
        check_runtime_name(name)
    return names or None


def installed_runtimes() -> list[RuntimeStatus]:
    return [runtime_status(name) for name in RUNTIMES]


def select_runtimes(requested: tuple[str, ...] | None, *, exclude_by_default: tuple[str, ...] = ()) -> list[str]:
    """The runtimes to use: the ones named (each must be installed, else MissingExtra, and usable, else
    DeviceError: exit 2 either way), or by default every
    one installed and usable here, minus `exclude_by_default` (said in a log line), with one line naming each
    missing one and its install command."""
    if requested:
        for name in requested:
            status = runtime_status(name)
            if not status.installed:
                raise MissingExtra(f"--runtime {name} is not installed here: {status.reason}")
            if not status.usable:
                raise DeviceError(f"--runtime {name} is not usable here: {status.reason}")
        return list(requested)
    chosen = []  # NAMED_ONLY runtimes are not even asked about: they run when named
    for status in (runtime_status(name) for name in RUNTIMES if name not in NAMED_ONLY):
        if not status.usable:
            logger.info("runtime %s skipped: %s", status.name, status.reason)
        elif status.name in exclude_by_default:
            logger.info("runtime %s skipped by default here (too slow for this model; name it with --runtime to "
                        "run it anyway)", status.name)
        else:
            chosen.append(status.name)
    return chosen


def open_runtime(
    name: str | None,
    model: str | os.PathLike[str] | bytes,
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    spin: bool = True,
    static_batch: bool = True,
    throughput: bool = True,
) -> Session:
    """Open `model` (a path, or a serialized ModelProto) on runtime `name` (None: the one the file was made for,
    else ort). The session carries the file's description (Session.info, checked as it is first read).

    precision: None runs the file as it is made (its recorded precision; OpenVINO pins fp32 for fp32 files);
    a named one must be the file's, except that OpenVINO may run an fp32 file in bf16 or fp16 where the device
    supports it natively. spin: ORT's idle threads busy-wait (see ort.make_session); the others ignore it.
    static_batch, throughput: OpenVINO's per-batch-size compilation and THROUGHPUT queue (see OpenVinoSession).
    """
    if not name:
        name = "ort" if isinstance(model, bytes) else runtime_for_file(model)
    check_runtime_name(name)
    status = runtime_status(name)
    if not status.installed:
        raise MissingExtra(status.reason)
    if name == "openvino":
        from vitdeploy.runtimes.openvino import OpenVinoSession

        return _noted(OpenVinoSession(model if isinstance(model, bytes) else Path(model), device, precision,
                                      threads, static_batch, throughput))
    if name == "ort":
        from vitdeploy.runtimes.ort import OrtSession

        session: Session = OrtSession(model, device, threads, spin)
    elif name == "web":
        from vitdeploy.runtimes.web.session import WebSession

        session = WebSession(model, device, threads)
    else:
        from vitdeploy.runtimes.reference import ReferenceSession

        session = ReferenceSession(model, device)
    _check_file_precision(session, name, precision)
    return _noted(session)


def _noted(session: Session) -> Session:
    """A file gated on another CPU class says so once (base.other_isa_note)."""
    from vitdeploy.runtimes.base import note_other_isa

    note_other_isa(session)
    return session


def _check_file_precision(session: Session, name: str, asked: str | None) -> None:
    """ORT and the reference run a file in the precision it is made in; a file whose precision is an OpenVINO
    setting (the ov-bf16 variant: an fp32 graph run in bf16 by OpenVINO) is refused rather than run as fp32."""
    from vitdeploy.runtimes.base import export_record

    record = export_record(session.metadata)
    made_for = record.get("runtime")
    if made_for and made_for != name and record.get("inference_precision") not in (None, "fp32"):
        raise ConfigError(f"{session.path or 'the model'} is {made_for}'s {record.get('variant')} variant "
                          f"({record['inference_precision']} is an {made_for} setting, not in the graph): run it with "
                          f"--runtime {made_for}")
    if asked is not None and asked != session.description.precision:
        raise ConfigError(f"{name} runs a file in the precision it was made in ({session.description.precision}), "
                          f"not {asked}")


def runtime_for_file(path: str | os.PathLike[str]) -> str:
    """The runtime a file was made for (an OpenVINO variant records "openvino"); "ort" for every other file. Read
    from the file's metadata on the wire, without the onnx package; a file that does not parse gets "ort", whose
    loader then says what is wrong with it."""
    from vitdeploy.files.onnx_wire import metadata_props_from_bytes
    from vitdeploy.runtimes.base import export_record

    try:
        metadata = metadata_props_from_bytes(Path(path).read_bytes())
    except (OSError, ValueError):  # unreadable or not protobuf: the runtime's own loader reports it
        return "ort"
    recorded = export_record(metadata).get("runtime")
    return recorded if recorded in RUNTIMES else "ort"
