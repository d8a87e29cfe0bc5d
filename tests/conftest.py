"""Suite-wide settings and the fixtures many test modules share.

Test models are tiny: one intra-op thread is as fast as two for them and, on a shared 2-core machine, keeps them
from spinning against each other's threads. Subprocesses inherit the variable."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))  # tests import builders.py

from builders import export_tiny_onnx, make_bundle  # noqa: E402


def pytest_configure() -> None:
    # torch is optional for the deployment install; where it is present, keep it to one thread too.
    if "torch" in sys.modules or _importable("torch"):
        import torch

        torch.set_num_threads(1)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A tiny bundle with random weights, shared read-only (copy it before changing anything)."""
    return make_bundle(tmp_path_factory.mktemp("tiny") / "bundle")


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """A tiny exported .onnx (labels cat, dog, bird), shared read-only."""
    return export_tiny_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory) -> Path:
    """A small Hugging Face ViT folder (save_pretrained, labels a, b, c), shared read-only; needs transformers."""
    pytest.importorskip("transformers")
    from checkpoints import SMALL, hf_vit, save_hf

    return save_hf(hf_vit(["a", "b", "c"], **SMALL), tmp_path_factory.mktemp("hf") / "vit")
