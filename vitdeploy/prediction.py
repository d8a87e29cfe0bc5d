"""Batched inference on image files: `vitdeploy predict`, on ONNX Runtime (default), OpenVINO or the reference.

numpy + Pillow + onnxruntime only (no torch, no onnx) on ONNX Runtime: this is the path a deployment machine runs.

    inputs -> expand (files, folders, globs) -> decode + preprocess in a thread pool (one batch ahead)
           -> session.run on the runtime (vitdeploy.runtimes) -> softmax, top-k -> rows, written and flushed batch
              by batch

Every input gets exactly one row: a prediction, or an error (path, error type, message) for a file that could
not be decoded; processing always continues. The preprocessing is the spec stored in the .onnx metadata, applied
by images.decode_for_preprocess + images.preprocess, the same functions training evaluation uses.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from vitdeploy import images, strict_json
from vitdeploy.config import PreprocessSpec
from vitdeploy.atomic import reported_as
from vitdeploy.errors import ConfigError, ImageDecodeError, InputError
from vitdeploy.inputs import NoMatch, ordered_inputs
from vitdeploy.discovery import resolve_model
from vitdeploy.progress import live_progress
from vitdeploy.requests import PredictRequest
from vitdeploy.runtimes import Session, open_runtime
from vitdeploy.strict_json import record

FORMATS = ("table", "json", "jsonl", "csv")
# What a terminal shows while predict runs: images done of all, images/s, failures so far, time left.
PROGRESS_COLUMNS = (
    TextColumn("predict"), BarColumn(), MofNCompleteColumn(),
    TextColumn("{task.fields[rate]:.1f} images/s, {task.fields[failed]} failed"), TimeRemainingColumn(),
)
# Probabilities are written rounded: enough to rank and compare, short enough to read.
PROBABILITY_DECIMALS = 6


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


def load_model_input(path: Path, spec: PreprocessSpec, data: bytes | None = None) -> np.ndarray:
    """One image file (or its bytes, `data`, named `path`) -> its (3, S, S) float32 model input, exactly as
    training evaluation computes it."""
    return images.preprocess(images.decode_for_preprocess(path, spec, data), spec)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------ rows/output


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as text that any output can hold: bytes that are not UTF-8 (possible in POSIX file names) are shown
    as \\xNN escapes instead of aborting the write."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def prediction_row(path: Path, probabilities: np.ndarray, labels: list[str], top_k: int, provider: str,
                   runtime: str = "ort") -> dict:
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    top = [{"label": labels[i], "probability": round(float(probabilities[i]), PROBABILITY_DECIMALS)} for i in order]
    return {"path": display_path(path), "ok": True, "label": top[0]["label"], "probability": top[0]["probability"],
            "top_k": top, "runtime": runtime, "provider": provider}


def error_row(path: str | os.PathLike[str], kind: str, message: str, provider: str, runtime: str = "ort") -> dict:
    return {"path": display_path(path), "ok": False, "error": kind, "message": message, "runtime": runtime,
            "provider": provider}


CSV_FIELDS = ("path", "ok", "label", "probability", "top_k", "error", "message", "runtime", "provider")


class RowWriter:
    """Writes rows in one format and flushes after every batch, so an interrupted run keeps finished rows.

    json is an object written incrementally: {"model", "provider", "predictions": [rows...], "summary"}; close()
    (called from a `finally`) completes it, so the file stays valid JSON after Ctrl-C. table rows are kept and
    rendered by the caller at the end. A batch's rows are written as one piece; when a file cannot take it (a full
    disk), the file is cut back to the rows before it, so no row is ever left half-written.
    """

    def __init__(self, stream: IO[bytes] | IO[str], output_format: str, model: str, provider: str,
                 path: Path | None = None):
        self.stream = stream
        self.path = path  # the output file, when rows go to one (else stdout)
        self.format = output_format
        self.count = 0
        self.kept: list[dict] = []
        self.written = 0  # bytes of complete rows in the file
        if output_format == "csv":
            self._emit(_csv_line(CSV_FIELDS))
        elif output_format == "json":
            head = strict_json.dumps({"model": model, "provider": provider})[:-1]  # the object stays open
            self._emit(head + ', "predictions": [')

    def write(self, rows: list[dict]) -> None:
        parts = []
        for row in rows:
            if self.format == "jsonl":
                parts.append(strict_json.dumps(row) + "\n")
            elif self.format == "json":
                parts.append(("," if self.count else "") + "\n  " + strict_json.dumps(row))
            elif self.format == "csv":
                top = "|".join(f"{t['label']}:{t['probability']}" for t in row.get("top_k", []))
                parts.append(_csv_line([{**row, "top_k": top}.get(name, "") for name in CSV_FIELDS]))
            else:
                self.kept.append(row)
            self.count += 1
        self._emit("".join(parts))

    def close(self, summary: dict[str, Any]) -> None:
        if self.format == "json":
            self._emit(f"\n], \"summary\": {strict_json.dumps(summary)}}}\n")

    def _emit(self, text: str) -> None:
        if self.path is None:
            self.stream.write(text)
            self.stream.flush()
            return
        encoded = text.encode("utf-8")
        pending = memoryview(encoded)
        try:
            while pending:  # an unbuffered file may take part of it at a time
                pending = pending[self.stream.write(pending):]
        except OSError:
            if self.stream.seekable():  # cut a half-written batch off; the rows before it stay whole
                self.stream.seek(self.written)
                self.stream.truncate()
            raise
        self.written += len(encoded)


def _csv_line(values: Any) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()


def check_writable(output: Path) -> None:
    """Fail now, before any model or image is loaded, if `output` cannot be written; change nothing on disk.

    Opening for append neither truncates an existing file (whose rows a failed run should not wipe out) nor
    leaves a new one behind. Only regular files are probed: opening a FIFO would wait for a reader.
    """
    if output.is_dir():
        raise InputError(f"--output {output} is a folder; give a file path")
    if output.exists() and not output.is_file():
        return
    existed = output.exists()
    try:
        with open(output, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise InputError(f"--output {output}: cannot write: {e.strerror}") from None
    if not existed:
        output.unlink()


def output_format_for(requested: str, output: Path | None) -> str:
    if requested not in FORMATS:
        raise ConfigError(f"unknown --format {requested!r}; choose one of: {', '.join(FORMATS)}")
    if requested == "table" and output is not None:
        by_suffix = output.suffix.lower().lstrip(".")
        if by_suffix not in ("json", "jsonl", "csv"):
            raise ConfigError(f"--output {output}: give --format json, jsonl or csv (a table is for the terminal)")
        return by_suffix
    return requested


# --------------------------------------------------------------------------------------------- the pipeline


def _decode_one(path: Path, spec: PreprocessSpec) -> np.ndarray | ImageDecodeError:
    try:
        return load_model_input(path, spec)
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
            pending.append((chunk, [pool.submit(_decode_one, p, spec) for p in chunk]))

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


def predict(request: PredictRequest) -> PredictSummary:
    """Run the request; rows go to request.output (or stdout) as they are ready, one per input, in input order.
    Returns the summary.

    Ctrl-C stops after the batch in progress: the summary comes back with interrupted=True and every
    finished row is already written.
    """
    if request.batch_size < 1 or request.workers < 1 or request.top_k < 1:
        raise ConfigError("--batch-size, --workers and --top-k must be at least 1")
    output_format = output_format_for(request.output_format, request.output)
    if request.output is not None:
        check_writable(request.output)
    items = ordered_inputs(request.inputs, request.recursive)
    if not any(isinstance(item, Path) for item in items):
        raise InputError(f"no input matched: {', '.join(i.text for i in items) or '(none given)'}")
    model_path = resolve_model(request.model)
    # spin off: the decoding threads need the CPU time that ORT's idle threads would otherwise burn busy-waiting
    # after each run (benchmarks/predict_throughput.py measures both settings).
    session = open_runtime(request.runtime, model_path, request.device, threads=request.threads, spin=False)
    session.info  # the input contract, checked before any output is written
    summary = PredictSummary(model=str(model_path), provider=session.provider, runtime=session.describe(),
                             output=str(request.output) if request.output else None)
    # Unbuffered: what write() accepted is in the file, so a failed batch can be cut off exactly.
    stream = open(request.output, "wb", buffering=0) if request.output else sys.stdout
    try:
        # A full disk ends the run with one line naming the file; the rows written before it stay whole.
        with reported_as(request.output or "stdout"):
            writer = RowWriter(stream, output_format, summary.model, summary.provider, request.output)
            try:
                run_pipeline(items, session, request, writer, summary)
            except KeyboardInterrupt:
                summary.interrupted = True
            finally:
                writer.close(summary.to_dict())
                summary.rows = writer.kept
        return summary
    finally:
        if stream is not sys.stdout:
            stream.close()


def run_pipeline(items: list[Path | NoMatch], session: Session, request: PredictRequest, writer: RowWriter,
                 summary: PredictSummary) -> None:
    """Decode, preprocess and classify the files among `items` with an open session, writing one row per item, in
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


def classify_batch(paths: list[Path], decoded: list[np.ndarray | ImageDecodeError], session: Session,
                   top_k: int) -> dict[Path, dict]:
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


def row_for_logits(path: str | os.PathLike[str], logits: np.ndarray, labels: list[str], top_k: int,
                   provider: str, runtime: str = "ort") -> dict:
    """One image's row from its logits: its top-k, or a `non_finite` error row when any logit is NaN or Inf (a
    tampered or foreign model: NaN is not an answer, however it ranks)."""
    if not np.isfinite(logits).all():
        return error_row(path, "non_finite", "the model produced non-finite logits (NaN or Inf) for this image",
                         provider, runtime)
    return prediction_row(path, softmax(logits[None])[0], labels, top_k, provider, runtime)
