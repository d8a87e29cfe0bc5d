"""Optional parts of vitdeploy and the install command that brings each one.

`pip install vitdeploy` is the deployment install: onnxruntime, numpy, Pillow, typer, rich. That runs `predict`,
`bench` on .onnx files, `triton`, `--help` and `--version`. Training, export and verification need PyTorch and friends;
`serve` needs a server library ([serve]).
"""

from __future__ import annotations

import importlib.util

from vitdeploy.errors import MissingExtra

# extra -> the modules it brings (import names, not distribution names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "onnx", "onnxscript", "safetensors", "sklearn"),
    "plot": ("matplotlib",),
    # `vitdeploy serve`'s server; the extra also brings tritonclient, for clients (not needed to serve).
    "serve": ("starlette", "uvicorn", "python_multipart"),
    "openvino": ("openvino", "nncf"),
    # `predict --format parquet`; the [ray] extra brings it too.
    "parquet": ("pyarrow",),
    # `predict --engine ray`: Ray Data, and pyarrow for its rows.
    "ray": ("ray", "pyarrow"),
}




def missing_modules(extra: str) -> list[str]:
    return [name for name in EXTRAS[extra] if not importable(name)]


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # an import hook refused it, or a stub without a spec stands in for it
        return False


def require(extra: str, what: str) -> None:
    """Raise MissingExtra naming the missing modules and the exact install command, unless all are importable."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(
            f"{what} needs {', '.join(missing)}, which this installation lacks: pip install \"vitdeploy[{extra}]\""
        )
