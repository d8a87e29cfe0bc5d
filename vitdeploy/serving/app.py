"""The HTTP app of `vitdeploy serve` (Starlette): Open Inference Protocol v2 routes, an image endpoint, stats.

    GET  /v2                                     server metadata (extensions: binary_tensor_data, statistics)
    GET  /v2/health/live, /v2/health/ready       200 when alive / when the model is loaded and the worker runs
    GET  /v2/models/<name>[/versions/1]          model metadata: inputs, outputs, shapes (-1 = batch), datatypes
    GET  /v2/models/<name>[/versions/1]/ready
    POST /v2/models/<name>[/versions/1]/infer    FP32 tensors, JSON data or the binary tensor extension; a raw-image
                                                 file's (export --image-input) UINT8 images [N, H, W, C], any size
    GET  /v2/models[/<name>[/versions/1]]/stats  Triton's statistics format, plus the batch sizes run and the
                                                 requests pending
    POST /classify[?top_k=5]                     image bytes (JPEG, PNG, WebP, ...) or multipart files -> top-k
                                                 labels, decoded and preprocessed exactly as `vitdeploy predict` does

Every refused request gets a 4xx and {"error": "..."}; the body size is limited before it is read in full.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vitdeploy import __version__
from vitdeploy.core.images import decode_image
from vitdeploy.errors import ImageDecodeError, RequestError
from vitdeploy.prediction.local import load_model_input, row_for_logits
from vitdeploy.runtimes.base import Session
from vitdeploy.serving.batcher import DynamicBatcher
from vitdeploy.serving.protocol import (
    HEADER_LENGTH,
    VERSION,
    ModelSignature,
    encode_infer_response,
    parse_infer_request,
)

# JSON bodies above this size are parsed in a worker thread, so the event loop keeps accepting connections (a binary
# body is one copy, parsed where it arrives).
PARSE_IN_THREAD_BYTES = 1 << 20


class ServerState:
    def __init__(self, session: Session, signature: ModelSignature, batcher: DynamicBatcher, decode_threads: int,
                 top_k: int):
        self.session, self.signature, self.batcher, self.top_k = session, signature, batcher, top_k
        self.decoders = anyio.CapacityLimiter(decode_threads)
        self.disconnects = 0
        self.refused = 0


def create_app(session: Session, signature: ModelSignature, batcher: DynamicBatcher, *, max_body_bytes: int,
               decode_threads: int, top_k: int) -> Starlette:
    """The ASGI app; its lifespan starts the batcher's worker and stops it after the last request drained."""
    state = ServerState(session, signature, batcher, decode_threads, top_k)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        batcher.start()
        yield
        batcher.stop()

    def model_route(tail: str, endpoint: Callable, methods: list[str]) -> list[Route]:
        return [Route(f"/v2/models/{{model}}{tail}", endpoint, methods=methods),
                Route(f"/v2/models/{{model}}/versions/{{version}}{tail}", endpoint, methods=methods)]

    routes = [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/stats", stats, methods=["GET"]),
        *model_route("", model_metadata, ["GET"]),
        *model_route("/ready", model_ready, ["GET"]),
        *model_route("/infer", infer, ["POST"]),
        *model_route("/stats", stats, ["GET"]),
        Route("/classify", classify, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, middleware=[Middleware(BodyLimit, max_bytes=max_body_bytes)],
        exception_handlers={RequestError: request_error, HTTPException: http_error, ClientDisconnect: disconnected,
                            Exception: internal_error},
    )
    app.state.serving = state
    return app


def _state(request: Request) -> ServerState:
    return request.app.state.serving


def _model(request: Request) -> ServerState:
    """The state, after checking the model name and version in the path (404 naming the served model)."""
    state = _state(request)
    name, version = request.path_params["model"], request.path_params.get("version", VERSION)
    if name != state.signature.name:
        raise RequestError(404, f"unknown model {name!r}; this server serves {state.signature.name!r}")
    if version != VERSION:
        raise RequestError(404, f"model {name!r} has no version {version!r}; it has version {VERSION!r}")
    return state


# ------------------------------------------------------------------------------------------- endpoints


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": "vitdeploy", "version": __version__,
                         "extensions": ["binary_tensor_data", "statistics"]})


async def live(request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    return Response(status_code=200 if _state(request).batcher.running else 503)


async def model_metadata(request: Request) -> Response:
    return JSONResponse(_model(request).signature.metadata())


async def model_ready(request: Request) -> Response:
    return Response(status_code=200 if _model(request).batcher.running else 503)


async def infer(request: Request) -> Response:
    state = _model(request)
    body = await request.body()
    header_length = request.headers.get(HEADER_LENGTH)
    if header_length is None and len(body) > PARSE_IN_THREAD_BYTES:
        parsed = await run_in_threadpool(parse_infer_request, body, header_length, state.signature)
    else:
        parsed = parse_infer_request(body, header_length, state.signature)
    logits = await state.batcher.infer(parsed.pixel_values)
    if not np.isfinite(logits).all():
        # The model's fault, not the request's: never hand out NaN as an answer (nor as a bare JSON literal).
        raise RequestError(500, "the model produced non-finite logits (NaN or Inf) for this input", kind="non_finite")
    content, headers = encode_infer_response(parsed, logits, state.signature.name)
    return Response(content, headers=headers)


async def stats(request: Request) -> Response:
    state = _model(request) if "model" in request.path_params else _state(request)
    return JSONResponse({"model_stats": [model_stats(state)]})


async def classify(request: Request) -> Response:
    """Images in, top-k labels out; several multipart files run as one request of that many samples."""
    state = _state(request)
    top_k = _top_k(request, state.top_k, state.session.num_classes)
    uploads = await _uploads(request, state.signature.max_batch_size)

    takes_images = state.session.takes_images
    channels_first = takes_images and state.signature.layout == "chw"

    def decode(name: str, data: bytes) -> np.ndarray:
        if takes_images:  # a raw-image model preprocesses in its graph: the decoded RGB pixels, full size
            pixels = np.asarray(decode_image(name, data=data))
            return pixels.transpose(2, 0, 1) if channels_first else pixels  # export --image-layout nchw
        return load_model_input(name, state.session.preprocess, data=data)  # type: ignore[arg-type]

    pixels = []
    for name, data in uploads:
        try:
            pixels.append(await anyio.to_thread.run_sync(decode, name, data, limiter=state.decoders))
        except ImageDecodeError as e:
            raise RequestError(400, f"{name}: {e.detail}", kind=e.kind, file=name) from None
    if takes_images:  # images of different sizes: one inference each
        logits = np.concatenate([await state.batcher.infer(image[None]) for image in pixels])
    else:
        logits = await state.batcher.infer(np.stack(pixels))
    session = state.session
    rows = [row_for_logits(name, row, session.labels, top_k, session.provider, session.runtime)
            for (name, _), row in zip(uploads, logits)]
    return JSONResponse({"model": state.signature.name, "predictions": rows})


def _top_k(request: Request, default: int, num_labels: int) -> int:
    text = request.query_params.get("top_k")
    if text is None:
        return min(default, num_labels)
    if not text.isdigit() or int(text) < 1:
        raise RequestError(400, f"top_k must be a positive integer, not {text!r}")
    return min(int(text), num_labels)


async def _uploads(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded image: the raw body, or every file of a multipart form."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        body = await request.body()
        if not body:
            raise RequestError(400, "empty body: POST the image bytes (or a multipart form with image files)")
        return [("upload", body)]
    files = []
    try:
        async with request.form(max_files=max_files, max_fields=max_files) as form:  # closes the spooled files
            for key, value in form.multi_items():
                if isinstance(value, str):
                    raise RequestError(400, f"form field {key!r} is text; send images as files")
                files.append((value.filename or key, await value.read()))
    except HTTPException as e:  # a malformed form, or more parts than a batch holds
        raise RequestError(400, f"multipart form refused: {e.detail}") from None
    if not files:
        raise RequestError(400, "the multipart form holds no file")
    return files


# ---------------------------------------------------------------------------------------------- stats


def model_stats(state: ServerState) -> dict[str, Any]:
    """Triton's per-model statistics (inference_stats, batch_stats) from the batcher's counters, plus
    "pending_requests", "refused_requests" and "client_disconnects"."""
    s = state.batcher.stats()

    def duration(count: int, ns: int) -> dict[str, int]:
        return {"count": count, "ns": ns}

    requests = s.requests_ok + s.requests_failed
    return {
        "name": state.signature.name,
        "version": VERSION,
        "last_inference": s.last_inference_ms,
        "inference_count": s.samples,
        "execution_count": s.executions,
        "inference_stats": {
            "success": duration(s.requests_ok, s.request_ns),
            "fail": duration(s.requests_failed, s.failed_ns),
            "queue": duration(requests, s.queue_ns),
            "compute_infer": duration(requests, s.compute_ns),
        },
        "batch_stats": [{"batch_size": size, "compute_infer": duration(count, s.batch_compute_ns[size])}
                        for size, count in sorted(s.batches.items())],
        "pending_requests": state.batcher.pending,
        "refused_requests": state.refused,
        "client_disconnects": state.disconnects,
    }


# ---------------------------------------------------------------------------------------------- errors


async def request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    _state(request).refused += 1
    return JSONResponse(exc.body(), status_code=exc.status)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    _state(request).refused += 1
    return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}"}, status_code=exc.status_code,
                        headers=exc.headers)


async def disconnected(request: Request, exc: Exception) -> Response:
    # The client left before its request was read; the response goes nowhere.
    _state(request).disconnects += 1
    return Response(status_code=499)


async def internal_error(request: Request, exc: Exception) -> Response:
    # A bug or a model failure, not the client's fault: say so (the traceback goes to the server's log).
    return JSONResponse({"error": f"internal server error: {type(exc).__name__}: {exc}"}, status_code=500)


class BodyLimit:
    """Refuses a body over `max_bytes` with 413: at once when Content-Length says so, otherwise as soon as the
    bytes received pass the limit (a chunked upload), before the app holds it all.

    Before answering, up to DRAIN_BYTES of the rest is read and dropped: a client still sending when the server
    closes the connection would see a broken pipe instead of the 413 and its message.
    """

    DRAIN_BYTES = 64 << 20

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self.drain(receive)
            response = JSONResponse({"error": self.message(declared.decode("latin-1"))}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await self.drain(receive)
                    raise RequestError(413, self.message(f"over {self.max_bytes}"))
            return message

        await self.app(scope, limited, send)

    async def drain(self, receive: Receive) -> None:
        dropped = 0
        while dropped <= self.DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            dropped += len(message.get("body", b""))

    def message(self, size: str) -> str:
        return f"request body of {size} bytes is over the limit of {self.max_bytes} bytes (--max-body-mb)"
