"""The one place a served model runs: open a .onnx through the runtime layer -> run a batch -> logits.

`vitdeploy serve` sees a model only through `Runner`; `--runtime ort|openvino|reference` picks the runtime
(vitdeploy.runtimes), opened exactly as predict opens it, input contract checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vitdeploy.errors import ModelFileError
from vitdeploy.onnx_file import INPUT_NAME, OnnxModelInfo
from vitdeploy.runtimes.base import Session
from vitdeploy.runtimes.registry import check_name


class Runner(Protocol):
    """An open model: what it takes and gives, and a call that runs one batch."""

    runtime: str  # the --runtime name
    provider: str  # what really runs it, e.g. CPUExecutionProvider
    info: OnnxModelInfo  # labels, preprocessing, model config from the file's metadata
    input_shape: tuple[int | str | None, ...]  # [batch, C, H, W] as the graph declares it (batch: a name if dynamic)
    num_classes: int

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, num_classes) float32 logits."""
        ...


@dataclass
class SessionRunner:
    session: Session
    provider: str
    info: OnnxModelInfo
    input_shape: tuple[int | str | None, ...]
    num_classes: int
    runtime: str

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.session.run(pixel_values)


def open_runner(
    path: Path, runtime: str = "ort", device: str = "auto", threads: int | None = None,
) -> Runner:
    """Open `path` on the named runtime as predict does; an unknown name is a usage error (exit code 2) naming the
    known ones, a known one that is not installed names its install command."""
    from vitdeploy.prediction import open_model

    check_name(runtime)
    model = open_model(path, device=device, threads=threads, runtime=runtime)
    model_input = next(i for i in model.session.inputs if i.name == INPUT_NAME)
    return SessionRunner(model.session, model.provider, model.info, tuple(model_input.shape or ()),
                         len(model.info.labels), runtime)


def check_dynamic_batch(path: Path | str, shape: tuple[int | str | None, ...]) -> None:
    """Refuse a graph whose first axis is a fixed size: neither Triton's batcher nor serve's could batch it
    (Triton refuses it at load: the first dimension must be -1)."""
    if shape and isinstance(shape[0], int):
        raise ModelFileError(
            f"{path}: input {INPUT_NAME!r} has a fixed batch axis ({list(shape)}); batching needs a dynamic one "
            "(-1). Export it with vitdeploy export, which makes the batch axis dynamic"
        )


def item_shape(path: Path | str, shape: tuple[int | str | None, ...]) -> tuple[int, ...]:
    """[batch, C, H, W] -> (C, H, W); every one of them must be a fixed size."""
    item = shape[1:]
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in item):
        raise ModelFileError(f"{path}: input {INPUT_NAME!r} must be [batch, C, H, W] with fixed C, H, W; got {list(shape)}")
    return tuple(int(d) for d in item)  # type: ignore[arg-type]
