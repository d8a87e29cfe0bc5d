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


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """Train a Vision Transformer, export it to ONNX with verified parity, run it and benchmark it.

    Exit codes: 0 ok, 1 internal error, 2 bad input, 3 a check failed, 4 some inputs failed, 130 interrupted.
    """
    if version:
        from vitdeploy import __version__

        typer.echo(f"vitdeploy {__version__}")
        raise typer.Exit()


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


@app.command()
@handle_errors
def train(
    preset: Annotated[Optional[str], typer.Option(help="Model preset: digits (default), vit-ti16, vit-s16, vit-b16.")] = None,
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


@app.command()
@handle_errors
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns (quote globs).")],
    model: Annotated[
        Optional[Path],
        typer.Option(help="The .onnx to run, or a folder to search. Default: the most recently modified "
                     "*.onnx anywhere under models/."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per inference call.")] = 32,
    workers: Annotated[int, typer.Option(help="Threads decoding images while the model runs.")] = 2,
    device: Annotated[str, typer.Option(help="auto (CUDA only if a session really gets it) | cpu | cuda.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="ONNX Runtime intra-op threads (default: one per core).")] = None,
    top_k: Annotated[int, typer.Option(help="Best labels listed per image.")] = 5,
    output_format: Annotated[
        str, typer.Option("--format", help="table | json | jsonl | csv (rows are written as each batch ends).")
    ] = "table",
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write rows to this file instead of stdout.")
    ] = None,
    recursive: Annotated[bool, typer.Option(help="Search folders recursively; lets globs use **.")] = False,
) -> None:
    """Classify images with an exported model (ONNX Runtime only: no torch needed).

    Every input gets one row: its top-k labels, or an error (path, error type, message) for a file that could not
    be decoded. Exit code 0: all succeeded; 4: some inputs failed; 2: no input matched, or the model or the output
    file is unusable; 130: interrupted (finished rows are kept).

    Example: vitdeploy predict "samples/*.png" --model models/digits.onnx --format csv -o predictions.csv
    """
    from vitdeploy.errors import EXIT_PARTIAL
    from vitdeploy.predict import PredictRequest, predict as run_predict

    request = PredictRequest(
        inputs=inputs, model=model, batch_size=batch_size, workers=workers, device=device, threads=threads,
        top_k=top_k, output_format=output_format, output=output, recursive=recursive,
    )
    summary = run_predict(request, log=lambda line: console.print(line, highlight=False, soft_wrap=True))
    if summary.rows:
        print_prediction_table(summary.rows)
    console.print(
        f"{summary.images_ok} images ok, {summary.images_failed} failed, {summary.images_per_second:.1f} images/s "
        f"on {summary.provider} ({summary.model})" + (f"; rows in {summary.output}" if summary.output else ""),
        highlight=False, soft_wrap=True,
    )
    if summary.interrupted:
        console.print("[yellow]interrupted[/]: every finished row was written")
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary.images_failed:
        raise typer.Exit(EXIT_PARTIAL)


def print_prediction_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("path", "label", "probability", "top-k", show_edge=False)
    for row in rows:
        if row["ok"]:
            others = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top_k"][1:])
            table.add_row(row["path"], row["label"], f"{row['probability']:.3f}", others)
        else:
            table.add_row(row["path"], f"[red]{row['error']}[/]", "", row["message"])
    Console().print(table)


def main() -> None:
    try:
        app()
    except SystemExit:
        raise
    except Exception:  # a bug: show the traceback, exit with the documented internal-error code
        import traceback

        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)
