"""Batched inference on image files: `vitdeploy predict`, on ONNX Runtime (default), OpenVINO or the reference.

numpy + Pillow + onnxruntime only (no torch, no onnx) on ONNX Runtime: this is the path a deployment machine runs.

    inputs -> expand (files, folders, globs) -> decode + preprocess in a thread pool (one batch ahead)
           -> session.run on the runtime (vitdeploy.runtimes) -> softmax, top-k -> rows, written and flushed batch
              by batch

Every input gets exactly one row: a prediction, or an error (path, error type, message) for a file that could
not be decoded; processing always continues. The preprocessing is the spec stored in the .onnx metadata, applied
by images.decode_image + images.preprocess, the same functions training evaluation uses.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from vitdeploy.core import images
from vitdeploy.core.atomic import reported_as
from vitdeploy.core.config import PreprocessSpec
from vitdeploy.core.inputs import NoMatch, ordered_inputs, recursive_hint
from vitdeploy.core.progress import live_progress
from vitdeploy.core.strict_json import record
from vitdeploy.errors import ConfigError, ImageDecodeError, InputError
from vitdeploy.files.discovery import resolve_model
from vitdeploy.prediction.rows import (
    ParquetRowWriter,
    PreviousRows,
    RowWriter,
    check_writable,
    display_path,
    error_row,
    model_identity,
    open_row_writer,
    output_format_for,
    read_previous_rows,
    row_for_logits,
)
from vitdeploy.requests import ENGINES, PredictRequest
from vitdeploy.runtimes import Session, open_runtime

logger = logging.getLogger(__name__)
# What a terminal shows while predict runs: images done of all, images/s, failures so far, time left.
PROGRESS_COLUMNS = (
    TextColumn("predict"), BarColumn(), MofNCompleteColumn(),
    TextColumn("{task.fields[rate]:.1f} images/s, {task.fields[failed]} failed"), TimeRemainingColumn(),
)


@dataclass
class PredictSummary:
    model: str
    provider: str
    runtime: dict[str, str] = field(default_factory=dict)  # runtime, device, provider, precision
    images_ok: int = 0
    images_failed: int = 0
    seconds: float = 0.0  # decoding + inference + writing, from the first batch to the last
    interrupted: bool = False
    output: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)  # kept only for the table format

    @property
    def passed(self) -> bool:
        """Every input got its prediction (the CLI: exit code 4 otherwise, 130 when interrupted)."""
        return not self.images_failed and not self.interrupted

    @property
    def images_per_second(self) -> float:
        return self.images_ok / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return record(self, exclude=("rows",), seconds=round(self.seconds, 3),
                      images_per_second=round(self.images_per_second, 2))


# ----------------------------------------------------------------------------------------------- the model


def open_model(path: Path, runtime: str | None, device: str, threads: int | None) -> Session:
    """The model as predict runs it, locally and in each Ray actor: on the runtime asked for (None: the one the
    file was made for), input contract checked before any output is written, and ORT's idle threads not spinning,
    because the decoding threads need the CPU time that spinning would burn (benchmarks/predict_throughput.py
    measures both settings)."""
    session = open_runtime(runtime, path, device, threads=threads, spin=False)
    session.info  # reads and checks the file's description now
    return session


def load_model_input(path: Path, spec: PreprocessSpec, data: bytes | None = None) -> np.ndarray:
    """One image file (or its bytes, `data`, named `path`) -> its (3, S, S) float32 model input, exactly as
    training evaluation computes it."""
    return images.preprocess(images.decode_image(path, data=data), spec)


# --------------------------------------------------------------------------------------------- the pipeline


def decode_one(path: str | Path, spec: PreprocessSpec, data: bytes | None = None) -> np.ndarray | ImageDecodeError:
    """load_model_input, with a file that cannot be decoded as the error (its row) instead of an exception."""
    try:
        return load_model_input(Path(path), spec, data)
    except ImageDecodeError as e:
        return e


def _batches_ahead(
    pool: ThreadPoolExecutor, paths: list[Path], spec: PreprocessSpec, batch_size: int, overlap: bool = True
) -> Iterator[tuple[list[Path], list[Future]]]:
    """Yield batches of decoding futures, keeping exactly one batch queued beyond the one being consumed.

    With overlap=False, batch i+1 is submitted only once batch i has run (its images still decode in parallel).
    NOTE: when the model runs on the CPU its thread pool already uses every core, and each parallel op waits for
    its slowest thread; decoders running beside it stall every op (measured: end-to-end 0.82x model-only with
    overlap, vs about 0.9x without, ViT-Ti/16 on 2 cores). On a GPU the cores are free: overlap.
    """
    starts = iter(range(0, len(paths), batch_size))
    pending: deque[tuple[list[Path], list[Future]]] = deque()

    def submit_next() -> None:
        start = next(starts, None)
        if start is not None:
            chunk = paths[start : start + batch_size]
            pending.append((chunk, [pool.submit(decode_one, p, spec) for p in chunk]))

    if not overlap:
        submit_next()
        while pending:
            yield pending.popleft()
            submit_next()  # runs when the consumer asks for the next batch, i.e. after this one ran
        return
    submit_next()
    while pending:
        submit_next()  # decode batch i+1 while batch i runs
        yield pending.popleft()


@dataclass(frozen=True)
class Plan:
    """What a request means before anything runs: its output format, the inputs still to do, the model file."""

    output_format: str
    items: list[Path | NoMatch]  # in input order; with --resume, without those already in the output
    previous: PreviousRows | None  # --resume: the rows an earlier run wrote
    model_path: Path
    identity: dict[str, str]  # model_identity(model_path): what every row records


def plan(request: PredictRequest, elsewhere: bool = False) -> Plan:
    """Check the request and find its inputs and model, before any model or image is loaded. `elsewhere`: the
    request also names inputs on a filesystem only the engine reads (Ray: s3://...), so local ones may be none."""
    if request.batch_size < 1 or request.workers < 1 or request.top_k < 1:
        raise ConfigError("--batch-size, --workers and --top-k must be at least 1")
    if request.engine not in ENGINES:
        raise ConfigError(f"unknown --engine {request.engine!r}; choose one of: {', '.join(ENGINES)}")
    output_format = output_format_for(request.output_format, request.output)
    if request.output is not None:
        check_writable(request.output)
    previous = None
    if request.resume:
        if request.output is None:
            raise ConfigError("--resume needs --output: the file whose rows are kept and whose inputs are skipped")
        previous = read_previous_rows(request.output, output_format)
    items = ordered_inputs(request.inputs, request.recursive)
    if not elsewhere and not any(isinstance(item, Path) for item in items):
        raise InputError(f"no input matched: {', '.join(i.text for i in items) or '(none given)'}"
                         + recursive_hint(request.inputs))
    if previous is not None:
        items = [item for item in items if not (isinstance(item, Path) and display_path(item) in previous.paths)]
        logger.info("--resume: %d rows already in %s are kept and their inputs skipped", len(previous.paths),
                    request.output)
    model_path = resolve_model(request.model, option="--model FILE")
    identity = model_identity(model_path)
    if previous is not None:
        previous.check_model(request.output, identity)
    return Plan(output_format, items, previous, model_path, identity)


def predict(request: PredictRequest) -> PredictSummary:
    """Run the request; rows go to request.output (or stdout) as they are ready, one per input, in input order.
    Returns the summary. The local engine: vitdeploy.prediction.ray.predict_on_ray runs a request on Ray Data.

    Ctrl-C stops after the batch in progress: the summary comes back with interrupted=True and every
    finished row is already written (Parquet: the file is completed with them and renamed into place).
    """
    if request.engine != "local":
        raise ConfigError(f"prediction.predict runs --engine local; --engine {request.engine} is "
                          "vitdeploy.predict(..., engine=...)")
    work = plan(request)
    session = open_model(work.model_path, request.runtime, request.device, request.threads)
    summary = PredictSummary(model=str(work.model_path), provider=session.provider, runtime=session.describe(),
                             output=str(request.output) if request.output else None)
    writer = open_row_writer(work.output_format, request.output, summary.model, summary.provider, work.previous,
                             work.identity)
    write_rows(writer, summary, lambda: run_pipeline(work.items, session, request, writer, summary))
    return summary


def write_rows(writer: RowWriter | ParquetRowWriter, summary: PredictSummary, run: Callable[[], None]) -> None:
    """Call `run` (which writes rows into `writer`), then complete the output: after Ctrl-C too (interrupted=True,
    finished rows kept). A full disk ends the run with one line naming the file; rows written before it stay
    whole, and a Parquet file being written is removed (it is only ever renamed into place complete)."""
    with reported_as(summary.output or "stdout"):
        try:
            run()
        except KeyboardInterrupt:
            summary.interrupted = True
        except BaseException:
            writer.abort(summary.to_dict())
            raise
        finally:
            summary.rows = writer.kept
        writer.close(summary.to_dict())


def run_pipeline(items: list[Path | NoMatch], session: Session, request: PredictRequest,
                 writer: RowWriter | ParquetRowWriter,
                 summary: PredictSummary) -> None:
    """Decode, preprocess and classify the files among `items` with an open model, writing one row per item, in
    order, batch by batch into `writer` and counting into `summary` (request.batch_size, workers and top_k apply;
    benchmarks call this directly with a list of paths)."""
    spec, labels = session.preprocess, session.labels
    top_k = min(request.top_k, len(labels))
    paths = [item for item in items if isinstance(item, Path)]
    position = {path: i for i, path in enumerate(items) if isinstance(path, Path)}
    written = 0  # items[:written] have their rows

    def rows_until(end: int, computed: dict[Path, dict]) -> list[dict]:
        """Rows of items[written:end]: the computed ones, and an error row for each input that matched nothing."""
        return [computed[item] if isinstance(item, Path)
                else error_row(item.text, "no_match", "matched no file", session.provider, session.runtime)
                for item in items[written:end]]

    started = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=request.workers, thread_name_prefix="decode")
    try:
        # decode_image refuses images over MAX_IMAGE_PIXELS itself; Pillow's own warning would only be noise.
        # (Set here, in the main thread, because warnings filters are process-wide and not thread-safe.)
        with warnings.catch_warnings(), live_progress(request.progress, *PROGRESS_COLUMNS) as progress:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            task = progress.add_task("predict", total=len(paths), rate=0.0, failed=0)
            overlap = session.description.device != "cpu"
            for chunk, futures in _batches_ahead(pool, paths, spec, request.batch_size, overlap):
                computed = classify_batch(chunk, [f.result() for f in futures], session, top_k)
                end = position[chunk[-1]] + 1
                rows = rows_until(end, computed)
                writer.write(rows)
                written = end
                failed = sum(not row["ok"] for row in rows)
                summary.images_ok += len(rows) - failed
                summary.images_failed += failed
                summary.seconds = time.perf_counter() - started
                progress.update(task, advance=len(chunk), rate=summary.images_per_second,
                                failed=summary.images_failed)
        rows = rows_until(len(items), {})  # inputs after the last file that matched nothing
        writer.write(rows)
        summary.images_failed += len(rows)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def classify_batch(paths: list[Any], decoded: list[np.ndarray | ImageDecodeError], session: Session,
                   top_k: int) -> dict[Any, dict]:
    """Rows for one batch: top-k for each decoded image whose logits are finite, an error row for the others."""
    labels, provider, name = session.labels, session.provider, session.runtime
    good = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
    logits = (session.run(np.stack([decoded[i] for i in good])) if good
              else np.zeros((0, len(labels)), np.float32))
    rows = {}
    for i, path in enumerate(paths):
        error = decoded[i]
        if isinstance(error, ImageDecodeError):
            rows[path] = error_row(path, error.kind, error.detail, provider, name)
    for row_logits, i in zip(logits, good):
        rows[paths[i]] = row_for_logits(paths[i], row_logits, labels, top_k, provider, name)
    return rows
