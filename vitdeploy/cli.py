"""The `vitdeploy` command line: a thin Typer layer over the Python API.

Each command body parses options, calls one library function and prints its result. Torch-side modules are
imported inside the commands that need them, so `vitdeploy --help` and `vitdeploy predict` start fast and
work without torch.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from vitdeploy.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, VitDeployError

app = typer.Typer(
    name="vitdeploy",
    help="Train a Vision Transformer, export it to ONNX with verified parity, run it and benchmark it.",
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
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


@app.command()
@handle_errors
def train(
    preset: Annotated[str, typer.Option(help="Model preset: digits, vit-ti16, vit-s16, vit-b16.")] = "digits",
    data: Annotated[
        Optional[Path],
        typer.Option(help="Image folder, one subfolder per class (train/ and val/ inside when split). "
                     "Default: the embedded scikit-learn digits."),
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder; best/ and last/ bundles go inside. "
                                                "Default: models/<preset or data folder name>.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default: the preset's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch size (default: the preset's).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the preset's).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for init, split, order and augmentation.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Override the preset's input size (pixels).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (cuda fails clearly when not usable).")] = "auto",
    resume: Annotated[Optional[Path], typer.Option(help="Continue a run from its last/ bundle (or any bundle).")] = None,
    stop_after_steps: Annotated[
        Optional[int], typer.Option(help="Stop early after this many optimizer steps, as Ctrl-C would "
                                    "(the schedule still spans all epochs; --resume continues).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Threads decoding images of a --data folder.")] = 2,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Train a ViT and write best/ and last/ model bundles.

    Example: vitdeploy train --epochs 30 --out models/digits
    """
    from vitdeploy.train import TrainRequest, train as run_training

    request = TrainRequest(
        preset=preset, data=data, out=out, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        image_size=image_size, device=device, resume=resume, stop_after_steps=stop_after_steps, workers=workers,
    )
    result = run_training(request, console=console)
    if json_output:
        print_json(result.to_dict())
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


# Commands of the later stages (export, verify, predict, bench) are registered below this line.


def main() -> None:
    try:
        app()
    except SystemExit:
        raise
    except Exception:  # a bug: show the traceback, exit with the documented internal-error code
        import traceback

        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)
