"""vitdeploy: train a Vision Transformer, export it to ONNX, verify it, and serve and benchmark it."""

__version__ = "0.1.0"
