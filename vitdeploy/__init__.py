"""vitdeploy: train a Vision Transformer, export it to ONNX, verify it, and run and benchmark it.

The functions below mirror the CLI commands (see vitdeploy.api); importing the package loads no torch.
"""

import logging

__version__ = "0.1.0"

# A library stays quiet unless its user configures logging; the CLI shows these notes on stderr.
logging.getLogger("vitdeploy").addHandler(logging.NullHandler())

from vitdeploy.api import (  # noqa: E402
    bench,
    doctor,
    explain,
    export,
    import_model,
    predict,
    samples,
    serve,
    train,
    triton,
    verify,
    web,
)

__all__ = ["__version__", "bench", "doctor", "explain", "export", "import_model", "predict", "samples", "serve",
           "train", "triton", "verify", "web"]
