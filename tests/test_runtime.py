"""runtime.py: honest provider selection, session creation, model validation, batched runs."""

from __future__ import annotations

import numpy as np
import pytest
from builders import LABELS, SPEC, TINY, captured_notes

from vitdeploy.errors import ConfigError, DeviceError, ModelFileError
from vitdeploy.runtimes import read_model_info
from vitdeploy.runtimes import ort as runtime


def test_probe_model_bytes_are_the_onnx_helper_model():
    from onnx import TensorProto, checker, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "provider_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    assert model.SerializeToString() == runtime.PROBE_MODEL


def test_usable_providers_match_what_a_session_really_gets():
    providers = runtime.usable_providers()
    assert providers[-1] == runtime.CPU
    session, provider = runtime.make_session(runtime.PROBE_MODEL, device="auto")
    assert provider == providers[0] == session.get_providers()[0]


def test_cpu_device_gives_cpu_session():
    session, provider = runtime.make_session(runtime.PROBE_MODEL, device="cpu")
    assert provider == runtime.CPU
    out = session.run(None, {"x": np.array([3.0], np.float32)})[0]
    assert out.tolist() == [3.0]


@pytest.mark.skipif(runtime.cuda_status().usable, reason="CUDA works here")
def test_cuda_without_working_cuda_names_what_is_missing():
    with pytest.raises(DeviceError) as err:
        runtime.make_session(runtime.PROBE_MODEL, device="cuda")
    message = str(err.value)
    assert "CUDA" in message and runtime.cuda_status().reason in message


@pytest.mark.skipif(runtime.cuda_status().usable, reason="CUDA works here")
def test_auto_without_cuda_says_one_plain_line(capfd):
    runtime.cuda_status.__wrapped__()  # the uncached probe: the call that would print ORT's red fallback log
    with captured_notes() as lines:
        _, provider = runtime.make_session(runtime.PROBE_MODEL, device="auto")
    assert provider == runtime.CPU
    assert len(lines) == 1 and lines[0].startswith("running on CPU")
    captured = capfd.readouterr()
    # ORT's own red "[E:onnxruntime..." fallback log is silenced; stdout stays clean for --format json.
    assert "onnxruntime" not in captured.err and captured.out == ""


def test_spin_off_reaches_the_session_and_default_leaves_ort_alone():
    key = "session.intra_op.allow_spinning"
    quiet, _ = runtime.make_session(runtime.PROBE_MODEL, device="cpu", spin=False)
    assert quiet.get_session_options().get_session_config_entry(key) == "0"
    default, _ = runtime.make_session(runtime.PROBE_MODEL, device="cpu")
    with pytest.raises(RuntimeError, match="does not have configuration"):  # unset: ORT's default (spinning)
        default.get_session_options().get_session_config_entry(key)


def test_unknown_device_and_optimization_level_are_config_errors():
    with pytest.raises(ConfigError):
        runtime.make_session(runtime.PROBE_MODEL, device="tpu")
    with pytest.raises(ConfigError):
        runtime.make_session(runtime.PROBE_MODEL, device="cpu", graph_optimization="max")


def test_load_model_info_reads_metadata(tiny_onnx):
    info = read_model_info(tiny_onnx)
    assert info.labels == LABELS
    assert info.preprocess == SPEC
    assert info.model_config == TINY
    assert info.export["opset"] == 17


@pytest.mark.parametrize(
    "content, match",
    [(None, "no such model file"), (b"", "empty"), (b"not a model at all", "cannot load")],
)
def test_load_model_info_rejects_bad_files(tmp_path, content, match):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=match):
        read_model_info(path)


def test_load_model_info_rejects_onnx_without_metadata(tmp_path):
    path = tmp_path / "probe.onnx"
    path.write_bytes(runtime.PROBE_MODEL)
    with pytest.raises(ModelFileError, match="expected input 'pixel_values'"):
        read_model_info(path)


def test_run_batch_matches_torch_at_several_batch_sizes(tiny_onnx):
    import torch

    from vitdeploy.files.bundle import load_bundle

    model, _ = load_bundle(read_model_info(tiny_onnx).export["bundle"])  # the bundle it was exported from
    session, _ = runtime.make_session(tiny_onnx, device="cpu")
    rng = np.random.default_rng(0)
    for batch in (1, 3, 8):
        x = rng.standard_normal((batch, 3, 16, 16), dtype=np.float32)
        logits = runtime.run_batch(session, x)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert logits.shape == (batch, 3)
        # fp32, same graph: ORT and torch agree to ~1e-6; 1e-4 is torch.onnx's own verification tolerance
        np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-4)
