"""Serving: a Triton model repository for scale, and `vitdeploy serve`, a local server that speaks the same protocol.

    runner.py   open a model through a runtime -> run a batch -> logits (ONNX Runtime today; the one plug-in point)
    triton.py   the Triton model repository writer (config.pbtxt, 1/model.onnx, labels.txt, README.md)
    protocol.py the Open Inference Protocol (v2) over HTTP: request/response codec, validation, binary tensors
    batcher.py  dynamic batching on one inference worker thread
    app.py      the HTTP app (Starlette) and the server process (uvicorn): routes, limits, drain on SIGTERM

Only runner.py and triton.py are imported without the [serve] extra; `vitdeploy triton` needs nothing beyond the
core install.
"""
