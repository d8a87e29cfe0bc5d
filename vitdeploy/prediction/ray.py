"""`vitdeploy predict --engine ray`: the rows local predict writes, computed by Ray Data on one machine or a cluster.

    inputs -> expanded on the driver as local predict expands them (URIs such as s3://bucket/images/ go to Ray as
              they are: Ray and pyarrow list and read them)
           -> ray.data.read_binary_files(paths, include_paths=True): the files' bytes. Not read_images, whose
              resize ignores the aspect ratio and EXIF orientation: vitdeploy decodes the bytes itself.
           -> map_batches(Classifier, compute=ActorPoolStrategy(size=--workers), batch_size=--batch-size): each actor
              opens one runtime session and decodes + preprocesses with vitdeploy.core.images, as local predict does
           -> rows (vitdeploy.prediction.rows, one Arrow schema) streamed back to the driver, which writes them with
              local predict's writer: Parquet (renamed into place when complete) or JSONL

Rows come in the order Ray finishes them, not input order (compare by path). A file named with bytes that are not
UTF-8 cannot be named to pyarrow: it is read by a Ray task from its byte name instead, into the same pipeline.
The model file travels to the actors through Ray's object store, so cluster nodes need vitdeploy installed
(`pip install "vitdeploy[ray]"`), not the model.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vitdeploy.core.extras import require
from vitdeploy.core.images import IMAGE_SUFFIXES
from vitdeploy.core.inputs import NoMatch
from vitdeploy.core.progress import live_progress
from vitdeploy.errors import ConfigError, DeviceError
from vitdeploy.files.onnx_file import external_data_path
from vitdeploy.prediction.local import (
    PROGRESS_COLUMNS,
    Plan,
    PredictSummary,
    classify_batch,
    decode_one,
    open_model,
    plan,
    write_rows,
)
from vitdeploy.prediction.rows import compact, display_path, error_row, open_row_writer, rows_to_table
from vitdeploy.requests import PredictRequest

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "jsonl")
# Devices whose sessions need a GPU on the actor's node.
GPU_DEVICES = ("cuda", "tensorrt", "gpu")
# What one actor holds, for the cap on --workers: an idle Ray worker process with vitdeploy imported (~230-360 MB
# measured) plus the model about four times (object store, the actor's copy on disk, the session's weights, its
# arena). Actors may take MEMORY_SHARE of the memory available when the run starts.
ACTOR_BASE_BYTES = 350 * 2**20
ACTOR_MODEL_COPIES = 4
MEMORY_SHARE = 0.9
CONNECT_TIMEOUT_S = 5.0  # a Ray head answers a TCP connection at once; nothing answering is not worth retrying
# Default ports when --address gives none: Ray Client (ray://) and the GCS.
CLIENT_PORT, GCS_PORT = 10001, 6379


def is_uri(text: str) -> bool:
    """s3://..., gs://..., hdfs://...: a location only Ray and pyarrow can list and read."""
    return "://" in text


@dataclass(frozen=True)
class ActorSpec:
    """What each actor opens, and the resources it asks Ray for."""

    model_files: Any  # a Ray object reference to {file name: bytes} of the .onnx (and its .onnx.data): actors need
    # no shared disk, and the bytes travel once through the object store however many actors start
    model_name: str
    runtime: str | None
    device: str
    threads: int  # the session's threads = the CPUs the actor reserves
    top_k: int

    @property
    def gpus(self) -> int:
        return 1 if self.device in GPU_DEVICES else 0


class Classifier:
    """One Ray actor: one runtime session, opened once; a batch of file bytes in, a table of rows out."""

    def __init__(self, spec: ActorSpec):
        import ray

        self._folder = tempfile.TemporaryDirectory(prefix="vitdeploy-ray-")  # removed with the actor
        for name, data in ray.get(spec.model_files).items():
            Path(self._folder.name, name).write_bytes(data)
        path = Path(self._folder.name, spec.model_name)
        self.session = open_model(path, spec.runtime, spec.device, spec.threads)
        self.top_k = min(spec.top_k, len(self.session.labels))

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        paths = [str(p) for p in batch["path"]]
        readable = [(p, data) for p, data in zip(paths, batch["bytes"]) if data is not None]
        decoded = [decode_one(p, self.session.preprocess, data) for p, data in readable]
        rows = classify_batch([p for p, _ in readable], decoded, self.session, self.top_k)
        for p in paths:  # read_by_byte_name could not read it
            rows.setdefault(p, error_row(p, "unreadable", "the file could not be read", self.session.provider,
                                         self.session.runtime))
        return rows_to_table([rows[p] for p in paths])


def read_by_byte_name(batch: dict[str, np.ndarray]) -> dict[str, list]:
    """Files whose names are not UTF-8 (pyarrow cannot name them): read from their byte names, in a Ray task."""
    data: list[bytes | None] = []
    for name in batch["name"]:
        try:
            with open(bytes(name), "rb") as f:
                data.append(f.read())
        except OSError:
            data.append(None)  # the actor writes its error row
    return {"path": list(batch["path"]), "bytes": data}


# ---------------------------------------------------------------------------------------------- the driver


def predict_on_ray(request: PredictRequest) -> PredictSummary:
    """Run `request` on Ray Data: a local Ray started for it (and stopped after) unless `request.address` names a
    cluster or this process already joined one. Same rows, formats parquet or jsonl."""
    require("ray", "--engine ray")
    uris = [text for text in request.inputs if is_uri(text)]
    local = replace(request, inputs=[text for text in request.inputs if not is_uri(text)])
    work = plan(local, elsewhere=bool(uris))
    if work.output_format not in FORMATS:
        raise ConfigError(f"--engine ray writes --format {' or '.join(FORMATS)} to --output; not {work.output_format}")
    files = [item for item in work.items if isinstance(item, Path)]
    if not files and not uris:  # --resume found every input done: nothing for Ray to do
        return without_ray(request, work)
    model_bytes = sum(len(data) for data in model_files(work.model_path).values())
    workers = actor_count(request.workers, len(files), bool(uris), request.batch_size, model_bytes,
                          available_memory() if request.address is None else None)
    if workers < request.workers:
        why = ("this machine's free memory holds that many (each holds a Ray worker and the model)"
               if workers < min(request.workers, _batches(len(files), request)) or uris
               else f"{len(files)} images make {_batches(len(files), request)} batches of {request.batch_size}")
        logger.warning("--workers %d: starting %d actors: %s", request.workers, workers, why)
        request = replace(request, workers=workers)
    import ray

    threads = request.threads or 1
    with terminate_as_interrupt():
        with held_signals() as held:  # Ray interrupted while it starts has crashed the process (SIGSEGV)
            started = connect(request.address, request.workers * threads)
        try:
            held.raise_if_signalled()
            return _run(request, work, files, uris, threads)
        finally:
            if started:
                ray.shutdown()  # stops the raylet, and with it every actor and worker of this run


def _run(request: PredictRequest, work: Plan, files: list[Path], uris: list[str], threads: int) -> PredictSummary:
    """The run itself, on the Ray this process has joined."""
    import ray

    spec = ActorSpec(ray.put(model_files(work.model_path)), work.model_path.name, request.runtime,
                     request.device, threads, request.top_k)
    summary = PredictSummary(model=str(work.model_path), provider="",
                             runtime={"engine": "ray", "ray": ray.__version__, "workers": str(request.workers)},
                             output=str(request.output) if request.output else None)
    writer = open_row_writer(work.output_format, request.output, summary.model, "", work.previous, work.identity)
    skip = work.previous.paths if work.previous else frozenset()
    write_rows(writer, summary, lambda: stream_rows(request, spec, files, uris, work.items, skip, writer, summary))
    return summary


def without_ray(request: PredictRequest, work: Plan) -> PredictSummary:
    """--resume with every input already in the output: the rows of inputs that matched nothing, no Ray started."""
    logger.info("--engine ray: nothing left to predict (every input has its row in %s); Ray was not started",
                request.output)
    summary = PredictSummary(model=str(work.model_path), provider="none", runtime={"engine": "ray", "runtime": "none"},
                             output=str(request.output) if request.output else None)
    writer = open_row_writer(work.output_format, request.output, summary.model, "none", work.previous, work.identity)
    late = [error_row(item.text, "no_match", "matched no file", "none", request.runtime or "ort")
            for item in work.items if isinstance(item, NoMatch)]
    write_rows(writer, summary, lambda: _count(writer, summary, late, time.perf_counter()))
    return summary


def _batches(files: int, request: PredictRequest) -> int:
    return max(1, math.ceil(files / request.batch_size))


def actor_count(asked: int, files: int, uris: bool, batch_size: int, model_bytes: int,
                free_bytes: int | None) -> int:
    """How many actors to start: --workers, but no more than there are batches (when the inputs are all local
    files: a URI's files are counted by Ray), nor than `free_bytes` (a local Ray; None: a cluster's) can hold."""
    count = asked if uris else min(asked, max(1, math.ceil(files / batch_size)))
    if free_bytes is not None:
        per_actor = ACTOR_BASE_BYTES + ACTOR_MODEL_COPIES * model_bytes
        count = min(count, int(free_bytes * MEMORY_SHARE // per_actor))
    return max(1, count)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), in bytes; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class terminate_as_interrupt:
    """SIGTERM raises KeyboardInterrupt while a Ray run is under way, as Ctrl-C does: the rows so far are completed
    and the Ray this run started is stopped (Python's default for SIGTERM exits at once and leaves the raylet and
    its workers running). Only in the main thread, where signal handlers can be set."""

    def __enter__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _interrupt)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class held_signals:
    """Ctrl-C and SIGTERM held back while Ray starts (ray.init interrupted half-way crashed the process with
    SIGSEGV on shutdown, and left its raylet running); raise_if_signalled() then raises KeyboardInterrupt."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> held_signals:
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, lambda signum, frame: self.received.append(signum))
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def raise_if_signalled(self) -> None:
        if self.received:
            raise KeyboardInterrupt(f"signal {self.received[0]}")


def check_address(address: str) -> None:
    """DeviceError (exit code 2) naming `address` when nothing answers there: ray.init would retry for minutes."""
    if address in ("auto", "local"):
        return
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        port_number = int(port) if port else (CLIENT_PORT if address.startswith("ray://") else GCS_PORT)
        socket.create_connection((host.strip("[]"), port_number), timeout=CONNECT_TIMEOUT_S).close()
    except ValueError:
        raise ConfigError(f"--address {address}: expected HOST:PORT, ray://HOST:PORT or auto") from None
    except OSError as e:
        raise DeviceError(f"--engine ray: no Ray cluster answers at {address} ({e.strerror or e}); start one there "
                          "(`ray start --head`) or fix --address") from None


def model_files(path: Path) -> dict[str, bytes]:
    """The .onnx and, when its weights are stored beside it, its .onnx.data file (the graph names it)."""
    files = {path.name: path.read_bytes()}
    external = external_data_path(path)
    if external.is_file():
        files[external.name] = external.read_bytes()
    return files


def connect(address: str | None, needed: int) -> bool:
    """Join the cluster at `address`, or start Ray on this machine with the `needed` CPUs for the actors at least;
    True when this call started it (the caller stops it). A process already connected (a test's Ray) is used."""
    import ray

    if ray.is_initialized():
        return False
    cpus = os.cpu_count() or 1
    if address is None and needed > cpus:
        logger.warning("--workers x --threads = %d is more than this machine's %d cores: they will share them",
                       needed, cpus)
    if address is not None:
        check_address(address)
    began = time.perf_counter()
    try:
        if address is None:
            ray.init(num_cpus=max(cpus, needed), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise DeviceError(f"--engine ray: could not start or join {where}: {e}") from None
    logger.info("Ray %s in %.1f s", f"joined at {address}" if address else "started", time.perf_counter() - began)
    return True


def dataset(files: list[Path], uris: list[str], request: PredictRequest, spec: ActorSpec) -> Any:
    """The Ray Data pipeline: file bytes -> the Classifier actors -> rows."""
    import ray
    from ray.data import ActorPoolStrategy

    named = [display_path(os.path.abspath(p)) for p in files if _utf8(p)]
    sources = []
    # Reading is I/O: it asks for no CPU, so the actors may hold every core without starving it.
    if named:
        sources.append(ray.data.read_binary_files(named, include_paths=True, num_cpus=0, ignore_missing_paths=True))
    if uris:  # folders there contribute their image files, as local folders do
        suffixes = [suffix.lstrip(".") for suffix in IMAGE_SUFFIXES]
        sources.append(ray.data.read_binary_files(uris, include_paths=True, num_cpus=0, file_extensions=suffixes))
    odd = [{"path": display_path(os.path.abspath(p)), "name": os.fsencode(os.path.abspath(p))}
           for p in files if not _utf8(p)]
    if odd:
        sources.append(ray.data.from_items(odd).map_batches(read_by_byte_name, num_cpus=0, batch_format="numpy"))
    if not sources:
        return None
    data = sources[0].union(*sources[1:]) if len(sources) > 1 else sources[0]
    return data.map_batches(
        Classifier, fn_constructor_args=(spec,), compute=ActorPoolStrategy(size=request.workers),
        batch_size=request.batch_size, batch_format="numpy", num_cpus=spec.threads, num_gpus=spec.gpus,
    )


def _utf8(path: Path) -> bool:
    try:
        os.fsencode(os.path.abspath(path)).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def stream_rows(request: PredictRequest, spec: ActorSpec, files: list[Path], uris: list[str],
                items: list[Path | NoMatch], skip: frozenset[str], writer: Any, summary: PredictSummary) -> None:
    """Run the pipeline and write each batch of rows as it arrives, under the paths as the user spelled them;
    then an error row for each input that matched nothing or that Ray found missing."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our own progress line; Ray's bars would interleave with it
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-run INFO lines are not ours to show
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled": we did that
    spelled = {display_path(os.path.abspath(p)): display_path(p) for p in files}
    seen: set[str] = set()
    began = time.perf_counter()
    ds = dataset(files, uris, request, spec)
    with live_progress(request.progress, *PROGRESS_COLUMNS) as progress:
        task = progress.add_task("predict", total=len(files) or None, rate=0.0, failed=0)
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow") if ds is not None else ():
            rows = [compact(row) for row in table.to_pylist()]
            for row in rows:
                seen.add(row["path"])
                row["path"] = spelled.get(row["path"], row["path"])
            rows = [row for row in rows if row["path"] not in skip]  # --resume over URIs: done ones dropped here
            _count(writer, summary, rows, began)
            progress.update(task, advance=len(rows), rate=summary.images_per_second, failed=summary.images_failed)
    provider, runtime = summary.provider or "none", summary.runtime.get("runtime", request.runtime or "ort")
    late = [error_row(item.text, "no_match", "matched no file", provider, runtime)
            for item in items if isinstance(item, NoMatch)]
    late += [error_row(p, "missing", "no such file (gone before Ray read it)", provider, runtime)
             for p in files if display_path(os.path.abspath(p)) not in seen]
    _count(writer, summary, late, began)


def _count(writer: Any, summary: PredictSummary, rows: list[dict], began: float) -> None:
    if not rows:
        return
    writer.write(rows)
    if not summary.provider:  # the actors report what really ran the model
        summary.provider = rows[0]["provider"]
        summary.runtime["runtime"] = rows[0]["runtime"]
    failed = sum(not row["ok"] for row in rows)
    summary.images_ok += len(rows) - failed
    summary.images_failed += failed
    summary.seconds = time.perf_counter() - began
