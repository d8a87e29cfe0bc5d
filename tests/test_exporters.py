"""Both exporters (TorchScript and dynamo) give the same guarantees: dynamic batch, one file, metadata, parity, and
a per-block report that localises a corrupted block without relying on either exporter's node names."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from builders import captured_notes, corrupt_block_weight, make_bundle
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.errors import ConfigError
from vitdeploy.exporting import exporter as export
from vitdeploy.files import onnx_file
from vitdeploy.runtimes import read_model_info
from vitdeploy.runtimes import ort as runtime

pytestmark = pytest.mark.slow  # both exporters, dynamo's takes seconds per export

runner = CliRunner()


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, tuple[Path, Path, list[str]]]:
    """exporter -> (bundle, exported file, lines said). The dynamo file is made with TorchScript's exporter
    simulated missing, so the fallback path is the one that produced it."""
    made = {}
    for exporter in export.EXPORTERS:
        bundle = make_bundle(tmp_path_factory.mktemp(exporter) / "bundle")
        with pytest.MonkeyPatch.context() as mp, captured_notes() as said:
            if exporter == "dynamo":
                mp.setattr(export, "torchscript_exporter_available", lambda: False)
            result = export.export_onnx(bundle)
        assert result.exporter == exporter and result.parity.passed
        made[exporter] = (bundle, result.path, said)
    return made


def test_the_default_falls_back_to_dynamo_with_one_line_where_torchscript_is_gone(exports):
    # Besides the exporter, export says what its parity check ran on: these bundles record no dataset.
    inputs_note = "the bundle records no dataset: random inputs only"
    _, path, said = exports["dynamo"]
    assert said == [export_line for export_line in said if "exporting with dynamo" in export_line or
                    export_line == inputs_note]
    assert sum("exporting with dynamo" in line for line in said) == 1
    assert read_model_info(path).export["exporter"] == export.EXPORTER_CALLS["dynamo"]
    assert exports["torchscript"][2] == [inputs_note]  # nothing about the exporter when the default one is there


def test_asking_for_the_missing_torchscript_exporter_is_bad_input(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "torchscript_exporter_available", lambda: False)
    result = runner.invoke(app, ["export", str(make_bundle(tmp_path / "b")), "--exporter", "torchscript"])
    assert result.exit_code == 2 and "--exporter dynamo" in result.output
    with pytest.raises(ConfigError, match="unknown exporter"):
        export.resolve_exporter("jit")


@pytest.mark.parametrize("exporter", export.EXPORTERS)
def test_both_exporters_write_one_self_describing_file_with_a_symbolic_batch(exports, exporter):
    bundle, path, _ = exports[exporter]
    assert sorted(p.name for p in path.parent.iterdir() if p.suffix in (".onnx", ".data")) == ["model.onnx"]
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [export.DEFAULT_OPSET]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 16, 16]
    info = read_model_info(path)
    # Every block's output was found in the graph and recorded, whatever the exporter named its nodes.
    assert list(info.intermediates) == ["embed", "block_0", "block_1", "norm"]
    assert info.parity["passed"] and info.labels == ["cat", "dog", "bird"]


@pytest.mark.parametrize("exporter", export.EXPORTERS)
def test_both_exporters_verify_at_other_batch_sizes(exports, exporter):
    bundle, path, _ = exports[exporter]
    result = runner.invoke(app, ["verify", str(path), "--bundle", str(bundle), "--batch-sizes", "1,7,32", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # Each runtime installed here (ONNX Runtime always; OpenVINO and the reference where installed) at each size.
    for name in {r["runtime"] for r in report["runtimes"]}:
        assert [c["batch_size"] for c in report["cases"] if c["runtime"] == name] == [1, 7, 32]
    assert all(c["max_abs"] < 1e-4 for c in report["cases"])


@pytest.mark.parametrize("exporter", export.EXPORTERS)
def test_both_exporters_localise_a_corrupted_block(exports, exporter, tmp_path):
    bundle, path, _ = exports[exporter]
    bad = tmp_path / "corrupted.onnx"
    corrupt_block_weight(path, bad, bundle, block=1)
    result = runner.invoke(app, ["verify", str(bad), "--bundle", str(bundle), "--json"])
    assert result.exit_code == 3
    report = json.loads(result.stdout)
    assert report["first_divergence"][runtime.CPU] == "block_1"
    assert set(report["first_divergence"].values()) == {"block_1"}  # on every runtime that ran
    assert {d["name"]: d["passed"] for d in report["layers"][runtime.CPU]}["block_0"]


@pytest.mark.parametrize("exporter", export.EXPORTERS)
def test_a_file_exported_without_parity_is_searched_by_value_at_verify(exports, exporter, tmp_path):
    """--no-verify records no intermediates: verify finds them itself, so a corruption is still localised."""
    bundle, _, _ = exports[exporter]
    plain = export.export_onnx(bundle, tmp_path / "plain.onnx", verify=False, exporter=exporter).path
    assert onnx_file.META_INTERMEDIATES not in onnx_file.read_metadata(plain)
    bad = tmp_path / "bad.onnx"
    corrupt_block_weight(plain, bad, bundle, block=0)
    result = runner.invoke(app, ["verify", str(bad), "--bundle", str(bundle), "--json"])
    assert result.exit_code == 3
    divergence = json.loads(result.stdout)["first_divergence"]
    assert divergence[runtime.CPU] == "block_0" and set(divergence.values()) == {"block_0"}


def test_each_exporter_states_its_own_opset_range():
    assert export.supported_opsets("torchscript").start == export.TORCHSCRIPT_MIN_OPSET
    assert export.supported_opsets("dynamo").start == export.DYNAMO_MIN_OPSET
    with pytest.raises(ConfigError, match="dynamo exporter: choose 17"):
        export.check_opset(16, "dynamo")
