"""Batched ONNX Runtime inference on image files: `vitdeploy predict`.

numpy + Pillow + onnxruntime only (no torch): this is the path a deployment machine runs.

    inputs -> expand (files, folders, globs) -> decode + preprocess in a thread pool (one batch ahead)
           -> run_batch on the session -> softmax, top-k -> rows, written and flushed batch by batch

Every input gets exactly one row: a prediction, or an error (path, error type, message) for a file that could
not be decoded; processing always continues. The preprocessing is the spec stored in the .onnx metadata, applied
by images.decode_for_preprocess + images.preprocess, the same functions training evaluation uses.
"""

from __future__ import annotations

import csv
import glob
import json
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from vitdeploy import images, runtime
from vitdeploy.config import PreprocessSpec
from vitdeploy.errors import ConfigError, ModelFileError, VitDeployError
from vitdeploy.images import ImageDecodeError
from vitdeploy.onnx_file import OnnxModelInfo, resolve_model
from vitdeploy.progress import live_progress, to_stderr

FORMATS = ("table", "json", "jsonl", "csv")
# What a terminal shows while predict runs: images done of all, images/s, failures so far, time left.
PROGRESS_COLUMNS = (
    TextColumn("predict"), BarColumn(), MofNCompleteColumn(),
    TextColumn("{task.fields[rate]:.1f} images/s, {task.fields[failed]} failed"), TimeRemainingColumn(),
)
# Probabilities are written rounded: enough to rank and compare, short enough to read.
PROBABILITY_DECIMALS = 6


class InputError(VitDeployError):
    """No input matched, or the output path cannot be written (exit code 2)."""


@dataclass
class PredictRequest:
    inputs: list[str]  # files, folders or glob patterns
    model: Path | None = None  # an .onnx file or a folder to search; None: the newest .onnx under models/
    batch_size: int = 32
    workers: int = 2  # decoding threads
    device: str = "auto"
    threads: int | None = None  # ONNX Runtime intra-op threads (None: its default, one per core)
    top_k: int = 5
    output_format: str = "table"
    output: Path | None = None  # None: stdout
    recursive: bool = False
    progress: bool = True  # live progress on stderr, when it is a terminal


@dataclass
class PredictSummary:
    model: str
    provider: str
    images_ok: int = 0
    images_failed: int = 0
    seconds: float = 0.0  # decoding + inference + writing, from the first batch to the last
    interrupted: bool = False
    output: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)  # kept only for the table format

    @property
    def images_per_second(self) -> float:
        return self.images_ok / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "images_ok": self.images_ok,
            "images_failed": self.images_failed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "interrupted": self.interrupted,
            "output": self.output,
        }


# ------------------------------------------------------------------------------------------- finding inputs


def expand_inputs(inputs: list[str], recursive: bool = False) -> tuple[list[Path], list[str]]:
    """(image paths in the order given, without duplicates; inputs that matched nothing).

    A file is taken as given (decoding decides whether it is an image); a folder contributes its files with an
    image suffix (recursively with `recursive`); anything else is a glob pattern (`**` needs `recursive`).
    """
    found: dict[Path, None] = {}
    unmatched: list[str] = []
    for text in inputs:
        path = Path(text)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = _images_in_folder(path, recursive)
        else:
            matches = []
            for match in sorted(glob.glob(text, recursive=recursive)):
                p = Path(match)
                matches.extend([p] if p.is_file() else _images_in_folder(p, recursive) if p.is_dir() else [])
        if not matches:
            unmatched.append(text)
        found.update(dict.fromkeys(matches))
    return list(found), unmatched


def _images_in_folder(folder: Path, recursive: bool) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and images.is_image_file(p) and not p.name.startswith("."))


# ----------------------------------------------------------------------------------------------- the model


@dataclass
class LoadedModel:
    session: Any  # onnxruntime.InferenceSession
    provider: str
    info: OnnxModelInfo


def open_model(
    path: Path, device: str = "auto", threads: int | None = None, log: Callable[[str], None] = to_stderr,
    spin: bool = False,
) -> LoadedModel:
    """Open a vitdeploy .onnx on `device` and check that its input size and labels agree with its metadata.

    `spin` is off by default: the decoding threads need the CPU time that ORT's idle threads would otherwise burn
    busy-waiting after each run (benchmarks/predict_throughput.py measures both settings).
    """
    session, provider = runtime.make_session(path, device=device, threads=threads, notify=log, spin=spin)
    info = runtime.model_info_from_session(session, path)
    _batch, _channels, height, width = session.get_inputs()[0].shape
    size = info.preprocess.image_size
    if (height, width) != (size, size) and all(isinstance(d, int) for d in (height, width)):
        raise ModelFileError(f"{path}: the graph takes {height}x{width} images but its metadata says {size}x{size}")
    num_classes = session.get_outputs()[0].shape[-1]
    if isinstance(num_classes, int) and num_classes != len(info.labels):
        raise ModelFileError(f"{path}: the graph has {num_classes} outputs but {len(info.labels)} labels")
    return LoadedModel(session, provider, info)


def load_model_input(path: Path, spec: PreprocessSpec, data: bytes | None = None) -> np.ndarray:
    """One image file (or its bytes, `data`, named `path`) -> its (3, S, S) float32 model input, exactly as
    training evaluation computes it."""
    return images.preprocess(images.decode_for_preprocess(path, spec, data), spec)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------ rows/output


def prediction_row(path: Path, probabilities: np.ndarray, labels: list[str], top_k: int, provider: str) -> dict:
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    top = [{"label": labels[i], "probability": round(float(probabilities[i]), PROBABILITY_DECIMALS)} for i in order]
    return {"path": str(path), "ok": True, "label": top[0]["label"], "probability": top[0]["probability"],
            "top_k": top, "provider": provider}


def error_row(path: str, kind: str, message: str, provider: str) -> dict:
    return {"path": path, "ok": False, "error": kind, "message": message, "provider": provider}


CSV_FIELDS = ("path", "ok", "label", "probability", "top_k", "error", "message", "provider")


class RowWriter:
    """Writes rows in one format and flushes after every batch, so an interrupted run keeps finished rows.

    json is an object written incrementally: {"model", "provider", "predictions": [rows...], "summary"}; close()
    (called from a `finally`) completes it, so the file stays valid JSON after Ctrl-C. table rows are kept and
    rendered by the caller at the end.
    """

    def __init__(self, stream: IO[str], output_format: str, model: str, provider: str):
        self.stream = stream
        self.format = output_format
        self.count = 0
        self.kept: list[dict] = []
        if output_format == "csv":
            self.csv = csv.DictWriter(stream, fieldnames=CSV_FIELDS, extrasaction="ignore")
            self.csv.writeheader()
        elif output_format == "json":
            head = json.dumps({"model": model, "provider": provider})[:-1]  # the object stays open
            stream.write(head + ', "predictions": [')
        stream.flush()

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            if self.format == "jsonl":
                self.stream.write(json.dumps(row) + "\n")
            elif self.format == "json":
                self.stream.write(("," if self.count else "") + "\n  " + json.dumps(row))
            elif self.format == "csv":
                top = "|".join(f"{t['label']}:{t['probability']}" for t in row.get("top_k", []))
                self.csv.writerow({**row, "top_k": top})
            else:
                self.kept.append(row)
            self.count += 1
        self.stream.flush()

    def close(self, summary: dict[str, Any]) -> None:
        if self.format == "json":
            self.stream.write(f"\n], \"summary\": {json.dumps(summary)}}}\n")
        self.stream.flush()


def check_writable(output: Path) -> None:
    """Fail now, before any model or image is loaded, if `output` cannot be written; change nothing on disk.

    Opening for append neither truncates an existing file (whose rows a failed run should not wipe out) nor
    leaves a new one behind.
    """
    if output.is_dir():
        raise InputError(f"--output {output} is a folder; give a file path")
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


def predict(request: PredictRequest, log: Callable[[str], None] = to_stderr) -> PredictSummary:
    """Run the request; rows go to request.output (or stdout) as they are ready. Returns the summary.

    Ctrl-C stops after the batch in progress: the summary comes back with interrupted=True and every
    finished row is already written.
    """
    if request.batch_size < 1 or request.workers < 1 or request.top_k < 1:
        raise ConfigError("--batch-size, --workers and --top-k must be at least 1")
    output_format = output_format_for(request.output_format, request.output)
    if request.output is not None:
        check_writable(request.output)
    paths, unmatched = expand_inputs(request.inputs, request.recursive)
    if not paths:
        raise InputError(f"no input matched: {', '.join(unmatched) or '(none given)'}")
    model_path = resolve_model(request.model)
    model = open_model(model_path, request.device, request.threads, log)
    summary = PredictSummary(model=str(model_path), provider=model.provider,
                             output=str(request.output) if request.output else None)
    # newline="": the csv module writes its own line endings
    stream = open(request.output, "w", encoding="utf-8", newline="") if request.output else sys.stdout
    try:
        writer = RowWriter(stream, output_format, summary.model, summary.provider)
        try:
            writer.write([error_row(u, "no_match", "matched no file", model.provider) for u in unmatched])
            summary.images_failed = len(unmatched)
            run_pipeline(paths, model, request, writer, summary)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            writer.close(summary.to_dict())
            summary.rows = writer.kept
        return summary
    finally:
        if stream is not sys.stdout:
            stream.close()


def run_pipeline(paths: list[Path], model: LoadedModel, request: PredictRequest, writer: RowWriter,
                 summary: PredictSummary) -> None:
    """Decode, preprocess and classify `paths` with an open model, writing rows batch by batch into `writer` and
    counting into `summary` (request.batch_size, workers and top_k apply; benchmarks call this directly)."""
    spec, labels = model.info.preprocess, model.info.labels
    top_k = min(request.top_k, len(labels))
    started = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=request.workers, thread_name_prefix="decode")
    try:
        # decode_image refuses images over MAX_IMAGE_PIXELS itself; Pillow's own warning would only be noise.
        # (Set here, in the main thread, because warnings filters are process-wide and not thread-safe.)
        with warnings.catch_warnings(), live_progress(request.progress, *PROGRESS_COLUMNS) as progress:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            task = progress.add_task("predict", total=len(paths), rate=0.0, failed=summary.images_failed)
            overlap = model.provider != runtime.CPU
            for chunk, futures in _batches_ahead(pool, paths, spec, request.batch_size, overlap):
                results = [f.result() for f in futures]
                good = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
                probabilities = (softmax(runtime.run_batch(model.session, np.stack([results[i] for i in good])))
                                 if good else np.zeros((0, len(labels))))
                by_index = dict(zip(good, probabilities))
                rows = [
                    prediction_row(path, by_index[i], labels, top_k, model.provider) if i in by_index
                    else error_row(str(path), results[i].kind, results[i].detail, model.provider)
                    for i, path in enumerate(chunk)
                ]
                writer.write(rows)
                summary.images_ok += len(good)
                summary.images_failed += len(chunk) - len(good)
                summary.seconds = time.perf_counter() - started
                progress.update(task, advance=len(chunk), rate=summary.images_per_second,
                                failed=summary.images_failed)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
