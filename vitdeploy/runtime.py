"""ONNX Runtime sessions, honest provider selection, and the .onnx metadata contract.

numpy + onnxruntime only: no torch import anywhere on this path (a deployment machine may not have torch).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitdeploy.config import ModelConfig, PreprocessSpec
from vitdeploy.errors import DeviceError, ModelFileError

# Keys written by export into the ONNX file's metadata_props; values are JSON strings.
META_PREFIX = "vitdeploy."
META_LABELS = META_PREFIX + "labels"  # ["0", "1", ...]
META_PREPROCESS = META_PREFIX + "preprocess"  # PreprocessSpec.to_dict()
META_MODEL_CONFIG = META_PREFIX + "model_config"  # ModelConfig.to_dict()
META_EXPORT = META_PREFIX + "export"  # opset, exporter, versions, weights sha256, precision, ...
META_METRICS = META_PREFIX + "metrics"  # bundle metrics, e.g. val_accuracy
META_PARITY = META_PREFIX + "parity"  # parity summary measured at export
META_INTERMEDIATES = META_PREFIX + "intermediates"  # {"block_0": "<onnx tensor name>", ...}

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


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
    )
