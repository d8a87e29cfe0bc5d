"""Suite-wide settings and the fixtures many test modules share.

Test models are tiny: one intra-op thread is as fast as two for them and, on a shared 2-core machine, keeps them
from spinning against each other's threads. Subprocesses inherit the variable.

The suite runs on pytest-xdist, one worker per CPU, a test module's tests on one worker (pyproject.toml: -n auto
--dist loadfile): each worker builds the session fixtures it uses and each module's fixtures are built once. Every
test of the plain suite that starts a Ray is in test_scale.py, so one Ray runs at a time (with --docs-slow, docs
scale.md's block may start a second beside it). `-n 0` runs everything in one process."""

import dataclasses
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
from builders import export_tiny_onnx, make_bundle  # tests/ is on pytest's pythonpath (pyproject.toml)

# 8 epochs of 64 images of the digits preset: about 5 s on 2 idle cores, ~65% held-out accuracy; enough for
# attention that follows the strokes (the default 36 epochs of 64 reach ~99%) and for gates judged on the 359
# held-out digits. The batch is pinned so that this model stays the one the tests were written against.
QUICK_EPOCHS = 8
QUICK_BATCH = 64


def pytest_addoption(parser) -> None:
    parser.addoption("--docs-slow", action="store_true",
                     help="also run the docs blocks whose commands train, bench or build INT8 on the default model as "
                          "written (tests/test_docs_commands.py); .ci/run passes it")


def pytest_collection_modifyitems(config, items) -> None:
    if config.getoption("--docs-slow"):
        return
    skip = pytest.mark.skip(reason="a slow docs block: .ci/run runs it (python -m pytest tests/test_docs_commands.py "
                                   "--docs-slow)")
    for item in items:
        if "docs_slow" in item.keywords:
            item.add_marker(skip)


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
def digits_bundle(tmp_path_factory) -> Path:
    """The default model (the digits preset on the embedded digits) trained briefly: the default's architecture,
    data, preprocessing and recorded held-out split. Shared read-only."""
    from vitdeploy.training.run import TrainRequest, train

    request = TrainRequest(preset="digits", epochs=QUICK_EPOCHS, batch_size=QUICK_BATCH,
                           out=tmp_path_factory.mktemp("digits"))
    return train(request).best


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory) -> Path:
    """A small Hugging Face ViT folder (save_pretrained, labels a, b, c), shared read-only; needs transformers."""
    pytest.importorskip("transformers")
    from checkpoints import SMALL, hf_vit, save_hf

    return save_hf(hf_vit(["a", "b", "c"], **SMALL), tmp_path_factory.mktemp("hf") / "vit")


@pytest.fixture(scope="session")
def dynamic_int8_onnx(tiny_onnx: Path, tmp_path_factory) -> Path:
    """tiny.onnx quantized to dynamic INT8, recorded as such: its answers depend on the batch (ORT issue 10111)."""
    from builders import dynamic_int8_onnx as build

    return build(tiny_onnx, tmp_path_factory.mktemp("int8-dynamic") / "tiny.int8.onnx")


@pytest.fixture(scope="session")
def tome_export(tmp_path_factory):
    """A tiny random-weights bundle on the digits (16 px: 16 patches, 10 classes) exported with the token merging
    variants tome and tome-int8 at r = 2 (17 -> 15 -> 13 tokens), under a gate that lets anything through: these
    files are for checking how they are built and run, not a random model's accuracy. (bundle, ExportResult),
    shared read-only."""
    from builders import TINY

    from vitdeploy.exporting.exporter import export_onnx
    from vitdeploy.exporting.gate import AccuracyGate
    from vitdeploy.training.data import DIGITS_NAME

    digits = {"source": DIGITS_NAME, "split": "seeded-permutation", "split_seed": 0, "val_fraction": 0.2}
    bundle = make_bundle(tmp_path_factory.mktemp("tome") / "b", dataclasses.replace(TINY, num_classes=10),
                         dataset=digits)
    let_through = AccuracyGate(max_accuracy_drop=100.0, min_top1_agreement=0.0)
    return bundle, export_onnx(bundle, variants=["tome", "tome-int8"], gate=let_through, tome_r=2)


@pytest.fixture(scope="session")
def tome_onnx(tome_export) -> Path:
    """tome_export's merged fp32 file (model.tome.onnx, r = 2 in both blocks, labels "0".."9"), shared read-only."""
    return next(v.path for v in tome_export[1].variants if v.variant == "tome")
