"""The `vitdeploy` command line: a thin Typer layer over the Python API.

Each command body parses options, calls one library function and prints its result. Torch-side modules are
imported inside the commands that need them, so `vitdeploy --help` and `vitdeploy predict` start fast and
work without torch. Here: the app, error handling and output helpers; the commands, one module per stage:
training (train, samples, import), onnx (export, verify), inference (predict, bench, explain), serving (triton,
serve), machine (doctor).
"""

from __future__ import annotations

import sys
import traceback

# The commands live in one module per stage; importing them registers them on `app` (in this order in --help).
from vitdeploy.cli import inference, machine, onnx, serving, training  # noqa: E402,F401
from vitdeploy.cli.app import app
from vitdeploy.errors import EXIT_INTERNAL


def main() -> None:
    try:
        app()
    except SystemExit:
        raise
    except Exception:  # a bug: show the traceback, exit with the documented internal-error code
        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)
