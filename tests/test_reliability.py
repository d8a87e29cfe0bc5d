"""Fault cases: tampered models, full disks, hostile paths. Each failed before the fixes it tests."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import smooth_rgb, wait_until
from onnx import numpy_helper
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK, EXIT_PARTIAL, InputError, ModelFileError
from vitdeploy.runtimes import read_model_info
from vitdeploy.runtimes.web import toolchain

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def strict_loads(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers (and other languages) do."""
    def refuse(literal: str):
        raise ValueError(f"non-JSON literal {literal}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    for i in range(5):
        smooth_rgb(20 + i, 18, seed=i).save(folder / f"{i}.png")
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def nan_onnx(tiny_onnx, tmp_path_factory) -> Path:
    """The tiny model with its head bias set to NaN: a tampered or foreign file that answers NaN for everything."""
    from vitdeploy.files.bundle import load_bundle

    model, _ = load_bundle(read_model_info(tiny_onnx).export["bundle"])
    bias = model.head.bias.detach().numpy()
    proto = onnx.load(str(tiny_onnx))
    target = next(t for t in proto.graph.initializer if np.array_equal(numpy_helper.to_array(t), bias))
    target.CopyFrom(numpy_helper.from_array(np.full_like(bias, np.nan), target.name))
    path = tmp_path_factory.mktemp("nan") / "nan.onnx"
    onnx.save(proto, str(path))
    return path


# ------------------------------------------------------------------------------------------ non-finite outputs


@pytest.mark.parametrize("output_format", ["json", "jsonl", "csv"])
def test_non_finite_logits_are_error_rows_and_no_output_holds_a_non_json_literal(nan_onnx, images, tmp_path,
                                                                                  output_format):
    out = tmp_path / f"rows.{output_format}"
    result = runner.invoke(app, ["predict", *map(str, images), "--model", str(nan_onnx), "--format", output_format,
                                 "-o", str(out)])
    assert result.exit_code == EXIT_PARTIAL, result.output
    text = out.read_text()
    if output_format == "csv":
        rows = list(csv.DictReader(text.splitlines()))
        assert [r["error"] for r in rows] == ["non_finite"] * len(images)
    else:
        rows = (strict_loads(text)["predictions"] if output_format == "json"
                else [strict_loads(line) for line in text.splitlines()])
        assert [(r["ok"], r["error"]) for r in rows] == [(False, "non_finite")] * len(images)


def test_verify_says_non_finite_output_rather_than_a_tolerance(nan_onnx, tiny_onnx):
    bundle = read_model_info(tiny_onnx).export["bundle"]
    result = runner.invoke(app, ["verify", str(nan_onnx), "--bundle", bundle, "--json"])
    assert result.exit_code == EXIT_CHECK_FAILED
    report = strict_loads(result.stdout)  # the NaN differences are null, not bare NaN
    assert any("non-finite output" in line for line in report["failures"])
    assert not any("atol" in line for line in report["failures"])


def test_bench_says_a_variant_answers_nan_and_never_recommends_it(nan_onnx, tiny_onnx):
    quick = ["--warmup-iters", "0", "--warmup-seconds", "0", "--min-iters", "1", "--min-seconds", "0", "--threads", "1",
             "--block-idle", "0"]
    result = runner.invoke(app, ["bench", str(nan_onnx), "--variants", "ort-cpu", "--batch-sizes", "2", *quick, "--json"])
    assert result.exit_code == EXIT_OK, result.output
    report = strict_loads(result.stdout)
    assert report["variants"]["ort-cpu"]["cold_start"]["finite_outputs"] is False
    assert report["best_variant"]["gate"]["ort-cpu"] == "failed" and "ort-cpu" in report["best_variant"]["never_recommended"]
    assert "NON-FINITE" in result.stderr
    healthy = strict_loads(runner.invoke(app, ["bench", str(tiny_onnx), "--variants", "ort-cpu", "--batch-sizes", "2",
                                               *quick, "--json"]).stdout)
    assert healthy["variants"]["ort-cpu"]["cold_start"]["finite_outputs"] is True


# ------------------------------------------------------------------------------------------ the input contract


@pytest.mark.parametrize("dimension, value, message", [(0, 1, "batch axis is fixed at 1"),
                                                       (1, 1, "input channel")])
def test_a_model_that_breaks_the_input_contract_is_refused_when_opened(tiny_onnx, images, tmp_path, dimension,
                                                                       value, message):
    proto = onnx.load(str(tiny_onnx))
    dim = proto.graph.input[0].type.tensor_type.shape.dim[dimension]
    dim.Clear()
    dim.dim_value = value
    path = tmp_path / "static.onnx"
    onnx.save(proto, str(path))
    result = runner.invoke(app, ["predict", str(images[0]), "--model", str(path)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "Traceback" not in result.output
    if dimension == 0:  # (a 1-channel graph may already fail ONNX Runtime's own load checks, also exit 2)
        assert message in result.output
        with pytest.raises(ModelFileError, match=message):
            read_model_info(path)  # what bench and serve open models with


# ------------------------------------------------------------------------------------------ hostile paths


def test_a_file_name_that_is_not_utf8_gets_its_row_in_csv(tiny_onnx, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    smooth_rgb(20, 20).save(folder / "plain.png")
    odd = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes in a POSIX file name
    smooth_rgb(21, 20).save(folder / odd)
    out = tmp_path / "rows.csv"
    result = runner.invoke(app, ["predict", str(folder), "--model", str(tiny_onnx), "--format", "csv", "-o", str(out)])
    assert result.exit_code == EXIT_OK, result.output
    rows = list(csv.DictReader(out.read_text(encoding="utf-8").splitlines()))
    assert sorted(Path(r["path"]).name for r in rows) == ["caf\\xe9.png", "plain.png"]
    assert all(r["ok"] == "True" for r in rows)


def test_recursive_globs_end_on_link_cycles_and_list_each_file_once(tiny_onnx, tmp_path):
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    smooth_rgb(20, 20).save(root / "a" / "one.png")
    smooth_rgb(22, 20).save(root / "a" / "b" / "two.png")
    (root / "a" / "b" / "up").symlink_to(root / "a")  # a cycle
    (root / "a" / "loop").symlink_to(root)  # and another
    code = ("import sys, json; from vitdeploy.core.inputs import expand_inputs; "
            "print(json.dumps([str(p) for p in expand_inputs(sys.argv[1:], recursive=True)[0]]))")
    done = subprocess.run([sys.executable, "-c", code, f"{root}/**/*.png", str(root)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert sorted(Path(p).name for p in found) == ["one.png", "two.png"]  # once each, by resolved path


def test_output_to_a_fifo_does_not_deadlock(tiny_onnx, images, tmp_path):
    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    done = subprocess.run([sys.executable, "-m", "vitdeploy", "predict", *map(str, images), "--model",
                           str(tiny_onnx), "--format", "jsonl", "-o", str(fifo)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    reader.join(timeout=30)
    assert done.returncode == EXIT_OK, done.stderr
    assert len(received[0].splitlines()) == len(images)


# ------------------------------------------------------------------------------------------ full disks


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs, where the test machine lets us mount one (root on Linux)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_predict_on_a_full_disk_exits_2_naming_the_file_and_keeps_every_complete_row(tiny_onnx, small_disk,
                                                                                      tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(300):
        smooth_rgb(16, 16, seed=i).save(folder / f"image-with-a-long-name-to-fill-the-disk-{i:04d}.png")
    out = small_disk / "rows.jsonl"
    result = runner.invoke(app, ["predict", str(folder), "--model", str(tiny_onnx), "--format", "jsonl",
                                 "--batch-size", "8", "-o", str(out)])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert f"cannot write {out}: no space left on device" in result.output and "Traceback" not in result.output
    lines = out.read_text().splitlines()
    assert lines and len(lines) % 8 == 0  # whole batches only
    assert all(strict_loads(line)["ok"] for line in lines)  # no row cut in half


# ------------------------------------------------------------------------------------------ external data


def test_predict_runs_vitdeploys_own_external_data_check(tiny_bundle, images, tmp_path, monkeypatch):
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    from vitdeploy.exporting import exporter as onnx_export
    from vitdeploy.files import onnx_file, onnx_wire

    monkeypatch.setattr(onnx_file, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)  # as if the model were over 2 GB
    path = onnx_export.export_onnx(tiny_bundle, tmp_path / "deploy" / "m.onnx", verify=False).path
    proto = onnx.load(str(path), load_external_data=False)
    expected = [(t.name, ExternalDataInfo(t).location) for t in proto.graph.initializer if uses_external_data(t)]
    # The wire-format reader (no onnx package needed) sees what onnx sees.
    assert expected and onnx_wire.external_data_locations(path.read_bytes()) == expected
    assert runner.invoke(app, ["predict", str(images[0]), "--model", str(path)]).exit_code == EXIT_OK
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../m.onnx.data"
    onnx.save(proto, str(path))
    (tmp_path / "m.onnx.data").write_bytes((tmp_path / "deploy" / "m.onnx.data").read_bytes())
    result = runner.invoke(app, ["predict", str(images[0]), "--model", str(path)])
    assert result.exit_code == EXIT_BAD_INPUT and "outside the model's folder" in result.output
    with pytest.raises(ValueError):
        onnx_wire.external_data_locations(b"\x0f\xff\xff")  # not a protobuf message


# ------------------------------------------------------------------------------------------ bundles


def save_and_die(folder: Path, die_at: int) -> None:
    """In a forked child: save a new bundle over `folder`, SIGKILLed at its `die_at`-th rename. A fork, not a fresh
    interpreter: torch is already imported (a new Python spent ~1.5 s of CPU on it, four times a test)."""
    import signal

    import torch
    from builders import TINY

    from vitdeploy.files.bundle import load_bundle, save_bundle
    from vitdeploy.model.vit import build_model

    _, info = load_bundle(folder)
    renames = 0
    real_replace = os.replace

    def replace_or_die(*args, **kwargs):
        nonlocal renames
        renames += 1
        if renames == die_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: as a power cut or the OOM killer would
        return real_replace(*args, **kwargs)

    os.replace = replace_or_die  # in the child only
    torch.manual_seed(99)
    save_bundle(folder, build_model(TINY), info, train_state={"epoch": 2})


def run_forked(target, *args) -> int:
    """Run `target(*args)` in a forked child; its exit code (-9: SIGKILL)."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(120)
    assert child.exitcode is not None, "the child did not finish in 120 s"
    return child.exitcode


@pytest.mark.slow
def test_a_save_killed_before_any_of_its_renames_leaves_the_previous_bundle(tmp_path):
    import torch
    from builders import make_bundle

    from vitdeploy.files.bundle import load_bundle, load_train_state, save_bundle

    folder = make_bundle(tmp_path / "last")
    model, info = load_bundle(folder)
    save_bundle(folder, model, info, train_state={"epoch": 1})
    # One save renames each of its files once: weights, train state, config.json.
    for die_at in (1, 2, 3):
        assert run_forked(save_and_die, folder, die_at) == -9  # SIGKILL
        reloaded, _ = load_bundle(folder)  # the previous bundle, whole
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
        assert load_train_state(folder)["epoch"] == 1
    assert list(folder.glob(".*.tmp"))  # the killed saves left temporaries behind ...
    assert run_forked(save_and_die, folder, 4) == 0  # three renames were all there were: the fourth never comes
    assert load_train_state(folder)["epoch"] == 2  # and the save that completed is the bundle now
    save_bundle(folder, model, info, train_state={"epoch": 3})
    assert not list(folder.glob(".*.tmp"))  # ... which the next save removes
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.json", *info.files.values()])


def test_a_bundle_saved_before_content_named_files_still_loads(tmp_path):
    from builders import make_bundle

    from vitdeploy.files.bundle import bundle_file, load_bundle

    folder = make_bundle(tmp_path / "b")
    config = json.loads((folder / "config.json").read_text())
    os.replace(bundle_file(folder, "weights"), folder / "model.safetensors")
    del config["files"]
    (folder / "config.json").write_text(json.dumps(config))
    model, info = load_bundle(folder)
    assert info.files["weights"] == "model.safetensors"


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_weights_are_named_as_such_not_as_a_mixed_save(tmp_path, damage):
    from builders import make_bundle

    from vitdeploy.files.bundle import BundleError, bundle_file, load_bundle

    folder = make_bundle(tmp_path / "b")
    weights = bundle_file(folder, "weights")
    weights.write_bytes(b"" if damage == "empty" else weights.read_bytes()[:1000])
    with pytest.raises(BundleError, match="is empty" if damage == "empty" else "truncated or corrupt") as caught:
        load_bundle(folder)
    assert "two saves" not in str(caught.value)


def test_a_pickled_train_state_is_refused_without_passing_on_torchs_advice(tmp_path):
    import pickle

    from builders import make_bundle

    from vitdeploy.files.bundle import BundleError, bundle_file, load_bundle, load_train_state, save_bundle

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    folder = make_bundle(tmp_path / "b")
    model, info = load_bundle(folder)
    save_bundle(folder, model, info, train_state={"epoch": 1})
    import torch

    torch.save({"epoch": 1, "evil": Payload()}, bundle_file(folder, "train_state"), pickle_module=pickle)
    with pytest.raises(BundleError, match="refusing .*pickled objects") as caught:
        load_train_state(folder)
    assert "weights_only" not in str(caught.value) and "False" not in str(caught.value)


@pytest.mark.slow
def test_training_onto_a_full_disk_exits_2_naming_the_file(small_disk):
    result = runner.invoke(app, ["train", "--preset", "tiny", "--epochs", "1", "--out", str(small_disk / "run")])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "no space left on device" in result.output and "Traceback" not in result.output
    leftovers = [p for p in (small_disk / "run").rglob("*") if p.is_file()]
    assert not [p for p in leftovers if p.name.endswith(".tmp")] and not [p for p in leftovers if
                                                                           p.name == "config.json"]


def test_export_onto_a_full_disk_exits_2_and_writes_nothing(tiny_bundle, small_disk):
    result = runner.invoke(app, ["export", str(tiny_bundle), "-o", str(small_disk / "model.onnx")])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert f"cannot write {small_disk / 'model.onnx'}: no space left on device" in result.output
    assert list(small_disk.iterdir()) == []


def test_an_empty_class_folder_is_named_not_dropped(tmp_path):
    root = tmp_path / "photos"
    for name, count in (("cat", 3), ("dog", 3), ("bird", 0)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            smooth_rgb(20, 20, seed=i).save(root / name / f"{i}.png")
    result = runner.invoke(app, ["train", "--data", str(root), "--epochs", "1", "--preset", "tiny"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "bird" in result.output and "no images" in result.output


def test_the_server_never_answers_nan(nan_onnx, images):
    """/classify gives a non_finite row per image; /v2 infer an error, never a NaN in its JSON."""
    import http.client

    pytest.importorskip("uvicorn")
    from builders import running_server

    from vitdeploy.serving.protocol import build_infer_request

    with running_server(nan_onnx) as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)

        def post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read().decode()
            finally:
                conn.close()

        status, text = post("/classify", images[0].read_bytes(), {"content-type": "image/png"})
        assert status == 200 and strict_loads(text)["predictions"][0]["error"] == "non_finite"
        body, headers = build_infer_request(np.zeros((1, 3, 16, 16), np.float32), binary=False)
        status, text = post("/v2/models/nan/infer", body, headers)
        assert status == 500 and strict_loads(text)["kind"] == "non_finite"


def test_a_bundles_first_save_interrupted_leaves_no_folder(tmp_path, monkeypatch):
    """As train's first save of best/ under Ctrl-C: no empty best/ behind; a killed one's staging is cleaned up."""
    from builders import make_bundle

    from vitdeploy.files.bundle import load_bundle, save_bundle

    model, info = load_bundle(make_bundle(tmp_path / "source"))
    best = tmp_path / "run" / "best"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            save_bundle(best, model, info)
    assert not best.exists() and list((tmp_path / "run").iterdir()) == []
    (tmp_path / "run" / ".best.abcd1234.tmp").mkdir()  # what a SIGKILL in the same place leaves
    save_bundle(best, model, info)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best"]
    load_bundle(best)


# ----------------------------------------------------------------------------- import: sizes from untrusted files


def rewrite_config(hf_checkpoint: Path, folder: Path, **changes) -> Path:
    shutil.copytree(hf_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def never_build(*args, **kwargs):
    raise AssertionError("a model was built before the config was checked against the weights")


WIDE = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}


@pytest.mark.parametrize("changes, named", [
    ({"num_hidden_layers": 10000}, "num_hidden_layers is 10000, but the weights hold 2 blocks"),
    ({"num_hidden_layers": 10000, **WIDE}, "num_hidden_layers is 10000, but the weights hold 2 blocks"),
    (WIDE, "hidden_size is 768, but the weights hold vit.embeddings.cls_token (1, 1, 48)"),
    ({"image_size": 4096}, "image_size is 4096, but the weights hold vit.embeddings.position_embeddings (1, 17, 48)"),
    ({"patch_size": 2}, "patch_size is 2, but the weights hold"),
    ({"num_channels": 100000}, "num_channels is 100000"),
    ({"intermediate_size": 480000}, "intermediate_size is 480000 wide"),
], ids=["depth", "depth-and-width", "width", "image_size", "patch_size", "channels", "mlp"])
def test_a_config_asking_for_more_than_the_weights_hold_is_refused_by_field_before_any_model_is_built(
        hf_checkpoint, tmp_path, monkeypatch, changes, named):
    import vitdeploy.pretrained
    import vitdeploy.pretrained.common
    from vitdeploy import import_model
    from vitdeploy.errors import CheckpointError

    folder = rewrite_config(hf_checkpoint, tmp_path / "hf", **changes)
    if "image_size" in changes:  # else preprocessor_config.json's 32 px refuses it first (as rightly)
        (folder / "preprocessor_config.json").unlink()
    monkeypatch.setattr(vitdeploy.pretrained, "build_model", never_build)
    monkeypatch.setattr(vitdeploy.pretrained.common, "build_model", never_build)
    with pytest.raises(CheckpointError, match=re.escape(named)):
        import_model(folder, tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("value", [0, -3, "32", True, 1.5])
def test_a_size_that_is_not_a_positive_integer_is_named_as_its_field(hf_checkpoint, tmp_path, value):
    folder = rewrite_config(hf_checkpoint, tmp_path / "hf", image_size=value)
    done = runner.invoke(app, ["import", str(folder), "-o", str(tmp_path / "b")])
    assert done.exit_code == EXIT_BAD_INPUT, done.output
    assert f"image_size {value!r} is not a positive integer" in done.output


def test_a_timm_config_asking_for_more_blocks_than_the_weights_hold_is_refused(hf_checkpoint, tmp_path):
    from checkpoints import save_timm, timm_state_dict

    config = {"architecture": "vit_tiny_patch16_224",
              "model_args": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 10000, "num_heads": 3}}
    path = save_timm(timm_state_dict(hf_checkpoint), tmp_path / "timm" / "model.safetensors", config)
    done = runner.invoke(app, ["import", str(path), "-o", str(tmp_path / "b")])
    assert done.exit_code == EXIT_BAD_INPUT, done.output
    assert "model_args depth is 10000, but the weights hold 2 blocks" in done.output


def test_a_plain_pickle_is_refused_in_vitdeploys_words_only(tmp_path):
    import pickle
    import warnings

    from vitdeploy import import_model
    from vitdeploy.errors import CheckpointError

    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="not a pickle of tensors"):
            import_model(tmp_path / "plain.pth", tmp_path / "b", timm_model="vit_tiny_patch16_224")
    assert [str(w.message) for w in caught] == []


def test_a_safetensors_header_that_lies_about_its_length_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes((10 ** 12).to_bytes(8, "little") + b"{}")
    done = runner.invoke(app, ["import", str(path), "--timm-model", "vit_tiny_patch16_224", "-o", str(tmp_path / "b")])
    assert done.exit_code == EXIT_BAD_INPUT, done.output
    assert "not a safetensors file" in done.output


# ------------------------------------------------------------------------------------------ issue 30: output folders
# One rule for every folder vitdeploy writes: what vitdeploy did not write is never deleted, and --force never turns
# a user's folder into one that a later run may replace.

needs_ort_web = pytest.mark.skipif(toolchain.ort_web_dist() is None, reason="onnxruntime-web is not installed (.ci/run installs it with npm)")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_ort_web
def test_web_force_into_a_users_folder_does_not_make_it_vitdeploys(tiny_onnx, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "keep.txt").write_text("k\n")
    assert runner.invoke(app, ["web", str(tiny_onnx), "-o", str(folder), "--force"]).exit_code == EXIT_OK
    again = runner.invoke(app, ["web", str(tiny_onnx), "-o", str(folder)])  # no --force: still the user's folder
    assert again.exit_code == EXIT_BAD_INPUT and "keep.txt" in again.output
    assert (folder / "keep.txt").read_text() == "k\n"
    assert runner.invoke(app, ["web", str(tiny_onnx), "-o", str(folder), "--force"]).exit_code == EXIT_OK
    assert (folder / "keep.txt").read_text() == "k\n"


@needs_ort_web
def test_web_never_deletes_what_a_user_added_to_its_folder(tiny_onnx, tmp_path):
    web = tmp_path / "web"
    assert runner.invoke(app, ["web", str(tiny_onnx), "-o", str(web)]).exit_code == EXIT_OK
    (web / "photos").mkdir()
    (web / "photos" / "a.txt").write_text("x")
    before = _tree(web)
    result = runner.invoke(app, ["web", str(tiny_onnx), "-o", str(web)])
    assert result.exit_code == EXIT_BAD_INPUT and "photos/" in result.output
    assert _tree(web) == before
    assert runner.invoke(app, ["web", str(tiny_onnx), "-o", str(web), "--force"]).exit_code == EXIT_OK
    assert (web / "photos" / "a.txt").read_text() == "x"


@needs_ort_web
def test_web_to_a_dangling_symlink_is_refused_in_one_line(tiny_onnx, tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    result = runner.invoke(app, ["web", str(tiny_onnx), "-o", str(tmp_path / "dangling")])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "symbolic link" in result.output and "Traceback" not in result.output
    assert (tmp_path / "dangling").is_symlink() and not (tmp_path / "nowhere").exists()


@needs_ort_web
def test_web_writes_through_a_symlink_to_a_folder(tiny_onnx, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for _ in range(2):  # the first run writes the folder, the second replaces it: the link stays a link
        assert runner.invoke(app, ["web", str(tiny_onnx), "-o", str(tmp_path / "link")]).exit_code == EXIT_OK
        assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "index.html").is_file()


def test_every_folder_output_refuses_a_dangling_symlink(tmp_path):
    from vitdeploy.files.outputs import KINDS, check_output_folder

    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for kind in KINDS:
        with pytest.raises(InputError, match="symbolic link"):
            check_output_folder(tmp_path / "dangling", kind, force=True)


def test_triton_never_deletes_what_a_user_added_to_a_model_folder(tiny_onnx, tmp_path):
    repo = tmp_path / "repo"
    assert runner.invoke(app, ["triton", str(tiny_onnx), "--out", str(repo), "--name", "m"]).exit_code == EXIT_OK
    (repo / "m" / "notes.txt").write_text("mine")
    (repo / "m" / "2").mkdir()
    (repo / "m" / "2" / "model.onnx").write_bytes(b"a version the user placed")
    for force in ([], ["--force"]):
        result = runner.invoke(app, ["triton", str(tiny_onnx), "--out", str(repo), "--name", "m", *force])
        assert result.exit_code == EXIT_BAD_INPUT, result.output
        assert "notes.txt" in result.output and "Traceback" not in result.output
    assert (repo / "m" / "notes.txt").read_text() == "mine" and (repo / "m" / "2" / "model.onnx").is_file()


# ------------------------------------------------------------------------------------------ issue 30: --resume


def test_resume_refuses_a_jsonl_file_that_predict_did_not_write(tiny_onnx, images, tmp_path):
    for text in ("my notes\n", "my notes", '{"a": 1}\n', "\n"):
        notes = tmp_path / "notes.jsonl"
        notes.write_text(text)
        result = runner.invoke(app, ["predict", str(images[0]), "--format", "jsonl", "-o", str(notes), "--resume",
                                     "--model", str(tiny_onnx)])
        assert result.exit_code == EXIT_BAD_INPUT, (text, result.output)
        assert "not a file of predict rows" in result.output and notes.read_text() == text


def test_resume_keeps_a_row_a_killed_run_left_unfinished_out(tiny_onnx, images, tmp_path):
    out = tmp_path / "rows.jsonl"
    assert runner.invoke(app, ["predict", str(images[0]), "--format", "jsonl", "-o", str(out),
                               "--model", str(tiny_onnx)]).exit_code == EXIT_OK
    first = out.read_text()
    out.write_text(first + first[:30])  # a batch cut off mid-line by SIGKILL
    assert runner.invoke(app, ["predict", *map(str, images[:2]), "--format", "jsonl", "-o", str(out), "--resume",
                               "--model", str(tiny_onnx)]).exit_code == EXIT_OK
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == [images[0].name, images[1].name]


@pytest.fixture(scope="module")
def other_onnx(tiny_onnx, tmp_path_factory) -> Path:
    """The tiny model under another name with one more metadata entry: the same answers, other bytes."""
    proto = onnx.load(str(tiny_onnx))
    proto.metadata_props.add(key="note", value="another file")
    path = tmp_path_factory.mktemp("other") / "other.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_rows_name_their_model_and_resume_refuses_another(tiny_onnx, other_onnx, images, tmp_path, output_format):
    import hashlib

    out = tmp_path / f"r.{output_format}"
    common = ["--format", output_format, "-o", str(out)]
    assert runner.invoke(app, ["predict", str(images[0]), *common, "--model", str(tiny_onnx)]).exit_code == EXIT_OK
    before = out.read_bytes()
    result = runner.invoke(app, ["predict", *map(str, images[:2]), *common, "--resume", "--model", str(other_onnx)])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "tiny.onnx" in result.output and "other.onnx" in result.output and out.read_bytes() == before
    assert runner.invoke(app, ["predict", *map(str, images[:2]), *common, "--resume",
                               "--model", str(tiny_onnx)]).exit_code == EXIT_OK
    if output_format == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        rows = table.to_pylist()
        assert table.schema.metadata[b"vitdeploy.model_sha256"].decode() == hashlib.sha256(
            tiny_onnx.read_bytes()).hexdigest()
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    assert {(r["model"], r["model_sha256"]) for r in rows} == {
        ("tiny.onnx", hashlib.sha256(tiny_onnx.read_bytes()).hexdigest())}


# ------------------------------------------------------------------------------------------ issue 30: leftovers


WEB_CHILD = """
import sys, numpy as np
from vitdeploy.errors import DeviceError
from vitdeploy.runtimes import open_runtime
from vitdeploy.runtimes.web.driver import group_processes
session = open_runtime("web", sys.argv[1], "wasm", threads=1)
pid = session.browser.process.pid
renderer = next(p for p, args in group_processes(pid) if "--type=renderer" in args)
print(pid, renderer, session.browser.profile, flush=True)
sys.stdin.readline()  # the test kills us, or the renderer, meanwhile
try:
    session.run(np.zeros((1, 3, 16, 16), np.float32))
except DeviceError as e:
    print("DeviceError:", e, flush=True)
    sys.exit(2)
"""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _start_web_child(tiny_onnx):
    child = subprocess.Popen([sys.executable, "-c", WEB_CHILD, str(tiny_onnx)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    line = child.stdout.readline().split()
    assert line, "the child did not open a web session"
    return child, int(line[0]), int(line[1]), Path(line[2])


@needs_ort_web
@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_killed_vitdeploy_leaves_no_browser_and_no_profile(tiny_onnx, sig):
    import signal

    child, browser, _, profile = _start_web_child(tiny_onnx)
    assert _group_alive(browser) and profile.is_dir()
    child.send_signal(getattr(signal, sig))
    child.wait(timeout=60)
    assert wait_until(lambda: not _group_alive(browser) and not profile.exists()), "the browser outlived vitdeploy"


@needs_ort_web
@pytest.mark.slow
def test_a_crashed_renderer_is_a_device_error_not_a_hang(tiny_onnx):
    import signal

    child, browser, renderer, profile = _start_web_child(tiny_onnx)
    os.kill(renderer, signal.SIGKILL)
    out, _ = child.communicate("go\n", timeout=120)  # before the fix: no answer, ever
    assert child.returncode == EXIT_BAD_INPUT and "DeviceError:" in out and "renderer" in out, out
    assert wait_until(lambda: not _group_alive(browser) and not profile.exists())


def test_a_page_that_goes_away_mid_request_prints_no_traceback(monkeypatch, capfd):
    """The browser is closed while the page's api/next request waits for a job: its connection is reset, and
    the server's answer to it must not print a ConnectionResetError traceback over a run that succeeded."""
    import socket
    import struct
    import time

    from vitdeploy.runtimes.web import driver

    monkeypatch.setattr(driver, "POLL_S", 0.3)
    server = driver._Server({}, driver._Broker())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for _ in range(3):
            client = socket.create_connection(server.server_address)
            client.sendall(b"GET /api/next HTTP/1.1\r\nHost: x\r\n\r\n")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset, as a killed renderer's socket gives
        time.sleep(1.0)  # the handlers answer after POLL_S, into the reset connections
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err


# ------------------------------------------------------------------------------------------ issue 30: Ray


def test_an_address_where_no_ray_answers_is_exit_2_naming_it(tiny_onnx, images, tmp_path):
    done = subprocess.run([sys.executable, "-m", "vitdeploy", "predict", str(images[0]), "--engine", "ray",
                           "--address", "127.0.0.1:1", "--format", "parquet", "-o", str(tmp_path / "r.parquet"),
                           "--model", str(tiny_onnx)], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # before the fix: retried for minutes
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert "127.0.0.1:1" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r.parquet").exists()


def test_resume_with_nothing_left_starts_no_ray(tiny_onnx, images, tmp_path, monkeypatch):
    import ray

    from vitdeploy.prediction import ray as ray_prediction

    out = tmp_path / "r.parquet"
    assert runner.invoke(app, ["predict", *map(str, images), "--format", "parquet", "-o", str(out),
                               "--model", str(tiny_onnx)]).exit_code == EXIT_OK
    before = out.read_bytes()

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started with nothing left to predict")

    monkeypatch.setattr(ray_prediction, "connect", no_ray)
    result = runner.invoke(app, ["predict", *map(str, images), "--engine", "ray", "--resume", "--format", "parquet",
                                 "-o", str(out), "--model", str(tiny_onnx)])
    assert result.exit_code == EXIT_OK, result.output
    assert "nothing left to predict" in result.output and not ray.is_initialized()
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == len(images) and len(before) > 0


@pytest.mark.parametrize("asked, files, uris, model_mb, free_mb, expected", [
    (16, 8, False, 1, 64_000, 1),      # 8 images are one batch of 32: one actor has all the work
    (16, 100, False, 1, 64_000, 4),    # 4 batches
    (16, 100, True, 1, 64_000, 16),    # a URI: its files are counted by Ray, not here
    (100, 10_000, False, 330, 24_000, 12),  # memory: ViT-B actors (~1.7 GB each) in 90% of 24 GB
    (4, 10_000, False, 1, 100, 1),     # at least one
])
def test_ray_actors_are_capped_by_the_work_and_the_memory(asked, files, uris, model_mb, free_mb, expected):
    from vitdeploy.prediction.ray import actor_count

    assert actor_count(asked, files, uris, 32, model_mb * 2**20, free_mb * 2**20) == expected


def test_the_ray_extra_brings_what_the_documented_ray_address_needs():
    """docs/scale.md and --help show --address ray://head:10001, which needs Ray Client (`ray[client]`)."""
    import tomllib

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert any(re.match(r"ray\[[^\]]*\bclient\b", requirement) for requirement in extra), extra
    assert "ray://" in (REPO / "docs" / "scale.md").read_text()


# ------------------------------------------------------------------------------------------ issue 30: bad input


@pytest.mark.parametrize("uri", [b"s3://b/x\x7fy", "s3://b/x\u0085y".encode(), b"s3://b/\xff\xfe", b"s3://b/a\nb: c"])
def test_a_storage_uri_yaml_cannot_hold_is_refused_before_anything_is_written(tiny_onnx, tmp_path, uri):
    out = tmp_path / "k"
    done = subprocess.run([os.fsencode(sys.executable), b"-m", b"vitdeploy", b"triton", os.fsencode(tiny_onnx),
                           b"-o", os.fsencode(out), b"--storage-uri", uri], capture_output=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == EXIT_BAD_INPUT, err
    assert "--storage-uri" in err and "Traceback" not in err
    assert not out.exists()


def test_a_storage_uri_of_printable_characters_reads_back_as_written(tiny_onnx, tmp_path):
    import yaml

    uri = 's3://bucket/models "x" #1: a-b'
    assert runner.invoke(app, ["triton", str(tiny_onnx), "-o", str(tmp_path / "k"), "--storage-uri", uri]).exit_code == 0
    service = yaml.safe_load((tmp_path / "k" / "inferenceservice.yaml").read_text())
    assert service["spec"]["predictor"]["model"]["storageUri"] == uri


@pytest.mark.parametrize("body", [b"[" * 50_000, b'{"inputs": ' + b"[" * 50_000,
                                  json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, 3, 4, 4],
                                                          "datatype": "FP32", "data": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
                                                          [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1.0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
                                                          ]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]}).encode()],
                         ids=["lists", "object", "data-70-deep"])
def test_deeply_nested_json_is_a_400_not_a_500(body):
    from vitdeploy.errors import RequestError
    from vitdeploy.serving.protocol import ModelSignature, parse_infer_request

    with pytest.raises(RequestError) as caught:
        parse_infer_request(body, None, ModelSignature("tiny", (3, 4, 4), num_classes=3, max_batch_size=8))
    assert caught.value.status == 400 and "nested" in caught.value.message


@pytest.mark.parametrize("content", [b'{"format": "vitdeploy-bundle", "model": {}}\n', b"", b"\x08\x07garbage"])
def test_verify_on_a_file_that_is_not_onnx_is_one_line_exit_2(tiny_bundle, tmp_path, content):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    result = runner.invoke(app, ["verify", str(path), "--bundle", str(tiny_bundle)])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "Traceback" not in result.output and "ONNX model" in result.output


# ------------------------------------------------------------------------------------------ issue 30: a newcomer


@pytest.fixture()
def class_folders(tmp_path) -> Path:
    photos = tmp_path / "photos"
    for label in ("cat", "dog"):
        (photos / label).mkdir(parents=True)
        for i in range(3):
            smooth_rgb(20, 18, seed=i).save(photos / label / f"{i}.png")
    return photos


def test_predict_on_class_folders_says_how_many_images_are_below_and_to_add_recursive(tiny_onnx, class_folders):
    result = runner.invoke(app, ["predict", str(class_folders), "--model", str(tiny_onnx)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "6 images below" in result.output and "--recursive" in result.output


def test_bench_end_to_end_takes_recursive(tiny_onnx, class_folders):
    quick = ["--warmup-iters", "0", "--warmup-seconds", "0", "--min-iters", "1", "--min-seconds", "0",
             "--threads", "1", "--block-idle", "0", "--variants", "ort-cpu", "--batch-sizes", "2"]
    refused = runner.invoke(app, ["bench", str(tiny_onnx), "--end-to-end", str(class_folders), *quick])
    assert refused.exit_code == EXIT_BAD_INPUT and "--recursive" in refused.output
    result = runner.invoke(app, ["bench", str(tiny_onnx), "--end-to-end", str(class_folders), "--recursive", *quick,
                                 "--json"])
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout)["end_to_end"]["images"] == 6


def test_export_of_a_run_folder_suggests_its_best_bundle(tiny_bundle, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_bundle, run / "best")
    result = runner.invoke(app, ["export", str(run), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == EXIT_BAD_INPUT and f"{run / 'best'}" in result.output, result.output


def test_verify_of_a_folder_suggests_the_model_file_in_it(tiny_onnx, tmp_path):
    folder = tmp_path / "best"
    folder.mkdir()
    shutil.copy(tiny_onnx, folder / "model.onnx")
    result = runner.invoke(app, ["verify", str(folder)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "no such model file" not in result.output and str(folder / "model.onnx") in result.output, result.output


def test_predict_into_a_folder_says_the_output_is_a_folder(tiny_onnx, images):
    folder = images[0].parent
    result = runner.invoke(app, ["predict", str(folder), "-o", str(folder), "--model", str(tiny_onnx)])
    assert result.exit_code == EXIT_BAD_INPUT and "is a folder" in result.output and "--format" not in result.output


@pytest.mark.parametrize("command", ["bench", "triton", "predict", "web"])
def test_with_no_model_the_message_names_how_this_command_takes_one(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # no models/ here
    smooth_rgb(20, 20).save(tmp_path / "x.png")
    args = {"predict": ["predict", "x.png"], "triton": ["triton", "-o", "k"]}.get(command, [command])
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert ("--model FILE" in result.output) == (command == "predict"), result.output


def test_resuming_a_finished_run_says_nothing_was_left_and_how_to_train_further(tmp_path, caplog):
    import logging

    from vitdeploy.training.run import TrainRequest, train

    train(TrainRequest(preset="tiny", out=tmp_path / "r", epochs=1))
    before = _tree(tmp_path / "r")
    with caplog.at_level(logging.INFO):
        result = train(TrainRequest(resume=tmp_path / "r" / "last"))
    said = caplog.text
    assert "nothing left to train" in said and "--init" in said and "--epochs" in said, said
    assert "at epoch 2" not in said and not result.interrupted and result.epochs == 1
    assert _tree(tmp_path / "r") == before  # nothing rewritten


def test_help_shows_flags_without_a_value_type():
    for command in ("predict", "bench", "train", "explain"):
        result = runner.invoke(app, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, command
    assert "<int>" in runner.invoke(app, ["predict", "--help"], terminal_width=200).output  # values keep theirs


def test_explain_class_says_which_class_it_explained(tiny_bundle, images, tmp_path):
    pytest.importorskip("matplotlib")
    result = runner.invoke(app, ["explain", str(images[0]), "--bundle", str(tiny_bundle), "--method", "grad-rollout",
                                 "--class", "bird", "-o", str(tmp_path / "maps"), "--json"])
    assert result.exit_code == EXIT_OK, result.output
    assert "class bird" in result.stderr
    assert [row["explained_class"] for row in json.loads(result.stdout)["results"]] == ["bird"]


# ------------------------------------------------------------------------------------------ issue 30: import probes


class _Writes:
    """Unpickling this creates a file: proof of whether anything unpickled a checkpoint."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_only_checkpoint_is_refused_without_running_it(tmp_path):
    import pickle

    marker = tmp_path / "ran"
    (tmp_path / "model.pth").write_bytes(pickle.dumps({"cls_token": _Writes(str(marker))}, protocol=4))
    done = subprocess.run([sys.executable, "-m", "vitdeploy", "import", str(tmp_path / "model.pth"), "--timm-model",
                           "vit_tiny_patch16_224", "-o", str(tmp_path / "b")], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == EXIT_BAD_INPUT and "Traceback" not in done.stderr, done.stderr
    assert not marker.exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("header, size", [
    ({"cls_token": {"dtype": "F32", "shape": [1, 1, 48], "data_offsets": [0, 2 ** 40]}}, 100),  # past the end
    ({"cls_token": {"dtype": "F32", "shape": [2 ** 20, 2 ** 20, 48], "data_offsets": [0, 192]}}, 192),  # shape
    ({"cls_token": {"dtype": "F32", "shape": [1, 1, 48], "data_offsets": [192, 0]}}, 192),  # backwards
], ids=["offsets-past-the-end", "shape-larger-than-its-bytes", "offsets-backwards"])
def test_a_safetensors_header_out_of_range_is_refused_before_reading(tmp_path, header, size):
    raw = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * size)
    done = runner.invoke(app, ["import", str(path), "--timm-model", "vit_tiny_patch16_224", "-o", str(tmp_path / "b")])
    assert done.exit_code == EXIT_BAD_INPUT, done.output
    assert "Traceback" not in done.output and not (tmp_path / "b").exists()


@pytest.mark.parametrize("field_name, value", [("hidden_size", 2 ** 31), ("image_size", 10 ** 9),
                                               ("intermediate_size", 2 ** 40), ("patch_size", -16)])
def test_absurd_config_sizes_are_refused_in_one_line(hf_checkpoint, tmp_path, field_name, value):
    folder = tmp_path / "hf"
    shutil.copytree(hf_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config[field_name] = value
    (folder / "config.json").write_text(json.dumps(config))
    done = runner.invoke(app, ["import", str(folder), "-o", str(tmp_path / "b")])
    assert done.exit_code == EXIT_BAD_INPUT, done.output
    assert len(done.output.strip().splitlines()) == 1 and str(value) in done.output, done.output  # one line
    assert not (tmp_path / "b").exists()


def test_bench_never_builds_an_int8_bf16_file_on_a_cpu_without_bf16():
    """Found by running bench.md's `vitdeploy bench --preset vit-ti16` on an Ice Lake (no AVX512_BF16, no AMX):
    it tried to build model.ov-int8-bf16.onnx and exited 2. Its unquantized ops run in bf16: a variant for CPUs
    that have it (main's machine record now says so; this keeps it said)."""
    from machines import fake_machine

    from vitdeploy.exporting.capabilities import bench_problem
    from vitdeploy.files.variants import VARIANTS

    ice_lake = fake_machine("avx512_vnni")
    assert "bf16" in (bench_problem(VARIANTS["ov-cpu-int8-bf16"], ice_lake) or "")
    assert bench_problem(VARIANTS["ov-cpu-int8"], ice_lake) is None
    assert bench_problem(VARIANTS["ov-cpu-int8-bf16"], fake_machine("amx")) is None

def test_a_page_that_stops_claiming_jobs_is_a_device_error_in_seconds(monkeypatch, tmp_path):
    """Finding 5's silent page: a browser that is alive but whose page never takes the job from api/next (a hung
    script, a frozen tab) fails the call once the job has waited two polls unclaimed, instead of hanging."""
    import time

    from vitdeploy.errors import DeviceError
    from vitdeploy.runtimes.web import driver

    monkeypatch.setattr(driver, "CLAIM_TIMEOUT_S", 1.0)

    class AliveProcess:
        returncode = None

        def poll(self) -> None:
            return None

    browser = driver.Browser.__new__(driver.Browser)  # the parts call() reads, without starting Chromium
    browser.broker, browser.process, browser.renderers = driver._Broker(), AliveProcess(), []
    browser.log_path = tmp_path / "browser.log"
    started = time.monotonic()
    with pytest.raises(DeviceError, match="stopped asking for work: a run job waited 1 s unclaimed"):
        browser.call({"op": "run"})
    assert time.monotonic() - started < 10

    # The page taking a job from api/next is what marks it claimed (then only the call's own timeout ends the wait).
    job_id, _ = browser.broker.submit({"op": "warm"}, None)
    taken = [json.loads(browser.broker.next_job()[1])["id"] for _ in range(2)]  # the stale run job, then this one
    assert taken[-1] == job_id and job_id in browser.broker.claimed
