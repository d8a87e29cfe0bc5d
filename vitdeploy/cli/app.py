"""The Typer app and what every command shares: error handling, the notes handler, output and exit codes.

Commands are registered on `app` by the modules beside this one (vitdeploy/cli/__init__.py imports them).
"""


from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from vitdeploy.core import strict_json
from vitdeploy.errors import EXIT_CHECK_FAILED, EXIT_INTERRUPTED, EXIT_PARTIAL, VitDeployError

app = typer.Typer(
    name="vitdeploy",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Human-facing output goes to stderr so that --json leaves stdout clean for scripts.
console = Console(stderr=True)


def _flag_type(self: typer.core.TyperOption, ctx: Any) -> str | None:  # ctx: typer's click context
    """typer renders a flag's type as <bool> in --help, which reads as if the flag took a value (`--json true`):
    a flag shows no type."""
    return None if self.is_flag else _option_type(self, ctx)


_option_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_type


class StderrNotes(logging.Handler):
    """Renders vitdeploy's log records as plain lines on stderr: the one place the CLI shows what the library says.

    Plain text, never Rich markup: an install command's `vitdeploy[openvino]` and a shape's `[batch, 3, H, W]` print
    as written. sys.stderr is looked up at each record, so a test's captured stream gets them too."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname.lower()}: {text}"
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except Exception:  # logging's own contract: a failing handler reports through handleError, never raises
            self.handleError(record)


def show_library_notes() -> None:
    """Send the `vitdeploy` logger's INFO and above to stderr (once per process, however many commands run)."""
    logger = logging.getLogger("vitdeploy")
    logger.setLevel(logging.INFO)
    if not any(isinstance(handler, StderrNotes) for handler in logger.handlers):
        logger.addHandler(StderrNotes())
    # The CLI shows vitdeploy's notes itself: a root handler that a library installs on import (ONNX Runtime's
    # quantization calls logging.basicConfig) would print each one a second time, prefixed "INFO:".
    logger.propagate = False


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
    show_library_notes()


def print_json(obj: Any) -> None:
    sys.stdout.write(strict_json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_note(line: str) -> None:
    """One line for a person on stderr, printed as written (no markup)."""
    console.print(escape(line), highlight=False, soft_wrap=True)


def finish(result: Any, *, partial: bool = False) -> None:
    """The one place a result becomes an exit code. Results say `passed`; when they did not pass: 130 if
    interrupted (what finished was kept), else 4 for commands where some inputs failed (`partial`: predict,
    explain), else 3, a check failed (verify, export's accuracy gate, bench against --baseline)."""
    if result.passed:
        return
    if getattr(result, "interrupted", False):
        console.print("[yellow]interrupted[/]: everything finished was kept")
        raise typer.Exit(EXIT_INTERRUPTED)
    if not partial:
        for line in result.failures():
            console.print(f"[red]FAIL[/] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_PARTIAL if partial else EXIT_CHECK_FAILED)
