"""Serving: a Triton model repository for scale, and `vitdeploy serve`, a local server that speaks the same protocol.

    triton.py   the Triton model repository writer (config.pbtxt, 1/model.onnx, labels.txt, README.md)
    protocol.py the Open Inference Protocol (v2) over HTTP: request/response codec, validation, binary tensors,
                the served input shape (a dynamic batch axis)
    batcher.py  dynamic batching on one inference worker thread
    app.py      the HTTP app (Starlette): routes, body limit, 4xx JSON errors, stats
    server.py   the server process (uvicorn): listen, serve, drain on Ctrl-C / SIGTERM, exit 0

A served model is a runtimes.Session (open_runtime), as everywhere else. triton.py, protocol.py and batcher.py need
only the core install (`vitdeploy triton` uses the first two); app.py and server.py need the [serve] extra.
"""
