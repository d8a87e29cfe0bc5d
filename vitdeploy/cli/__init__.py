"""The `vitdeploy` command line: a thin Typer layer over the Python API.

Each command body parses options, calls one library function and prints its result. Torch-side modules are
imported inside the commands that need them, so `vitdeploy --help` and `vitdeploy predict` start fast and
work without torch. Here: the app, error handling and output helpers; the commands, one module per stage:
training (train, samples, import), onnx (export, verify), inference (predict, bench, explain), serving (triton,
serve).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from vitdeploy import strict_json
from vitdeploy.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, VitDeployError

app = typer.Typer(
    name="vitdeploy",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Human-facing output goes to stderr so that --json leaves stdout clean for scripts.
console = Console(stderr=True)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one clear line and their documented exit code (see errors.py)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VitDeployError as e:
            # escape(): messages quote shapes like [batch, 3, H, W], which Rich would eat as markup.
            console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # `vitdeploy predict ... | head`: the reader left, which is not an error. Point stdout at devnull so
            # the interpreter's final flush does not raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None

    return wrapper


def _print_version(value: bool) -> None:
    if value:
        from vitdeploy import __version__

        typer.echo(f"vitdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train a Vision Transformer, export it to ONNX with verified parity, run it and benchmark it.

    Exit codes: 0 ok, 1 internal error, 2 bad input, 3 a check failed, 4 some inputs failed, 130 interrupted.
    """


def print_json(obj: Any) -> None:
    sys.stdout.write(strict_json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_note(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


# Every command that writes a folder takes it (the rule: vitdeploy/outputs.py).
Force = Annotated[bool, typer.Option(
    "--force", help="Write into the output folder even if it holds files vitdeploy did not write (files of the "
    "same names are replaced).")]


# The commands live in one module per stage; importing them registers them on `app` (in this order in --help).
from vitdeploy.cli import training, onnx, inference, serving  # noqa: E402,F401


def main() -> None:
    try:
        app()
    except SystemExit:
        raise
    except Exception:  # a bug: show the traceback, exit with the documented internal-error code
        import traceback

        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)
