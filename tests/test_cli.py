"""The CLI surface: every command documents itself; help and predict start without torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from vitdeploy import requests
from vitdeploy.cli import app
from vitdeploy.errors import EXIT_BAD_INPUT
from vitdeploy.training.run import TrainRequest, train

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


def test_expected_commands_exist() -> None:
    assert {"train", "import", "export", "verify", "predict", "bench", "samples", "explain", "triton", "serve"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Example" in result.output, f"`vitdeploy {command} --help` shows no example"


def test_top_level_help_lists_exit_codes_and_version() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "130 interrupted" in result.output
    assert runner.invoke(app, ["--version"]).output.startswith("vitdeploy ")


def test_help_does_not_import_torch() -> None:
    code = "import sys; from vitdeploy.cli import main; sys.argv=['vitdeploy','--help']\n" \
           "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "export", "verify", "samples", "import x"])
def test_training_commands_without_the_training_extra_say_how_to_install_it(tmp_path: Path, command: str) -> None:
    from builders import WITHOUT_TRAINING_EXTRA

    done = subprocess.run([sys.executable, "-c", WITHOUT_TRAINING_EXTRA, *command.split()], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert 'pip install "vitdeploy[train]"' in done.stderr and "torch" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_help_and_version_work_without_the_training_extra(tmp_path: Path) -> None:
    from builders import WITHOUT_TRAINING_EXTRA

    for args in (["--help"], ["--version"], ["bench", "--help"], ["serve", "--help"], ["triton", "--help"]):
        done = subprocess.run([sys.executable, "-c", WITHOUT_TRAINING_EXTRA, *args], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_samples_writes_heldout_digits_named_by_label(tmp_path: Path) -> None:
    result = train(TrainRequest(preset="tiny", out=tmp_path / "run", epochs=1, stop_after_steps=1))
    out = runner.invoke(app, ["samples", str(tmp_path / "s"), "--bundle", str(result.last), "--count", "5"])
    assert out.exit_code == 0, out.output
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert len(files) == 5 and all(f.endswith(".png") and "_true-" in f for f in files)


def test_predict_into_a_pipe_closed_early_exits_0_without_traceback(tmp_path: Path) -> None:
    from builders import make_bundle
    from PIL import Image

    from vitdeploy.exporting.exporter import export_onnx

    model = export_onnx(make_bundle(tmp_path / "b"), verify=False).path
    for i in range(64):
        Image.new("RGB", (16, 16), (4 * i, 0, 0)).save(tmp_path / f"{i}.png")
    # `vitdeploy predict ... | head -1`: the reader closes the pipe after the first row.
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitdeploy", "predict", str(tmp_path), "--model", str(model), "--format", "jsonl",
         "--batch-size", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith("{")
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


# `import` is a Python keyword: its function is import_model.
PACKAGE_FUNCTIONS = {"train": "train", "import": "import_model", "export": "export", "verify": "verify",
                     "predict": "predict", "bench": "bench", "explain": "explain", "triton": "triton", "serve": "serve",
                     "web": "web", "samples": "samples"}
# Each command's options, one request class; triton and serve take the model (and triton the folder) beside it.
REQUESTS = {"train": requests.TrainRequest, "import": requests.ImportRequest, "export": requests.ExportRequest,
            "verify": requests.VerifyRequest, "predict": requests.PredictRequest, "bench": requests.BenchRequest,
            "explain": requests.ExplainRequest, "triton": requests.TritonOptions, "serve": requests.ServeSettings,
            "web": requests.WebRequest, "samples": requests.SamplesRequest}
BESIDE_THE_REQUEST = {"triton": {"model", "out"}, "serve": {"model"}}


@pytest.mark.parametrize("command", PACKAGE_FUNCTIONS)
def test_every_option_of_a_command_is_a_field_of_its_request(command: str) -> None:
    """One source per option: `from vitdeploy import train, import_model, export, ...` take the request class's
    fields as keywords, and every CLI option (but --json) is one of them."""
    import dataclasses

    import vitdeploy

    fields = {f.name for f in dataclasses.fields(REQUESTS[command])} | BESIDE_THE_REQUEST.get(command, set())
    options = {p.name for p in get_command(app).commands[command].params} - {"json_output"}
    assert options <= fields, options - fields
    assert getattr(vitdeploy, PACKAGE_FUNCTIONS[command]).__doc__


def test_cli_defaults_are_the_request_defaults() -> None:
    """The defaults a person sees in --help are the ones the Python API uses: both read the request classes."""
    import dataclasses

    for command, kind in REQUESTS.items():
        params = {p.name: p for p in get_command(app).commands[command].params}
        for f in dataclasses.fields(kind):
            if f.name in params and f.default is not dataclasses.MISSING and f.default is not None:
                default = params[f.name].default
                if default is None:  # the option left out: the request's own default applies
                    continue
                if isinstance(f.default, tuple) and isinstance(default, str):  # "1,8,32" -> (1, 8, 32)
                    default = tuple(int(v) for v in default.split(","))
                assert default == f.default, (command, f.name, default, f.default)


def test_the_cli_passes_one_request_to_the_package_function(monkeypatch) -> None:
    import vitdeploy
    from vitdeploy.errors import ConfigError

    received = []

    def fake_export(request):
        received.append(request)
        raise ConfigError("stop here")

    monkeypatch.setattr(vitdeploy, "export", fake_export)
    result = runner.invoke(app, ["export", "b", "--opset", "18", "--exporter", "dynamo", "--precision", "int8"])
    assert result.exit_code == EXIT_BAD_INPUT and "stop here" in result.output
    request = received[0]
    assert isinstance(request, requests.ExportRequest)
    assert request.bundle == Path("b") and request.opset == 18 and request.exporter == "dynamo"
    assert request.precision == ("int8",) and request.verify is True


def test_the_api_takes_a_request_or_its_fields(tmp_path: Path, monkeypatch) -> None:
    import vitdeploy
    from vitdeploy.prediction import local as prediction

    seen = []
    monkeypatch.setattr(prediction, "predict", seen.append)
    vitdeploy.predict([tmp_path], model=str(tmp_path / "m.onnx"), batch_size=4)
    vitdeploy.predict(requests.PredictRequest([str(tmp_path)], batch_size=4, model=tmp_path / "m.onnx"))
    assert seen[0] == seen[1] and seen[0].model == tmp_path / "m.onnx" and seen[0].inputs == [str(tmp_path)]
    with pytest.raises(TypeError):
        vitdeploy.predict([tmp_path], batch_sise=4)  # a misspelt option is an error, never ignored
