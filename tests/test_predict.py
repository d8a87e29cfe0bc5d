"""vitdeploy predict: inputs, bad files, output formats, exit codes, batch independence, no torch."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import SPEC, WITHOUT_TRAINING_EXTRA, png_header_only, smooth_rgb
from PIL import Image
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.core.inputs import expand_inputs
from vitdeploy.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL
from vitdeploy.files.discovery import find_latest_model
from vitdeploy.prediction import local as predict_module
from vitdeploy.prediction.local import PredictRequest, predict
from vitdeploy.runtimes import ort as runtime
from vitdeploy.runtimes.ort import OrtSession

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def good_images(tmp_path_factory) -> list[Path]:
    """Eight different small images, one of them with spaces in its name."""
    folder = tmp_path_factory.mktemp("good")
    paths = []
    for i in range(8):
        path = folder / (f"my photo {i}.jpg" if i == 0 else f"img{i}.png")
        smooth_rgb(40 + 3 * i, 30 + 2 * i, seed=i).save(path)
        paths.append(path)
    return paths


def run(request: PredictRequest) -> list[dict]:
    """Run a --format jsonl request through the library and return the rows its output file holds."""
    assert request.output_format == "jsonl" and request.output is not None
    predict(request)
    return [json.loads(line) for line in request.output.read_text().splitlines()]


def cli(*args: str):
    return CliRunner().invoke(app, ["predict", *args])


# ------------------------------------------------------------------------------------- bad files, one row each


def test_every_bad_file_gets_one_error_row_and_the_rest_are_predicted(tmp_path, tiny_onnx, good_images):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("hello")
    jpeg = io.BytesIO()
    smooth_rgb(64, 64).save(jpeg, "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    png_header_only(folder / "bomb.png", 30_000, 30_000)
    smooth_rgb(32, 32).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)).save(folder / "gray16.png")
    palette = Image.new("P", (16, 16))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.save(folder / "palette.png", transparency=0)
    smooth_rgb(16, 16).convert("RGBA").save(folder / "rgba.png")
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    out = tmp_path / "rows.jsonl"

    result = cli(str(folder), "--model", str(tiny_onnx), "--format", "jsonl", "-o", str(out), "--batch-size", "4")

    assert result.exit_code == EXIT_PARTIAL, result.output
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == 9
    errors = {name: r["error"] for name, r in rows.items() if not r["ok"]}
    assert errors == {
        "empty.jpg": "empty", "text.jpg": "not_an_image", "truncated.jpg": "corrupt", "bomb.png": "decompression_bomb",
    }
    for name in ("cmyk.jpg", "gray16.png", "palette.png", "rgba.png", "anim.gif"):
        assert rows[name]["ok"] and rows[name]["label"] in ("cat", "dog", "bird")
    assert {r["provider"] for r in rows.values()} == {runtime.usable_providers()[0]}
    assert "5 images ok, 4 failed" in result.stderr


def test_exif_rotated_jpeg_predicts_like_the_image_rotated_by_hand(tmp_path, tiny_onnx):
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    tagged = tmp_path / "tagged.jpg"
    smooth_rgb(64, 40).save(tagged, "JPEG", quality=95, exif=exif.tobytes())
    stored_pixels = Image.open(tagged).convert("RGB")  # what the file holds, orientation not applied
    by_hand = tmp_path / "by_hand.png"
    stored_pixels.transpose(Image.Transpose.ROTATE_270).save(by_hand)
    unrotated = tmp_path / "unrotated.png"
    stored_pixels.save(unrotated)
    out = tmp_path / "rows.jsonl"

    rows = run(PredictRequest([str(tagged), str(by_hand), str(unrotated)], model=tiny_onnx,
                              output_format="jsonl", output=out))

    assert rows[0]["top_k"] == rows[1]["top_k"]
    assert rows[0]["top_k"] != rows[2]["top_k"]  # the model does see the rotation: the test is sensitive to it


def test_prediction_does_not_depend_on_batch_size_or_batch_neighbours(tmp_path, tiny_onnx, good_images):
    outputs = {}
    for batch_size, order in ((1, good_images), (3, good_images[::-1]), (32, good_images[2:] + good_images[:2])):
        out = tmp_path / f"b{batch_size}.jsonl"
        rows = run(PredictRequest([str(p) for p in order], model=tiny_onnx, batch_size=batch_size,
                                  output_format="jsonl", output=out, top_k=3))
        outputs[batch_size] = {r["path"]: r for r in rows}
    reference = outputs[1]
    assert len(reference) == len(good_images)
    for batch_size in (3, 32):
        for path, row in outputs[batch_size].items():
            assert row["label"] == reference[path]["label"]
            probabilities = [t["probability"] for t in row["top_k"]]
            expected = [t["probability"] for t in reference[path]["top_k"]]
            # fp32 GEMMs of different heights may round differently: 1e-6 after softmax, then 6-decimal rounding
            np.testing.assert_allclose(probabilities, expected, atol=3e-6)


def test_predict_input_tensor_equals_training_evaluation_tensor(tmp_path, tiny_onnx, monkeypatch):
    data = pytest.importorskip("vitdeploy.training.data")
    root = tmp_path / "data"
    for split in ("train", "val"):
        for label in ("cat", "dog", "bird"):
            (root / split / label).mkdir(parents=True)
    val_files = [root / "val" / "bird" / "big.jpg", root / "val" / "cat" / "wide.png", root / "val" / "dog" / "p.gif"]
    smooth_rgb(1200, 900).save(val_files[0], quality=90)  # a large JPEG: decoded in full by both
    smooth_rgb(70, 20, seed=1).save(val_files[1])
    smooth_rgb(30, 30, seed=2).save(val_files[2])
    for label in ("cat", "dog", "bird"):
        smooth_rgb(20, 20).save(root / "train" / label / "t.png")
    training = data.load_folder_data(root, SPEC, val_fraction=0.2, workers=2)
    split = data.scan_image_folder(root, 0.2)
    expected = {str(path): training.val_x[i].numpy() for i, (path, _) in enumerate(split.val)}

    fed: list[np.ndarray] = []
    real_run = OrtSession.run
    monkeypatch.setattr(OrtSession, "run", lambda s, x: fed.append(x.copy()) or real_run(s, x))
    rows = run(PredictRequest([str(p) for p in val_files], model=tiny_onnx, output_format="jsonl",
                              output=tmp_path / "rows.jsonl"))

    fed_by_path = dict(zip([r["path"] for r in rows], np.concatenate(fed)))
    assert set(fed_by_path) == set(expected)
    for path, tensor in fed_by_path.items():
        np.testing.assert_array_equal(tensor, expected[path])


# ------------------------------------------------------------------------------------------ inputs and exit codes


def test_all_succeeded_is_exit_0_and_file_names_with_spaces_work(tiny_onnx, good_images):
    result = cli(str(good_images[0]), str(good_images[1]), "--model", str(tiny_onnx), "--format", "csv")
    assert result.exit_code == EXIT_OK, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["path"] for r in rows] == [str(good_images[0]), str(good_images[1])]
    assert " " in rows[0]["path"] and rows[0]["ok"] == "True"
    assert len(rows[0]["top_k"].split("|")) == 3  # --top-k 5 is clipped to the 3 classes


def test_glob_that_matches_nothing_is_exit_2(tmp_path, tiny_onnx):
    result = cli(str(tmp_path / "*.jpg"), "--model", str(tiny_onnx))
    assert result.exit_code == EXIT_BAD_INPUT
    assert "no input matched" in result.stderr


def test_a_pattern_matching_nothing_gets_an_error_row_in_its_place(tmp_path, tiny_onnx, good_images):
    result = cli(str(good_images[0]), str(tmp_path / "missing-*.png"), str(good_images[1]), str(tmp_path / "gone"),
                 "--model", str(tiny_onnx), "--format", "jsonl", "--batch-size", "1")
    assert result.exit_code == EXIT_PARTIAL
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["ok"] for r in rows] == [True, False, True, False]  # the order of the inputs
    assert rows[1]["error"] == rows[3]["error"] == "no_match" and rows[3]["path"] == str(tmp_path / "gone")


def test_missing_model_is_exit_2(tmp_path, good_images):
    result = cli(str(good_images[0]), "--model", str(tmp_path / "nope.onnx"))
    assert result.exit_code == EXIT_BAD_INPUT
    assert "no such model file" in result.stderr


def test_not_a_vitdeploy_model_is_exit_2(tmp_path, good_images):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("not onnx")
    result = cli(str(good_images[0]), "--model", str(bogus))
    assert result.exit_code == EXIT_BAD_INPUT
    assert "cannot load" in result.stderr


@pytest.mark.parametrize("make_output", [
    lambda tmp: tmp / "no-such-folder" / "rows.csv",  # parent missing
    lambda tmp: tmp,  # a folder
    lambda tmp: (tmp / "a-file").touch() or tmp / "a-file" / "rows.csv",  # parent is a file
])
def test_unwritable_output_fails_before_any_inference(tmp_path, tiny_onnx, good_images, monkeypatch, make_output):
    def no_session(*args, **kwargs):
        raise AssertionError("a model session was created before the output path was checked")

    monkeypatch.setattr(runtime, "make_session", no_session)
    result = cli(str(good_images[0]), "--model", str(tiny_onnx), "--format", "csv", "-o", str(make_output(tmp_path)))
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "--output" in result.stderr


def test_a_failed_run_leaves_an_existing_output_file_alone(tmp_path, tiny_onnx):
    out = tmp_path / "rows.csv"
    out.write_text("rows of an earlier run\n")
    result = cli(str(tmp_path / "nothing-*.png"), "--model", str(tiny_onnx), "--format", "csv", "-o", str(out))
    assert result.exit_code == EXIT_BAD_INPUT
    assert out.read_text() == "rows of an earlier run\n"
    fresh = tmp_path / "fresh.csv"
    assert cli(str(tmp_path / "nothing-*.png"), "--model", str(tiny_onnx), "-o", str(fresh), "--format", "csv"
               ).exit_code == EXIT_BAD_INPUT
    assert not fresh.exists()


def test_expand_inputs_files_folders_globs_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "b.jpg", "notes.txt", "sub/c.png"):
        (tmp_path / name).write_bytes(b"x")
    flat, _ = expand_inputs([str(tmp_path)])
    assert [p.name for p in flat] == ["a.png", "b.jpg"]  # folders contribute image suffixes only
    deep, _ = expand_inputs([str(tmp_path)], recursive=True)
    assert [p.name for p in deep] == ["a.png", "b.jpg", "c.png"]
    globbed, unmatched = expand_inputs([str(tmp_path / "**" / "*.png"), str(tmp_path / "a.png"), "nope*"],
                                       recursive=True)
    assert [p.name for p in globbed] == ["a.png", "c.png"] and unmatched == ["nope*"]  # no duplicates
    explicit, _ = expand_inputs([str(tmp_path / "notes.txt")])
    assert [p.name for p in explicit] == ["notes.txt"]  # a file named explicitly is tried (and refused by decoding)


def test_default_model_is_the_newest_onnx_under_models(tmp_path, monkeypatch, good_images):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "run1").mkdir(parents=True)
    old, new = tmp_path / "models" / "run1" / "old.onnx", tmp_path / "models" / "new.onnx"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (2_000_000_000, 2_000_000_000))
    os.utime(new, (1_000_000_000, 1_000_000_000))
    staging = tmp_path / "models" / ".vitdeploy-export-x" / "half-written.onnx"
    staging.parent.mkdir()
    staging.write_bytes(b"x")
    os.utime(staging, (3_000_000_000, 3_000_000_000))
    variant = tmp_path / "models" / "new.int8.onnx"  # a precision variant written beside new.onnx, later
    variant.write_bytes(b"x")
    os.utime(variant, (3_000_000_000, 3_000_000_000))
    assert find_latest_model() == Path("models/run1/old.onnx")
    (tmp_path / "models" / "run1" / "old.onnx").unlink()
    (tmp_path / "models" / "new.onnx").unlink()
    assert find_latest_model() == Path("models/new.int8.onnx")  # no longer beside its base: an export like any other
    variant.unlink()
    result = cli(str(good_images[0]))
    assert result.exit_code == EXIT_BAD_INPUT and "no .onnx file under models" in result.stderr


@pytest.mark.skipif(runtime.cuda_status().usable, reason="CUDA works here")
def test_device_cuda_without_cuda_is_a_clear_exit_2(tiny_onnx, good_images):
    result = cli(str(good_images[0]), "--model", str(tiny_onnx), "--device", "cuda")
    assert result.exit_code == EXIT_BAD_INPUT
    assert "--device cuda is not usable" in result.stderr and "CUDA" in result.stderr


# ----------------------------------------------------------------------------------------------- output formats


def test_json_output_is_valid_and_carries_model_provider_and_summary(tmp_path, tiny_onnx, good_images):
    out = tmp_path / "rows.json"
    result = cli(*map(str, good_images), "--model", str(tiny_onnx), "-o", str(out), "--batch-size", "3")
    assert result.exit_code == EXIT_OK
    doc = json.loads(out.read_text())  # format inferred from the suffix
    assert doc["provider"] == doc["summary"]["provider"] == runtime.usable_providers()[0]
    assert [r["path"] for r in doc["predictions"]] == [str(p) for p in good_images]
    assert doc["summary"]["images_ok"] == len(good_images) and doc["summary"]["images_failed"] == 0
    assert all(abs(sum(t["probability"] for t in r["top_k"]) - 1) < 1e-5 for r in doc["predictions"])


def test_json_flag_is_format_json_on_stdout(tiny_onnx, good_images):
    result = cli(str(good_images[0]), "--model", str(tiny_onnx), "--json")
    assert result.exit_code == EXIT_OK
    assert json.loads(result.stdout)["predictions"][0]["path"] == str(good_images[0])
    assert cli(str(good_images[0]), "--model", str(tiny_onnx), "--json", "--format", "csv").exit_code == EXIT_BAD_INPUT


def test_interrupted_run_keeps_finished_rows_and_valid_json(tmp_path, tiny_onnx, good_images, monkeypatch):
    calls = []
    real_run = OrtSession.run

    def interrupt_second_batch(session, x):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(session, x)

    monkeypatch.setattr(OrtSession, "run", interrupt_second_batch)
    out = tmp_path / "rows.json"
    result = cli(*map(str, good_images), "--model", str(tiny_onnx), "--format", "json", "-o", str(out),
                 "--batch-size", "3")
    assert result.exit_code == EXIT_INTERRUPTED
    doc = json.loads(out.read_text())
    assert len(doc["predictions"]) == 3 and doc["summary"]["interrupted"] is True


def test_table_output_lists_each_image(tiny_onnx, good_images):
    args = ["predict", str(good_images[0]), str(good_images[1]), "--model", str(tiny_onnx), "--top-k", "2"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})  # wide enough for pytest's long tmp paths
    assert result.exit_code == EXIT_OK
    assert "probability" in result.stdout and good_images[1].name in result.stdout
    assert "2 images ok, 0 failed" in result.stderr and "images/s" in result.stderr


def test_table_format_with_an_output_file_needs_an_explicit_format(tmp_path, tiny_onnx, good_images):
    result = cli(str(good_images[0]), "--model", str(tiny_onnx), "-o", str(tmp_path / "rows.txt"))
    assert result.exit_code == EXIT_BAD_INPUT and "--format" in result.stderr


# --------------------------------------------------------------------------------------------------- no torch

@pytest.mark.slow
def test_predict_runs_without_the_training_extra(tmp_path, tiny_onnx, good_images):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", WITHOUT_TRAINING_EXTRA, "predict", *map(str, good_images[:3]), "--model", str(tiny_onnx),
            "--format", "jsonl"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == EXIT_OK, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["ok"] for r in rows] == [True] * 3
    help_run = subprocess.run([sys.executable, "-c", WITHOUT_TRAINING_EXTRA, "predict", "--help"], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)
    assert help_run.returncode == 0 and "--batch-size" in help_run.stdout


def test_library_summary(tmp_path, tiny_onnx, good_images):
    summary = predict_module.predict(
        PredictRequest([str(p) for p in good_images], model=tiny_onnx, output_format="jsonl", output=tmp_path / "r"),
    )
    assert summary.images_ok == len(good_images) and summary.images_failed == 0 and not summary.interrupted
    assert summary.images_per_second > 0 and summary.to_dict()["model"] == str(tiny_onnx)


def test_progress_is_drawn_on_a_terminal_only_and_never_on_stdout(tmp_path, tiny_onnx, good_images, monkeypatch,
                                                                  capsys):
    from vitdeploy.core import progress

    paths = [str(p) for p in good_images]

    def rows_and_stderr(**options) -> tuple[list[dict], str]:
        predict(PredictRequest(paths, model=tiny_onnx, output_format="jsonl", batch_size=2, **options))
        out, err = capsys.readouterr()
        return [json.loads(line) for line in out.splitlines()], err

    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    rows, err = rows_and_stderr(progress=True)
    assert len(rows) == len(paths) and "images/s" in err and "failed" in err  # stdout holds rows only
    # Notes may go to stderr through logging (the CLI shows them); the progress display must not.
    assert "images/s" not in rows_and_stderr(progress=False)[1]  # as the CLI asks with --json
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    assert "images/s" not in rows_and_stderr(progress=True)[1]  # logs, pipes, CI
