"""The .onnx file contract: tensor names, self-describing metadata, saving, loading and variant paths.

Every stage that reads or writes a vitdeploy .onnx file goes through here, so the contract lives in one place:
  - input `pixel_values` float32 [batch, C, H, W] (already preprocessed), output `logits` [batch, num_classes];
    a raw-image file (export --image-input, exporting/image_input.py) takes the decoded image instead, `image` uint8
    [batch, H, W, C] of any size, and says so in `vitdeploy.input`;
  - metadata_props `vitdeploy.*` whose values are JSON strings (labels, preprocessing, model config, export facts,
    metrics, parity summary, the tensors that hold each block's output);
  - one self-contained file below protobuf's 2 GB limit, one external `.data` file above it;
  - precision variants beside the export: model.onnx -> model.int8.onnx, model.fp16.onnx, model.fp32-opt.onnx.

Importing this module needs neither torch nor onnx (a deployment machine may have only onnxruntime): the
functions that parse or write protobufs import onnx when they are called.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitdeploy.core.config import ModelConfig, PreprocessSpec
from vitdeploy.errors import ModelFileError
from vitdeploy.files.onnx_wire import external_data_locations

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "pixel_values"
IMAGE_INPUT_NAME = "image"  # a raw-image file's input: the decoded image, uint8 [batch, height, width, channels]
OUTPUT_NAME = "logits"
DEFAULT_FILE_NAME = "model.onnx"

# Keys written by export into the ONNX file's metadata_props; values are JSON strings.
META_PREFIX = "vitdeploy."
META_LABELS = META_PREFIX + "labels"  # ["0", "1", ...]
META_PREPROCESS = META_PREFIX + "preprocess"  # PreprocessSpec.to_dict()
META_MODEL_CONFIG = META_PREFIX + "model_config"  # ModelConfig.to_dict()
META_EXPORT = META_PREFIX + "export"  # opset, exporter, versions, weights sha256, precision, ...
META_METRICS = META_PREFIX + "metrics"  # bundle metrics, e.g. val_accuracy
META_PARITY = META_PREFIX + "parity"  # parity summary measured at export (or the accuracy gate of a variant)
META_INTERMEDIATES = META_PREFIX + "intermediates"  # {"block_0": "<onnx tensor name>", ...}
META_INPUT = META_PREFIX + "input"  # raw-image files only: {"kind": "image", "name", "layout", "dtype", "channels"}

# Protobuf cannot serialize a message over 2 GiB: above that the weights go to one external data file.
EXTERNAL_DATA_THRESHOLD_BYTES = 2**31 - 1


@dataclass
class OnnxModelInfo:
    """What a self-describing vitdeploy .onnx file says about itself."""

    path: Path
    labels: list[str]
    preprocess: PreprocessSpec
    model_config: ModelConfig | None
    export: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    intermediates: dict[str, str] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)
    image_input: dict[str, Any] = field(default_factory=dict)  # META_INPUT; empty: the preprocessed tensor

    @property
    def precision(self) -> str:
        return self.export.get("precision", "fp32")

    @property
    def batch_dependence(self) -> str | None:
        """Why one image's answer depends on the other images in its batch, or None when it does not: dynamic INT8
        quantization scales activations by the range of the whole batch (ONNX Runtime issue 10111), so a server
        that batches requests together would let one client's image change another's answer."""
        quantization = self.export.get("quantization")
        if isinstance(quantization, dict) and quantization.get("method") == "dynamic":
            return "dynamic INT8 quantization scales activations per batch (ONNX Runtime issue 10111)"
        return None

    @property
    def input_name(self) -> str:
        return str(self.image_input.get("name", INPUT_NAME))


def parse_metadata(path: str | os.PathLike[str], props: dict[str, str]) -> OnnxModelInfo:
    """Turn metadata_props (as read by onnx or onnxruntime) into OnnxModelInfo, or raise ModelFileError."""

    def load(key: str, required: bool = True) -> Any:
        if key not in props:
            if required:
                raise ModelFileError(
                    f"{path} does not describe itself (metadata {key!r} missing); export it with vitdeploy export"
                )
            return None
        try:
            return json.loads(props[key])
        except json.JSONDecodeError as e:
            raise ModelFileError(f"{path}: metadata {key!r} is not valid JSON: {e}") from None

    cfg = load(META_MODEL_CONFIG, required=False)
    return OnnxModelInfo(
        path=Path(path),
        labels=[str(x) for x in load(META_LABELS)],
        preprocess=PreprocessSpec.from_dict(load(META_PREPROCESS)),
        model_config=ModelConfig.from_dict(cfg) if cfg else None,
        export=load(META_EXPORT, required=False) or {},
        metrics=load(META_METRICS, required=False) or {},
        parity=load(META_PARITY, required=False) or {},
        intermediates=load(META_INTERMEDIATES, required=False) or {},
        raw=dict(props),
        image_input=load(META_INPUT, required=False) or {},
    )


def set_metadata(proto: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Set (or replace) metadata_props entries, each value stored as JSON; other entries are kept."""
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({key: json.dumps(value) for key, value in values.items()})
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The raw metadata_props of a file (graph structure only: the weights are not read)."""
    import onnx

    return {p.key: p.value for p in onnx.load(os.fspath(path), load_external_data=False).metadata_props}


def copy_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def save_onnx(proto: onnx.ModelProto, path: Path) -> Path | None:
    """Save one self-contained file, or the graph plus one external data file when the weights need it.

    Returns the external data file's path, or None.
    """
    import onnx

    if proto.ByteSize() <= EXTERNAL_DATA_THRESHOLD_BYTES:
        onnx.save_model(proto, os.fspath(path))
        return None
    data = external_data_path(path)
    data.unlink(missing_ok=True)  # a second save (with parity metadata) would append to the first one's data
    # A copy: save_model with external data rewrites the tensors it is given.
    onnx.save_model(
        copy_proto(proto), os.fspath(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=data.name, size_threshold=1024,
    )
    return data


def uses_external_data(proto: onnx.ModelProto) -> bool:
    from onnx.external_data_helper import uses_external_data as tensor_uses_external_data

    return any(tensor_uses_external_data(t) for t in proto.graph.initializer)


def check_external_data(proto: onnx.ModelProto, folder: Path) -> None:
    """Refuse external-data locations outside the model's folder (absolute, '..', or a link leading out)."""
    from onnx.external_data_helper import ExternalDataInfo
    from onnx.external_data_helper import uses_external_data as tensor_uses_external_data

    root = folder.resolve()
    for tensor in proto.graph.initializer:
        if not tensor_uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        target = (root / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(root):
            raise ModelFileError(
                f"refusing {folder}: tensor {tensor.name!r} reads external data from {location!r}, "
                "outside the model's folder"
            )


def check_external_data_file(path: Path) -> None:
    """Refuse a model file whose external data lies outside its folder, before any runtime reads it. A file that
    is not a protobuf message passes: loading it fails with the runtime's own account of what it is not."""
    root = path.parent.resolve()
    try:
        locations = external_data_locations(path.read_bytes())
    except ValueError:
        return
    for name, location in locations:
        target = (root / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(root):
            raise ModelFileError(f"refusing {path}: tensor {name!r} reads external data from {location!r}, "
                                 "outside the model's folder")


def load_onnx(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, OnnxModelInfo]:
    """Open a vitdeploy .onnx file safely (structure only, weights stay on disk) and read its self-description."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        # format: onnx.load picks a parser by the file's suffix (a .json file is read as JSON, ParseError)
        proto = onnx.load(os.fspath(path), format="protobuf", load_external_data=False)
    except DecodeError:
        raise ModelFileError(f"{path} is not an ONNX model (or it is truncated): it does not parse") from None
    check_external_data(proto, path.parent)
    try:
        onnx.checker.check_model(os.fspath(path))
    except onnx.checker.ValidationError as e:
        raise ModelFileError(f"{path} is not a valid ONNX model: {str(e).splitlines()[0]}") from None
    check_io_names(path, [i.name for i in proto.graph.input], [o.name for o in proto.graph.output])
    return proto, parse_metadata(path, {p.key: p.value for p in proto.metadata_props})


def check_io_names(path: str | os.PathLike[str], inputs: list[str], outputs: list[str]) -> None:
    if not {INPUT_NAME, IMAGE_INPUT_NAME} & set(inputs) or OUTPUT_NAME not in outputs:
        raise ModelFileError(
            f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, found inputs {inputs} "
            f"and outputs {outputs}; export it with vitdeploy export"
        )


# ---------------------------------------------------------------------------------------------- files on disk


def external_data_path(path: Path) -> Path:
    """Where the weights of `path` go when they are stored outside the graph: model.onnx -> model.onnx.data."""
    return path.with_name(path.name + ".data")


def variant_path(base: Path, variant: str) -> Path:
    """model.onnx -> model.int8.onnx (beside it)."""
    return base.with_name(f"{base.stem}.{variant}{base.suffix}")
