"""What the CLI prints for people: every message reaches stderr as written, whether it is an error or a note.

Rich reads `[word]` as markup, so an unescaped `pip install "vitdeploy[openvino]"` used to print as
`pip install "vitdeploy"`: the one command a user needed, cut off."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vitdeploy.cli import app
from vitdeploy.cli.app import handle_errors, print_note, show_library_notes
from vitdeploy.core import extras
from vitdeploy.errors import EXIT_BAD_INPUT

runner = CliRunner()


@pytest.mark.parametrize("extra", sorted(extras.EXTRAS))
def test_each_install_command_prints_verbatim_in_errors_and_notes(extra: str, monkeypatch, capsys) -> None:
    command = f'pip install "vitdeploy[{extra}]"'
    monkeypatch.setattr(extras, "importable", lambda name: name not in extras.EXTRAS[extra])

    @handle_errors
    def needs_the_extra() -> None:
        extras.require(extra, "this command")

    with pytest.raises(typer.Exit) as stopped:
        needs_the_extra()
    assert stopped.value.exit_code == EXIT_BAD_INPUT
    show_library_notes()
    logging.getLogger("vitdeploy.somewhere").info("skipping a variant: %s", command)  # a note, through logging
    print_note(f"and a line the CLI prints itself: {command}")
    err = capsys.readouterr().err
    assert err.count(command) == 3, err


def test_bench_names_the_openvino_extra_it_skips(tiny_onnx: Path, monkeypatch) -> None:
    """The case found in the wild: `vitdeploy bench MODEL` on the core install skips the OpenVINO variants."""
    from machines import fake_machine, this_family

    from vitdeploy.runtimes import assume

    with assume(fake_machine(this_family(), openvino=False)):
        result = runner.invoke(app, ["bench", str(tiny_onnx), "--variants", "ort-cpu,ov-cpu", "--batch-sizes", "1",
                                     "--warmup-iters", "0", "--warmup-seconds", "0", "--min-iters", "1",
                                     "--min-seconds", "0", "--threads", "1"])
    assert result.exit_code == EXIT_BAD_INPUT  # ov-cpu was named and cannot run here
    assert 'pip install "vitdeploy[openvino]"' in result.stderr, result.stderr


def test_shapes_in_notes_keep_their_brackets(capsys) -> None:
    show_library_notes()
    logging.getLogger("vitdeploy.runtimes").warning("input is [batch, 3, 224, 224], got [1, 3, 32, 32]")
    assert "warning: input is [batch, 3, 224, 224], got [1, 3, 32, 32]" in capsys.readouterr().err


def test_a_note_is_printed_once_when_a_library_installed_a_root_handler(capsys) -> None:
    """ONNX Runtime's quantization calls logging.basicConfig on import: the root handler it adds must not print the
    CLI's notes a second time (as "INFO:vitdeploy...: ...")."""
    import logging

    from vitdeploy.cli.app import show_library_notes

    seen_by_root: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen_by_root.append(record.getMessage())

    root_handler = Collect(logging.INFO)
    logging.getLogger().addHandler(root_handler)
    try:
        show_library_notes()
        logging.getLogger("vitdeploy.benchmark").info("skipped ov-cpu-bf16: no bf16 here")
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert seen_by_root == []
    assert capsys.readouterr().err.count("skipped ov-cpu-bf16") == 1


def test_a_stage_note_is_said_once_on_stderr_and_kept_in_the_json(tiny_onnx: Path) -> None:
    """Notes travel one way (core/notes.py): logged as they happen, and the same lines on the result; the CLI
    never prints a result's notes a second time."""
    import json

    result = CliRunner().invoke(app, ["verify", str(tiny_onnx), "--runtime", "ort", "--batch-sizes", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["notes"], "the tiny bundle has no dataset: verify says so"
    for note in report["notes"]:
        assert result.stderr.count(note) == 1, (note, result.stderr)
