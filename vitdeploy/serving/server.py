"""`vitdeploy serve`: open the model, build the app, listen, and on Ctrl-C / SIGTERM drain and return.

uvicorn runs the app. On the first SIGINT or SIGTERM it stops accepting connections, lets every request in flight
finish (the batcher keeps running until the last one is answered), then the app's lifespan stops the worker and
serve() returns normally: exit code 0. A second Ctrl-C stops without waiting.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from PIL import Image

from vitdeploy.errors import ConfigError, VitDeployError
from vitdeploy.files.discovery import resolve_model
from vitdeploy.requests import SERVE_MAX_BATCH, ServeSettings
from vitdeploy.runtimes import open_runtime
from vitdeploy.runtimes.registry import check_runtime_name
from vitdeploy.serving.app import create_app, model_stats
from vitdeploy.serving.batcher import DynamicBatcher
from vitdeploy.serving.protocol import ModelSignature, check_dynamic_batch, image_signature, item_shape
from vitdeploy.serving.triton import check_model_name, default_name

logger = logging.getLogger(__name__)

# Time the drain may take before uvicorn closes what is still open.
GRACEFUL_SHUTDOWN_S = 30


@dataclass
class ServeSummary:
    model: str
    name: str
    url: str
    provider: str
    max_batch_size: int = 0  # the largest batch (and request) served
    batching: str = "dynamic"  # or why each request runs alone
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedServer:
    """Everything but the event loop: tests run `server` in a thread, serve() runs it in the main thread."""

    server: uvicorn.Server
    app: Any  # the Starlette app
    sock: socket.socket
    url: str
    summary: ServeSummary


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that a signal which asked for a graceful stop is not raised again afterwards
    (uvicorn re-raises it so that the process dies of it; a drained server exits 0)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            return
        if not self.should_exit:
            logger.info("%s: draining requests in flight, then stopping", signal.Signals(sig).name)
        self.should_exit = True


def prepare(model: Path | None, settings: ServeSettings) -> PreparedServer:
    check_settings(settings)
    path = resolve_model(model)
    name = check_model_name(settings.name or default_name(path))
    sock = listen(settings.host, settings.port)  # a port in use fails before the model loads
    try:
        # Opened as predict opens it (idle threads do not spin: the decoders need the cores), contract checked.
        session = open_runtime(settings.runtime, path, settings.device, threads=settings.threads, spin=False)
        num_classes = session.num_classes  # reads the file's description, checking its input contract, first
        check_dynamic_batch(path, session.input_shape)
        max_batch = settings.max_batch_size or SERVE_MAX_BATCH["cpu" if session.description.device == "cpu" else "gpu"]
        if session.takes_images:  # export --image-input: decoded images of any size, preprocessed in the graph
            signature = image_signature(name, num_classes, max_batch, session.info.image_input["layout"])
        else:
            signature = ModelSignature(name, item_shape(path, session.input_shape), num_classes, max_batch)
    except BaseException:
        sock.close()
        raise
    # A file whose answers depend on its batch is served, but never batched with other clients' requests.
    dependence = session.info.batch_dependence
    batcher = DynamicBatcher(session.run, max_batch, settings.max_queue_delay_ms / 1000,
                             gather=dependence is None)
    app = create_app(session, signature, batcher, max_body_bytes=round(settings.max_body_mb * 2**20),
                     decode_threads=settings.decode_threads or len(os.sched_getaffinity(0)), top_k=settings.top_k)
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    server = DrainingServer(config)
    batching = "dynamic" if dependence is None else f"off: {dependence}, so each request runs alone"
    if dependence is not None:
        logger.info("%s: dynamic batching %s", path.name, batching)
    return PreparedServer(server, app, sock, url, ServeSummary(str(path), name, url, session.provider, max_batch,
                                                                batching))


def serve(model: Path | None, settings: ServeSettings) -> ServeSummary:
    """Serve until Ctrl-C or SIGTERM, then drain; returns what was served."""
    prepared = prepare(model, settings)
    s = prepared.summary
    batching = (f"batches of up to {s.max_batch_size}, queue delay {settings.max_queue_delay_ms:g} ms"
                if s.batching == "dynamic" else f"each request alone, up to {s.max_batch_size} images")
    logger.info("serving %s as %r on %s (%s; %s); Ctrl-C stops", s.model, s.name, prepared.url, s.provider, batching)
    with warnings.catch_warnings():
        # Images between 1x and 2x Image.MAX_IMAGE_PIXELS are refused by the decoder itself; the warning is noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            prepared.server.run(sockets=[prepared.sock])
        finally:
            prepared.sock.close()
    s.stats = model_stats(prepared.app.state.serving)
    return s


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one), before the app starts, so the URL is known."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        raise VitDeployError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def check_settings(settings: ServeSettings) -> None:
    if settings.runtime is not None:
        check_runtime_name(settings.runtime)
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, not {settings.port}")
    if (settings.max_batch_size is not None and settings.max_batch_size < 1) or settings.max_queue_delay_ms < 0:
        raise ConfigError("--max-batch-size must be at least 1 and --max-queue-delay-ms not negative")
    if settings.max_body_mb <= 0 or settings.top_k < 1 or (settings.decode_threads is not None
                                                            and settings.decode_threads < 1):
        raise ConfigError("--max-body-mb, --top-k and --decode-threads must be positive")
