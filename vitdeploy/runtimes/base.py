"""The runtime interface: one .onnx file open on one runtime, run batch by batch, saying what really ran it; and
RuntimeSpec, the one declaration each runtime module makes of itself (registry.py lists them).

Every consumer (verify, predict, serve, triton, bench, the precision gate) opens a model through
registry.open_runtime and uses only this interface:

    with open_runtime("openvino", path, device="cpu") as session:   # None: the runtime the file was made for
        logits = session.run(batch)                                  # float32 (N, C, H, W) -> (N, num_classes)
    session.describe()  # {"runtime": "openvino", "device": "cpu", "provider": "CPU", "precision": "fp32"}
    session.info        # the file's self-description (labels, preprocessing, model config), checked against the
                        # graph's input contract; session.labels, .preprocess, .input_shape, .num_classes

A Session reports what its runtime says it runs on (ORT's session providers, OpenVINO's compiled device and
inference precision), never what was asked for. A session holds its runtime's memory (and the web runtime a
browser) until close(), or the end of its `with` block. Imports numpy and vitdeploy's torch- and onnx-free modules
only.
"""

from __future__ import annotations

import abc
import functools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from vitdeploy.core.config import PreprocessSpec
from vitdeploy.core.cpu import int8_saturates, isa_class
from vitdeploy.core.strict_json import record
from vitdeploy.errors import ConfigError, ModelFileError
from vitdeploy.files.onnx_file import (
    IMAGE_INPUT_NAME,
    INPUT_NAME,
    META_EXPORT,
    META_INPUT,
    OUTPUT_NAME,
    OnnxModelInfo,
    check_io_names,
    parse_metadata,
)


@dataclass(frozen=True)
class Description:
    """What ran a model: the runtime, the device asked of it, the provider or plugin that really ran it, and the
    arithmetic precision it ran in (the file's, or the one the runtime was told to use, e.g. OpenVINO bf16)."""

    runtime: str  # ort | openvino | reference
    device: str  # cpu | cuda | tensorrt | gpu | npu
    provider: str  # CPUExecutionProvider, CUDAExecutionProvider, OpenVINO's device name (CPU), onnx.reference
    precision: str  # fp32 | fp16 | bf16 | int8

    @property
    def label(self) -> str:
        """Short and unique within a run, for tables and report keys: ort:CPU, openvino:CPU:bf16, reference."""
        provider = self.provider.removesuffix("ExecutionProvider")
        if self.runtime == "reference":
            return "reference"
        return f"{self.runtime}:{provider}" + (f":{self.precision}" if self.runtime == "openvino" else "")

    def to_dict(self) -> dict[str, str]:
        return record(self)


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as the runtime reads it: dims are ints where fixed, names where symbolic."""

    name: str
    elem_type: str  # "float32", "float16", ...
    shape: tuple[int | str | None, ...] | None  # None: rank unknown


class Session(abc.ABC):
    """One model file open on one runtime; a context manager whose exit (or close()) releases the runtime's
    resources. Running a closed session is a bug: RuntimeError."""

    path: Path | None  # None: opened from bytes
    description: Description
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, str]  # the file's metadata_props, as the runtime read them

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> logits (N, num_classes) float32 on the host."""
        self.check_open()
        return self.run_outputs(batch, [OUTPUT_NAME])[OUTPUT_NAME]

    @abc.abstractmethod
    def run_outputs(self, batch: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The named graph outputs for one batch."""

    def close(self) -> None:
        """Release what the runtime holds for this file (compiled models, a browser); closing twice is harmless."""
        if not getattr(self, "closed", False):
            self.closed = True
            self.release()

    def release(self) -> None:
        """The runtime's part of close(): drop its session objects (each runtime says which)."""

    @property
    def graph_precision(self) -> str:
        """The arithmetic precision of the file's graph (its export record; fp32 for files vitdeploy did not write)."""
        return file_precision(export_record(self.metadata))

    def check_open(self) -> None:
        if getattr(self, "closed", False):
            raise RuntimeError(f"{self.description.label} session on {self.path or 'model bytes'} is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_in_batches(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        """Logits for any number of samples, run `batch_size` at a time."""
        return np.concatenate([self.run(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])

    def describe(self) -> dict[str, str]:
        return self.description.to_dict()

    @property
    def provider(self) -> str:
        """What really runs it, e.g. CPUExecutionProvider, OpenVINO's CPU."""
        return self.description.provider

    @property
    def runtime(self) -> str:
        """ort | openvino | reference."""
        return self.description.runtime

    @functools.cached_property
    def info(self) -> OnnxModelInfo:
        """The file's self-description (labels, preprocessing, model config, export record), with the graph checked
        against it (check_input_contract): ModelFileError for a file vitdeploy did not write or that lies."""
        name = self.path if self.path is not None else "model bytes"
        check_io_names(name, [i.name for i in self.inputs], [o.name for o in self.outputs])
        info = parse_metadata(name, self.metadata)
        check_input_contract(self, info)
        return info

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    @property
    def preprocess(self) -> PreprocessSpec:
        """THE preprocessing its inputs need (images.preprocess with this spec). A raw-image file needs none: asking
        is a mistake (its input is the decoded image), refused rather than fed preprocessed tensors."""
        if self.takes_images:
            raise ConfigError(f"{self.path or 'model bytes'} takes decoded images (export --image-input: the "
                              "preprocessing is inside its graph); here, give the model.onnx it was built from")
        return self.info.preprocess

    @property
    def num_classes(self) -> int:
        return len(self.info.labels)

    @property
    def input_shape(self) -> tuple[int | str | None, ...]:
        """[batch, C, H, W] as the graph declares its input (batch: a name where it is dynamic); a raw-image file's
        [batch, height, width, channels] (or [batch, channels, height, width]: export --image-layout nchw), all
        names."""
        return tuple(self.input.shape or ())

    @property
    def input(self) -> TensorSpec:
        """The graph's input: `pixel_values`, or a raw-image file's `image`."""
        return next(i for i in self.inputs if i.name in (INPUT_NAME, IMAGE_INPUT_NAME))

    @property
    def takes_images(self) -> bool:
        """A raw-image file (export --image-input): its input is the decoded image, THE preprocessing is inside."""
        return bool(self.info.image_input)

    def feed(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The runtime's input for `batch`: float32 pixel values, or a raw-image file's decoded images as they are."""
        if self.input.elem_type == "uint8":
            return {self.input.name: np.ascontiguousarray(batch, dtype=np.uint8)}
        return {self.input.name: np.ascontiguousarray(batch, dtype=np.float32)}


def check_input_contract(session: Session, info: OnnxModelInfo) -> None:
    """The graph must take float32 [batch, C, S, S] with a symbolic batch and give [batch, len(labels)] logits, as its
    metadata says; otherwise every consumer (predict, bench, serve) would fail later, inside the runtime."""
    if info.image_input or INPUT_NAME not in {i.name for i in session.inputs}:
        check_image_input_contract(session, info)
        return
    model_input = next(i for i in session.inputs if i.name == INPUT_NAME)
    shape, size = model_input.shape, info.preprocess.image_size
    channels = info.model_config.in_channels if info.model_config else 3
    problems = []
    if model_input.elem_type != "float32":
        problems.append(f"input {INPUT_NAME} is {model_input.elem_type}, not float32")
    if shape is None or len(shape) != 4:
        rank = "an unknown number of" if shape is None else str(len(shape))
        problems.append(f"input {INPUT_NAME} has {rank} dimensions, not 4 (batch, channels, height, width)")
    else:
        batch, got_channels, height, width = shape
        if isinstance(batch, int):
            problems.append(f"the batch axis is fixed at {batch} (it must be symbolic: re-export with vitdeploy "
                            "export, which writes a dynamic batch axis)")
        if isinstance(got_channels, int) and got_channels != channels:
            problems.append(f"the graph takes {got_channels} input channel(s), the model config {channels}")
        if all(isinstance(d, int) for d in (height, width)) and (height, width) != (size, size):
            problems.append(f"the graph takes {height}x{width} images but its metadata says {size}x{size}")
    _refuse(session, info, problems)


def check_image_input_contract(session: Session, info: OnnxModelInfo) -> None:
    """A raw-image file: its metadata says so, and the graph takes what the metadata says (uint8 [batch, H, W, C]
    or [batch, C, H, W] for `image`), with a symbolic batch, and gives [batch, len(labels)] logits."""
    declared = info.image_input
    model_input = session.input
    problems = []
    if not declared:
        problems.append(f"input {model_input.name!r} without the raw-image description ({META_INPUT} metadata); "
                        "write it with vitdeploy export --image-input")
    else:
        if declared.get("name") != model_input.name:
            problems.append(f"the metadata names input {declared.get('name')!r}, the graph {model_input.name!r}")
        if declared.get("dtype") != model_input.elem_type:
            problems.append(f"input {model_input.name!r} is {model_input.elem_type}, the metadata says "
                            f"{declared.get('dtype')}")
    shape = model_input.shape
    if shape is None or len(shape) != 4:
        axes = "height, width, channels" if declared.get("layout", "hwc") == "hwc" else "channels, height, width"
        problems.append(f"input {model_input.name!r} must have 4 dimensions (batch, {axes})")
    elif isinstance(shape[0], int):
        problems.append(f"the batch axis is fixed at {shape[0]} (it must be symbolic)")
    _refuse(session, info, problems)


def _refuse(session: Session, info: OnnxModelInfo, problems: list[str]) -> None:
    """ModelFileError naming every problem found, the logits' width against the labels included; None if none."""
    output_shape = next(o for o in session.outputs if o.name == OUTPUT_NAME).shape
    num_classes = output_shape[-1] if output_shape else None
    if isinstance(num_classes, int) and num_classes != len(info.labels):
        problems.append(f"the graph has {num_classes} outputs but {len(info.labels)} labels")
    if problems:
        raise ModelFileError(f"{info.path}: " + "; ".join(problems))


def check_model_file(path: Path) -> None:
    """Refuse a missing, empty or unsafe file before a runtime reads it (each runtime's own message is worse)."""
    from vitdeploy.files.onnx_file import check_external_data_file

    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: model file is empty")
    check_external_data_file(path)  # vitdeploy's own check, not only the runtime's


def export_record(metadata: dict[str, str]) -> dict:
    """The export facts a vitdeploy file records (precision, variant, runtime, ...); {} for other files."""
    try:
        record = json.loads(metadata.get(META_EXPORT, "{}"))
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def file_precision(record: dict) -> str:
    """The arithmetic precision of a file's graph, from its export record: fp32 for files vitdeploy did not write."""
    return str(record.get("precision", "fp32"))


logger = logging.getLogger(__name__)
_ISA_NOTED: set[tuple[str, str, str]] = set()  # (file, its class, this class) already noted in this process


def other_isa_note(name: str, record: dict, here: str | None = None) -> str | None:
    """The note for a reduced-precision file (INT8, fp16, bf16) that was built and gated on another CPU class than
    `here` (default: this CPU's, core.cpu.isa_class), or None. The gate's verdict holds for the class it ran on:
    INT8 that was exact with VNNI can saturate without it (core.cpu), and native bf16 is a property of the CPU."""
    gated = record.get("isa_class")
    here = isa_class() if here is None else here
    if not gated or gated == here or (record.get("precision") == "fp32"
                                      and record.get("inference_precision") in (None, "fp32")):
        return None
    risk = (": its u8 x s8 INT8 products can saturate here (no VNNI or AMX)"
            if record.get("precision") == "int8" and int8_saturates(here) and not int8_saturates(gated) else "")
    flag = f"--precision {record['variant']}" if record.get("variant") else "--precision ..."
    bundle = record.get("bundle") or "BUNDLE"
    return (f"{name} was built and accuracy-gated on a {gated} CPU; this CPU is {here}{risk}. Re-gate it on this "
            f"machine: vitdeploy export {bundle} {flag} (or vitdeploy verify {name}, which re-gates on the bundle's "
            "held-out images)")


def note_other_isa(session: Session, here: str | None = None) -> None:
    """Log other_isa_note once per file and pair of classes in a process (predict, serve, bench, verify)."""
    name = str(session.path) if session.path is not None else "the model"
    record = export_record(session.metadata)
    note = other_isa_note(name, record, here)
    key = (name, str(record.get("isa_class")), here or isa_class())
    if note and key not in _ISA_NOTED:
        _ISA_NOTED.add(key)
        logger.warning("%s", note)

# ------------------------------------------------------------------------------------------ a runtime's declaration


@dataclass(frozen=True)
class SessionOptions:
    """How a session is opened; each runtime reads the fields that concern it and ignores the rest."""

    threads: int | None = None  # intra-op threads (None: the runtime's default, one per core)
    spin: bool = True  # ORT: idle intra-op threads busy-wait (off where other threads of the process need the cores)
    graph_optimization: str = "all"  # ORT: all | extended | basic | disabled (disabled: opened to read, not to run)
    static_batch: bool = True  # OpenVINO: one compilation per batch size seen (see OpenVinoSession)
    throughput: bool = True  # OpenVINO: large batches split over a THROUGHPUT queue
    cuda_graph: bool = False  # ORT on CUDA: capture each run as one CUDA graph
    cuda_stream: int | None = None  # ORT on CUDA: run on this stream (torch's, so that its events time the kernels)


@dataclass(frozen=True)
class RuntimeOffer:
    """What one runtime offers on this machine (its spec's probe; machine.py keeps one per runtime)."""

    name: str
    installed: bool  # its modules import (the web runtime: a browser and onnxruntime-web are there)
    usable: bool  # installed, with at least one device here
    reason: str = ""  # why it is not usable, with the install command; "" when usable
    devices: tuple[str, ...] = ()  # the devices a session really gets here
    precisions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # device -> computed natively here
    version: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # what the runtime itself reported

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.name, **record(self, exclude=("name",))}


ModelSource = str | os.PathLike[str] | bytes


@dataclass(frozen=True)
class RuntimeSpec:
    """A runtime, declared once as SPEC in its own module: what it is, what brings it, what it can run, how it is
    probed and opened. registry.RUNTIME_MODULES lists the modules; nothing else names a runtime."""

    name: str  # the --runtime value, and what a file made for it records
    title: str  # for messages: "ONNX Runtime"
    help: str  # one line for `doctor` and --runtime's help
    devices: tuple[str, ...]  # every device it can have anywhere ("auto" chooses among those it has here)
    # (model, device, precision or None, SessionOptions, machine.Machine) -> an open Session; precision None: the
    # file's own; the machine record says what the runtime may compute here
    open: Callable[..., Session]
    probe: Callable[[], RuntimeOffer]  # what it offers here; called once per process, only where installed
    needs: Callable[[str, str], str]  # (device, precision) -> what would let it compute that (install or hardware)
    modules: tuple[str, ...] = ()  # the Python modules it imports: one missing means not installed
    extra: str | None = None  # the pip extra that brings them; None: the core install
    install: Callable[[], str] | None = None  # its install command where it is not (only) a pip extra
    # (model, device) -> None, or an error for a file it could never run (too large, a variant made for another
    # runtime): checked where the runtime is not installed, so that the file's problem is heard before the install
    check_file: Callable[[ModelSource, str], None] | None = None
    emulated: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # device -> precisions it runs
    # without computing in them (ONNX Runtime's CPU provider casts fp16 to fp32): enough to judge, never to time
    by_default: bool = True  # in the default set (verify); False: only when named (the web runtime starts a browser)
    # Parity policy: verify runs it on at most this many samples, and leaves it out of its default set for models
    # over this many GMACs per image (a slow oracle); None: no limit.
    parity_max_samples: int | None = None
    default_max_gmacs: float | None = None

    def install_command(self) -> str:
        if self.install is not None:
            return self.install()
        return f'pip install "vitdeploy[{self.extra}]"' if self.extra else "pip install vitdeploy"


def short_provider_name(provider: str) -> str:
    """CUDAExecutionProvider -> CUDA, for tables and one-line messages."""
    return provider.removesuffix("ExecutionProvider")
