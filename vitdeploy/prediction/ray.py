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
import os
import tempfile
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
    import ray

    threads = request.threads or 1
    started = connect(request.address, request.workers * threads)
    try:
        spec = ActorSpec(ray.put(model_files(work.model_path)), work.model_path.name, request.runtime,
                         request.device, threads, request.top_k)
        summary = PredictSummary(model=str(work.model_path), provider="",
                                 runtime={"engine": "ray", "ray": ray.__version__, "workers": str(request.workers)},
                                 output=str(request.output) if request.output else None)
        writer = open_row_writer(work.output_format, request.output, summary.model, "", work.previous)
        skip = work.previous.paths if work.previous else frozenset()
        write_rows(writer, summary, lambda: stream_rows(request, spec, files, uris, work.items, skip, writer, summary))
        return summary
    finally:
        if started:
            ray.shutdown()


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
