"""The output-path rule (vitdeploy/files/outputs.py): every -o/--out is a new or empty folder, or one vitdeploy wrote of
that kind; anything else, an unwritable place, a file where a folder goes (or the reverse) is exit 2 and changes
nothing. Each test failed at c9361bf."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import typer
from builders import make_bundle, smooth_rgb
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.errors import EXIT_BAD_INPUT, EXIT_OK, InputError

runner = CliRunner()
UNWRITABLE = Path("/proc/vitdeploy-test/out")  # /proc takes no new files, whoever asks (root included)
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc as an unwritable place")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with its content hash ("dir" for folders): equal snapshots, nothing changed."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "img.png"
    smooth_rgb(24, 20).save(path)
    return path


def foreign_folder(path: Path) -> Path:
    """A user's folder that happens to hold a config.json (the issue's data-loss case)."""
    path.mkdir(parents=True)
    (path / "keep.txt").write_text("precious\n")
    (path / "config.json").write_text("x\n")
    return path


# ----------------------------------------------------------------------------------------------- the rule


def test_new_empty_and_own_folders_pass_and_others_are_named(tmp_path):
    from vitdeploy.files.outputs import BUNDLE, RUN, TRITON, check_output_folder

    assert check_output_folder(tmp_path / "new" / "deeper", BUNDLE) == tmp_path / "new" / "deeper"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".config.json.abcd1234.tmp").write_text("")  # a killed save's temporary does not count
    check_output_folder(tmp_path / "empty", BUNDLE)
    bundle = make_bundle(tmp_path / "run" / "best")
    check_output_folder(bundle, BUNDLE)
    check_output_folder(tmp_path / "run", RUN)
    with pytest.raises(InputError, match=r"holds files vitdeploy did not write: config.json, keep.txt; -o must"):
        check_output_folder(foreign_folder(tmp_path / "mine"), BUNDLE)
    check_output_folder(tmp_path / "mine", BUNDLE, force=True)  # --force: the user said so
    with pytest.raises(InputError, match=r"is a model bundle \(vitdeploy import / train wrote it\), not a Triton"):
        check_output_folder(bundle, TRITON, option="--out")


def test_each_kind_is_recognised_by_what_vitdeploy_writes_into_it(tmp_path):
    from vitdeploy.files.outputs import BUNDLE, EXPLAIN, SAMPLES, check_output_folder, marked, write_marker

    explain = tmp_path / "explain"
    explain.mkdir()
    (explain / "cat.rollout.png").write_bytes(b"")
    (explain / "cat.grad-rollout.png").write_bytes(b"")
    check_output_folder(explain, EXPLAIN)
    (explain / "cat.jpg").write_bytes(b"")  # a photo of the user's: no longer explain's folder
    with pytest.raises(InputError, match="cat.jpg"):
        check_output_folder(explain, EXPLAIN)
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "000_true-7.png").write_bytes(b"")
    check_output_folder(samples, SAMPLES)
    marked_kind = type(BUNDLE)("web page", "vitdeploy web", marked("web"))  # how a new command reuses the rule
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("")
    with pytest.raises(InputError):
        check_output_folder(web, marked_kind)
    write_marker(web, "web")
    check_output_folder(web, marked_kind)


# ------------------------------------------------------------------------------------- the cases


def test_import_into_a_folder_that_is_not_a_bundle_is_refused_and_left_as_it_was(hf_checkpoint, tmp_path):
    folder = foreign_folder(tmp_path / "nonbundle")
    before = snapshot(folder)
    done = runner.invoke(app, ["import", str(hf_checkpoint), "-o", str(folder)])
    assert done.exit_code == EXIT_BAD_INPUT, done.output
    assert "keep.txt" in done.output and "--force" in done.output
    assert snapshot(folder) == before
    done = runner.invoke(app, ["import", str(hf_checkpoint), "-o", str(folder), "--force"])
    assert done.exit_code == EXIT_OK, done.output
    assert (folder / "keep.txt").read_text() == "precious\n"  # --force replaces what it writes, nothing else


def test_import_replaces_a_bundle_it_wrote(hf_checkpoint, tmp_path):
    for _ in range(2):
        done = runner.invoke(app, ["import", str(hf_checkpoint), "-o", str(tmp_path / "b")])
        assert done.exit_code == EXIT_OK, done.output


@needs_proc
def test_import_to_an_unwritable_place_is_exit_2_naming_it(hf_checkpoint):
    done = runner.invoke(app, ["import", str(hf_checkpoint), "-o", "/proc/x"])
    assert done.exit_code == EXIT_BAD_INPUT, done.output
    assert "cannot write /proc/x" in done.output and "Traceback" not in done.output


def test_explain_to_an_existing_file_is_exit_2(tiny_bundle, image, tmp_path):
    existing = tmp_path / "existing_file.txt"
    existing.write_text("mine\n")
    done = runner.invoke(app, ["explain", str(image), "--bundle", str(tiny_bundle), "-o", str(existing)])
    assert done.exit_code == EXIT_BAD_INPUT, done.output
    assert f"cannot write to {existing}: it is a file" in done.output and existing.read_text() == "mine\n"


def test_triton_to_an_existing_file_is_exit_2(tiny_onnx, tmp_path):
    existing = tmp_path / "existing_file"
    existing.write_text("mine\n")
    done = runner.invoke(app, ["triton", str(tiny_onnx), "-o", str(existing)])
    assert done.exit_code == EXIT_BAD_INPUT, done.output
    assert f"cannot write to {existing}: it is a file" in done.output and existing.read_text() == "mine\n"


def test_triton_rewrites_its_own_repository_and_refuses_a_foreign_one(tiny_onnx, tmp_path):
    assert runner.invoke(app, ["triton", str(tiny_onnx), "-o", str(tmp_path / "repo")]).exit_code == EXIT_OK
    done = runner.invoke(app, ["triton", str(tiny_onnx), "-o", str(tmp_path / "repo"), "--name", "second"])
    assert done.exit_code == EXIT_OK, done.output
    folder = foreign_folder(tmp_path / "docs")
    before = snapshot(folder)
    done = runner.invoke(app, ["triton", str(tiny_onnx), "-o", str(folder)])
    assert done.exit_code == EXIT_BAD_INPUT and snapshot(folder) == before, done.output


def test_triton_max_batch_size_0_says_what_is_wrong(tiny_onnx, tmp_path):
    done = runner.invoke(app, ["triton", str(tiny_onnx), "-o", str(tmp_path / "r"), "--max-batch-size", "0"])
    assert done.exit_code == EXIT_BAD_INPUT, done.output
    assert "--max-batch-size must be at least 1, got 0" in done.output and "preferred" not in done.output
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------------------------- the sweep


def output_options() -> set[tuple[str, str]]:
    """(command, option) for every option or argument of the CLI that names where output goes."""
    found = set()
    for name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            if param.param_type_name == "argument":
                if param.name.startswith("out"):
                    found.add((name, param.name.upper()))
                continue
            opts = set(param.opts) & {"-o", "--out", "--output", "--plot"}
            if opts:
                found.add((name, "-o" if "-o" in opts else opts.pop()))
    return found


# (command, option) -> (argv before the path, argv after it, "folder" or "file")
SWEEP = {
    ("import", "-o"): (lambda f: ["import", str(f["hf"]), "-o"], "folder"),
    ("train", "--out"): (lambda f: ["train", "--preset", "tiny", "--epochs", "1", "--out"], "folder"),
    ("explain", "-o"): (lambda f: ["explain", str(f["image"]), "--bundle", str(f["bundle"]), "-o"], "folder"),
    ("triton", "-o"): (lambda f: ["triton", str(f["onnx"]), "-o"], "folder"),
    ("samples", "OUT"): (lambda f: ["samples", "--bundle", str(f["bundle"])], "folder"),
    ("export", "-o"): (lambda f: ["export", str(f["bundle"]), "--no-verify", "-o"], "file"),
    ("predict", "-o"): (lambda f: ["predict", str(f["image"]), "--model", str(f["onnx"]), "--format", "csv", "-o"],
                        "file"),
    ("bench", "--output"): (lambda f: ["bench", str(f["onnx"]), "--batch-sizes", "1", "--output"], "file"),
    ("bench", "--plot"): (lambda f: ["bench", str(f["onnx"]), "--batch-sizes", "1", "--plot"], "file"),
    ("web", "-o"): (lambda f: ["web", str(f["onnx"]), "-o"], "folder"),
}
CASES = {"folder": ["unwritable", "a file there", "a foreign folder there"],
         "file": ["unwritable", "a folder there", "under a file"]}


def test_the_sweep_covers_every_output_option_of_the_cli():
    assert output_options() == set(SWEEP)


@pytest.mark.parametrize("command, case", [(c, case) for c, (_, kind) in SWEEP.items() for case in CASES[kind]],
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
def test_every_bad_output_path_is_exit_2_and_changes_nothing(command, case, hf_checkpoint, tiny_bundle, tiny_onnx, image,
                                                             tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train's and bench's other defaults stay in here
    argv, kind = SWEEP[command]
    place = tmp_path / "place"
    place.mkdir()
    if case == "unwritable":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux /proc as an unwritable place")
        target = UNWRITABLE
    elif case == "a file there":
        target = place / "existing_file.txt"
        target.write_text("mine\n")
    elif case == "a foreign folder there":
        target = foreign_folder(place / "mine")
    elif case == "a folder there":
        target = place / "folder"
        target.mkdir()
        (target / "keep.txt").write_text("precious\n")
    else:
        (place / "afile").write_text("mine\n")
        target = place / "afile" / "out.x"
    before = snapshot(tmp_path)
    fixtures = {"hf": hf_checkpoint, "bundle": tiny_bundle, "onnx": tiny_onnx, "image": image}
    args = argv(fixtures)
    args = [*args, str(target)] if command != ("samples", "OUT") else [args[0], str(target), *args[1:]]
    done = runner.invoke(app, args)
    assert done.exit_code == EXIT_BAD_INPUT, done.output
    assert str(target) in done.output and "Traceback" not in done.output
    assert snapshot(tmp_path) == before
    assert not UNWRITABLE.exists()
