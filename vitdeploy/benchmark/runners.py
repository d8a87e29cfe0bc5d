"""The runners the protocol drives: PyTorch eager, ONNX Runtime on CPU, ONNX Runtime on CUDA or TensorRT (IO
binding, optionally CUDA graphs), and any other runtime through the runtime interface (OpenVINO). Each exposes one
inference (`infer`) and the timer that times it (timing.WallClock or timing.CudaEventTimer). Every session is
opened through runtimes.open_runtime; the ONNX Runtime runners then time ORT's own InferenceSession (the session's
`session`), so nothing of vitdeploy is inside a timed call. The GEMMs that measure the machine's peak are in
peak.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitdeploy.benchmark.timing import CudaEventTimer, Runner, WallClock
from vitdeploy.benchmark.variants import VariantSpec
from vitdeploy.files.onnx_file import INPUT_NAME, OUTPUT_NAME
from vitdeploy.runtimes import Session, open_runtime

if TYPE_CHECKING:
    from vitdeploy.benchmark.artifacts import ModelUnderTest


class TorchRunner(Runner):
    def __init__(self, spec: VariantSpec, model: ModelUnderTest):
        self.spec = spec
        self.model_under_test = model
        self.providers = [f"torch-{spec.device}"]
        self.ran = {"runtime": "torch", "device": spec.device, "provider": f"torch-{spec.device}",
                    "precision": spec.precision}

    def create(self) -> None:
        import torch

        self.model = self.model_under_test.torch_model().to(self.spec.device).eval()
        self.torch = torch
        self.timer = (CudaEventTimer(setting=torch.inference_mode) if self.spec.device == "cuda"
                      else WallClock(setting=torch.inference_mode))

    def stage(self, batch: np.ndarray) -> None:
        self.input = self.torch.from_numpy(batch).to(self.spec.device)

    def infer(self) -> None:
        self.model(self.input)

    def logits(self) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.input).float().cpu().numpy()


class OrtRunner(Runner):
    """ONNX Runtime on one .onnx file, with `threads` intra-op threads."""

    def __init__(self, spec: VariantSpec, path: Path, threads: int):
        self.spec = spec
        self.path = path
        self.threads = threads
        self.opened: Session | None = None

    def close(self) -> None:
        if self.opened is not None:
            self.opened.close()


class OrtCpuRunner(OrtRunner):
    def create(self) -> None:
        # Timed calls go to the InferenceSession itself with a feed staged once: nothing but ORT's run is timed.
        self.opened = open_runtime("ort", self.path, "cpu", threads=self.threads)
        self.session = self.opened.session
        self.providers = self.session.get_providers()
        self.timer = WallClock()
        self.ran = {"runtime": "ort", "device": "cpu", "provider": self.providers[0], "precision": self.spec.precision}

    def stage(self, batch: np.ndarray) -> None:
        self.feed = {INPUT_NAME: batch}

    def infer(self) -> None:
        self.session.run([OUTPUT_NAME], self.feed)

    def logits(self) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], self.feed)[0]


class OrtCudaRunner(OrtRunner):
    """ONNX Runtime on CUDA with IO binding: input and output live on the GPU, so no host copy is timed.

    With `spec.cuda_graph`, ORT captures the whole run as one CUDA graph; a graph fixes the shapes and addresses,
    so each batch size gets its own session and preallocated output.
    """

    def __init__(self, spec: VariantSpec, path: Path, threads: int):
        super().__init__(spec, path, threads)
        self.session: Any = None
        self.graph_shape: tuple[int, ...] | None = None  # the input shape the current CUDA graph was captured for

    def _new_session(self) -> Any:
        events = CudaEventTimer.for_onnxruntime()
        # With torch's events, ORT works on torch's stream, so they bracket exactly the ORT kernels; without them,
        # wall-clock around a run that returns synchronised (see infer).
        self.timer = events or WallClock()
        self.close()  # a CUDA graph is bound to one shape: the previous batch size's session goes
        # On device cuda / tensorrt, a session that falls back to another provider is a DeviceError.
        self.opened = open_runtime("ort", self.path, self.spec.device, threads=self.threads,
                                   cuda_graph=self.spec.cuda_graph,
                                   cuda_stream=events.stream.cuda_stream if events else None)
        session = self.opened.session
        self.providers = session.get_providers()
        self.ran = {"runtime": "ort", "device": self.spec.device, "provider": self.opened.provider,
                    "precision": self.spec.precision}
        return session

    def create(self) -> None:
        self.session = self._new_session()

    def stage(self, batch: np.ndarray) -> None:
        import onnxruntime as ort

        if self.spec.cuda_graph:
            if self.graph_shape not in (None, batch.shape):
                self.session = self._new_session()  # a captured graph is bound to one shape
            self.graph_shape = batch.shape
        num_classes = self.session.get_outputs()[0].shape[-1]
        self.input = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
        self.output = ort.OrtValue.ortvalue_from_shape_and_type((batch.shape[0], num_classes), np.float32, "cuda", 0)
        self.binding = self.session.io_binding()
        self.binding.bind_ortvalue_input(INPUT_NAME, self.input)
        self.binding.bind_ortvalue_output(OUTPUT_NAME, self.output)

    def infer(self) -> None:
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()

    def logits(self) -> np.ndarray:
        self.infer()
        return self.output.numpy()


class SessionRunner(Runner):
    """Any runtime through the runtime interface (vitdeploy.runtimes): OpenVINO here. The session's own
    describe() says what ran it (device, inference precision)."""

    def __init__(self, spec: VariantSpec, path: Path, threads: int):
        self.spec = spec
        self.path = path
        self.threads = threads

    def create(self) -> None:
        self.session = open_runtime(self.spec.runtime, self.path, self.spec.device, threads=self.threads)
        self.ran = self.session.describe()
        self.providers = [f"{self.spec.runtime}:{self.session.provider}"]
        self.timer = WallClock()

    def close(self) -> None:
        self.session.close()

    def stage(self, batch: np.ndarray) -> None:
        self.batch = batch

    def infer(self) -> None:
        self.session.run(self.batch)

    def logits(self) -> np.ndarray:
        return self.session.run(self.batch)


def make_runner(spec: VariantSpec, model: ModelUnderTest, threads: int) -> Runner:
    """The runner for a catalogue variant on `model` (ONNX Runtime: on the file the variant times)."""
    if spec.runtime == "torch":
        return TorchRunner(spec, model)
    if spec.runtime != "ort":
        return SessionRunner(spec, model.file_path(spec), threads)
    if spec.device in ("cuda", "tensorrt"):
        return OrtCudaRunner(spec, model.file_path(spec), threads)
    return OrtCpuRunner(spec, model.file_path(spec), threads)
