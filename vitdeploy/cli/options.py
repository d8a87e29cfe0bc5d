"""Options several commands share, declared once: `model: ModelArgument = None` in a command's signature.

Defaults are not here: each command takes them from its request class (vitdeploy.requests), the one place they
live. Help text that differs per command stays with the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vitdeploy.runtimes import RUNTIMES

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (notes stay on stderr).")]
ModelArgument = Annotated[
    Optional[Path], typer.Argument(help="The .onnx file. Default: the newest .onnx under models/ (precision "
                                   "variants such as model.int8.onnx are skipped).", show_default=False)
]
BundleOption = Annotated[
    Optional[Path], typer.Option(help="Model bundle folder. Default: the latest bundle under models/.",
                                 show_default=False)
]
InputsArgument = Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns (quote globs).")]
OptionalInputsArgument = Annotated[
    Optional[list[str]], typer.Argument(help="Image files, folders or glob patterns (quote globs).", show_default=False)
]
Recursive = Annotated[bool, typer.Option(help="Search folders recursively; lets globs use **.")]
TopK = Annotated[int, typer.Option(help="Best labels listed per image.")]
Threads = Annotated[
    Optional[int], typer.Option(help="The runtime's intra-op threads. Default: one per CPU core.", show_default=False)
]
BatchSizes = Annotated[str, typer.Option(help="Batch sizes, comma-separated.")]
RuntimeList = Annotated[
    Optional[str], typer.Option(help=f"Runtimes, comma-separated: {', '.join(RUNTIMES)}. Default: every one "
                                "installed and usable here (web only when named).", show_default=False)
]
# Every command that writes a folder takes it (the rule: vitdeploy/files/outputs.py).
Force = Annotated[
    bool, typer.Option("--force", help="Write into the output folder even if it holds files vitdeploy did not write "
                       "(files of the names the command writes are replaced).")
]
