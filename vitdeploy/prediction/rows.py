"""The rows `vitdeploy predict` writes, and the writers for each output format: one schema for every engine.

Local predict (vitdeploy.prediction.local) and Ray Data predict (vitdeploy.prediction.ray) both build rows with
row_for_logits / error_row and write them with open_row_writer, so their files are interchangeable.

A row (ROW_FIELDS; a field a row does not have is absent in JSON/JSONL, empty in CSV, null in Parquet):

    path         str    the input as given (bytes that are not UTF-8 shown as \\xNN escapes)
    ok           bool   True: a prediction; False: an error row
    label        str    the best label                               (predictions only)
    probability  float  its softmax probability, rounded to 6 places  (predictions only)
    top_k        list   [{label, probability}], best first           (predictions only)
    error        str    a short machine-readable reason, e.g. corrupt, non_finite, no_match  (errors only)
    message      str    what went wrong, for a person                 (errors only)
    runtime      str    ort | openvino | reference
    provider     str    what really ran it, e.g. CPUExecutionProvider
    model        str    the model file's name                          (written by the writers, every row)
    model_sha256 str    the sha256 of its bytes (and of its .onnx.data): --resume refuses another model

Parquet (PARQUET_SCHEMA): path string, ok bool, label string, probability double,
top_k list<struct<label: string, probability: double>>, error string, message string, runtime string,
provider string, model string, model_sha256 string; the file's metadata also holds vitdeploy.model and
vitdeploy.model_sha256. It is written beside the output under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from vitdeploy.core import strict_json
from vitdeploy.core.atomic import fsync_file, reported_as, temp_beside
from vitdeploy.core.extras import require
from vitdeploy.errors import ConfigError, InputError

FORMATS = ("table", "json", "jsonl", "csv", "parquet")
# Formats that can hold the rows of an earlier run for --resume to skip.
RESUMABLE_FORMATS = ("jsonl", "parquet")
# Probabilities are written rounded: enough to rank and compare, short enough to read.
PROBABILITY_DECIMALS = 6
ROW_FIELDS = ("path", "ok", "label", "probability", "top_k", "error", "message", "runtime", "provider", "model",
              "model_sha256")
# How every JSONL line predict writes begins (strict_json.dumps of a row, "path" first): a last line an interrupted
# run left unfinished is cut off by --resume only when it begins so; anything else is not predict's to cut.
JSONL_ROW_START = b'{"path": '
HASH_CHUNK_BYTES = 1 << 20
CSV_FIELDS = ROW_FIELDS


# ----------------------------------------------------------------------------------------------- rows


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as text that any output can hold: bytes that are not UTF-8 (possible in POSIX file names) are shown
    as \\xNN escapes instead of aborting the write."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def prediction_row(path: str | os.PathLike[str], probabilities: np.ndarray, labels: list[str], top_k: int,
                   provider: str, runtime: str = "ort") -> dict:
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    top = [{"label": labels[i], "probability": round(float(probabilities[i]), PROBABILITY_DECIMALS)} for i in order]
    return {"path": display_path(path), "ok": True, "label": top[0]["label"], "probability": top[0]["probability"],
            "top_k": top, "runtime": runtime, "provider": provider}


def error_row(path: str | os.PathLike[str], kind: str, message: str, provider: str, runtime: str = "ort") -> dict:
    return {"path": display_path(path), "ok": False, "error": kind, "message": message, "runtime": runtime,
            "provider": provider}


def row_for_logits(path: str | os.PathLike[str], logits: np.ndarray, labels: list[str], top_k: int,
                   provider: str, runtime: str = "ort") -> dict:
    """One image's row from its logits: its top-k, or a `non_finite` error row when any logit is NaN or Inf (a
    tampered or foreign model: NaN is not an answer, however it ranks)."""
    if not np.isfinite(logits).all():
        return error_row(path, "non_finite", "the model produced non-finite logits (NaN or Inf) for this image",
                         provider, runtime)
    return prediction_row(path, softmax(logits[None])[0], labels, top_k, provider, runtime)


def model_identity(path: Path) -> dict[str, str]:
    """What every row records about the model that wrote it: the file's name and the sha256 of its bytes (its
    .onnx.data file's bytes follow, when it has one)."""
    digest = hashlib.sha256()
    for part in (path, path.with_name(path.name + ".data")):
        if part == path or part.is_file():
            with reported_as(part), open(part, "rb") as f:
                while chunk := f.read(HASH_CHUNK_BYTES):
                    digest.update(chunk)
    return {"model": path.name, "model_sha256": digest.hexdigest()}


def compact(row: dict[str, Any]) -> dict[str, Any]:
    """A row read back from Parquet or Arrow (every field present, None where absent) in the JSON form."""
    return {key: value for key, value in row.items() if value is not None}


# ----------------------------------------------------------------------------------------------- Parquet


def parquet_schema() -> Any:
    """PARQUET_SCHEMA as a pyarrow schema (pyarrow is imported only here: it is the [parquet] extra)."""
    import pyarrow as pa

    top = pa.struct([pa.field("label", pa.string(), nullable=False),
                     pa.field("probability", pa.float64(), nullable=False)])
    return pa.schema([
        pa.field("path", pa.string(), nullable=False),
        pa.field("ok", pa.bool_(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("probability", pa.float64()),
        pa.field("top_k", pa.list_(top)),
        pa.field("error", pa.string()),
        pa.field("message", pa.string()),
        pa.field("runtime", pa.string(), nullable=False),
        pa.field("provider", pa.string(), nullable=False),
        pa.field("model", pa.string()),  # null in the tables Ray's actors return; the writer fills both
        pa.field("model_sha256", pa.string()),
    ])


def rows_to_table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=parquet_schema())


def require_parquet() -> None:
    require("parquet", "--format parquet")


class ParquetRowWriter:
    """Writes rows as one Parquet file: a row group per batch into a temporary file beside `path`, renamed into
    place by close(), so the final path never holds a half-written file (a Parquet file is unreadable until its
    footer is written). abort() removes the temporary file and leaves `path` as it was.

    `previous` (a table in PARQUET_SCHEMA, from --resume) is written first, so the new file replaces the old one
    with its rows kept."""

    format = "parquet"

    def __init__(self, path: Path, previous: Any = None, identity: dict[str, str] | None = None):
        import pyarrow.parquet as pq

        self.path = path
        self.count = 0
        self.kept: list[dict] = []
        self.identity = identity or {}
        self._staged = temp_beside(path)
        self._temp = self._staged.__enter__()
        schema = parquet_schema().with_metadata({f"vitdeploy.{k}": v for k, v in self.identity.items()})
        self._writer = pq.ParquetWriter(self._temp, schema, compression="zstd")
        if previous is not None and previous.num_rows:
            self._writer.write_table(previous)

    def write(self, rows: list[dict]) -> None:
        if rows:
            for row in rows:
                row.update(self.identity)
            self._writer.write_table(rows_to_table(rows).replace_schema_metadata(self._writer.schema.metadata))
            self.count += len(rows)

    def close(self, summary: dict[str, Any]) -> None:
        """Complete the file and rename it into place (the rows so far, after an interrupt too)."""
        self._writer.close()
        with reported_as(self.path):
            fsync_file(self._temp)
            os.replace(self._temp, self.path)
        self._staged.__exit__(None, None, None)

    def abort(self, summary: dict[str, Any]) -> None:
        """A failed run: remove the temporary file; the output path is left as it was."""
        self._writer.close()
        self._staged.__exit__(None, None, None)


# ----------------------------------------------------------------------------------------------- text formats


class RowWriter:
    """Writes rows in one format and flushes after every batch, so an interrupted run keeps finished rows.

    json is an object written incrementally: {"model", "provider", "predictions": [rows...], "summary"}; close()
    (called from a `finally`) completes it, so the file stays valid JSON after Ctrl-C. table rows are kept and
    rendered by the caller at the end. A batch's rows are written as one piece; when a file cannot take it (a full
    disk), the file is cut back to the rows before it, so no row is ever left half-written.
    """

    def __init__(self, stream: IO[bytes] | IO[str], output_format: str, model: str, provider: str,
                 path: Path | None = None, written: int = 0, identity: dict[str, str] | None = None):
        self.stream = stream
        self.identity = identity or {}
        self.path = path  # the output file, when rows go to one (else stdout)
        self.format = output_format
        self.count = 0
        self.kept: list[dict] = []
        self.written = written  # bytes of complete rows in the file (--resume: those it had)
        if output_format == "csv":
            self._emit(_csv_line(CSV_FIELDS))
        elif output_format == "json":
            head = strict_json.dumps({"model": model, "provider": provider})[:-1]  # the object stays open
            self._emit(head + ', "predictions": [')

    def write(self, rows: list[dict]) -> None:
        parts = []
        for row in rows:
            row.update(self.identity)
            if self.format == "jsonl":
                parts.append(strict_json.dumps(row) + "\n")
            elif self.format == "json":
                parts.append(("," if self.count else "") + "\n  " + strict_json.dumps(row))
            elif self.format == "csv":
                top = "|".join(f"{t['label']}:{t['probability']}" for t in row.get("top_k") or [])
                parts.append(_csv_line([{**row, "top_k": top}.get(name, "") for name in CSV_FIELDS]))
            else:
                self.kept.append(row)
            self.count += 1
        self._emit("".join(parts))

    def close(self, summary: dict[str, Any]) -> None:
        if self.format == "json":
            self._emit(f"\n], \"summary\": {strict_json.dumps(summary)}}}\n")
        if self.path is not None:
            self.stream.close()

    def abort(self, summary: dict[str, Any]) -> None:
        """A failed run: complete what was written (rows are always whole) and close the file."""
        self.close(summary)

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


# ----------------------------------------------------------------------------------------------- choosing


def output_format_for(requested: str, output: Path | None) -> str:
    if output is not None and output.is_dir():
        raise InputError(f"--output {output} is a folder; give a file path (e.g. {output / 'predictions.jsonl'})")
    if requested not in FORMATS:
        raise ConfigError(f"unknown --format {requested!r}; choose one of: {', '.join(FORMATS)}")
    if requested == "parquet":
        if output is None:
            raise ConfigError("--format parquet needs --output FILE (Parquet is not written to a terminal)")
        require_parquet()
    if requested == "table" and output is not None:
        by_suffix = output.suffix.lower().lstrip(".")
        if by_suffix not in ("json", "jsonl", "csv", "parquet"):
            raise ConfigError(f"--output {output}: give --format json, jsonl, csv or parquet (a table is for the "
                              "terminal)")
        return output_format_for(by_suffix, output)
    return requested


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


def open_row_writer(output_format: str, output: Path | None, model: str, provider: str,
                    previous: PreviousRows | None = None,
                    identity: dict[str, str] | None = None) -> RowWriter | ParquetRowWriter:
    """The writer for `output_format` into `output` (None: stdout), stamping each row with `identity`
    (model_identity). With `previous` (--resume), its rows are kept: JSONL is appended to (after cutting off a line
    an interrupted run left unfinished), Parquet is rewritten with them first."""
    if output_format == "parquet":
        assert output is not None  # output_format_for refused parquet without --output
        with reported_as(output):
            return ParquetRowWriter(output, previous.table if previous else None, identity)
    if output is None:
        return RowWriter(sys.stdout, output_format, model, provider, identity=identity)
    # Unbuffered: what write() accepted is in the file, so a failed batch can be cut off exactly.
    with reported_as(output):
        stream = open(output, "r+b" if previous is not None else "wb", buffering=0)
    if previous is None:
        return RowWriter(stream, output_format, model, provider, output, identity=identity)
    stream.truncate(previous.complete_bytes)
    stream.seek(previous.complete_bytes)
    return RowWriter(stream, output_format, model, provider, output, previous.complete_bytes, identity)


# ----------------------------------------------------------------------------------------------- --resume


@dataclass(frozen=True)
class PreviousRows:
    """The rows an earlier run wrote to `output` (--resume): which paths are done, and (Parquet) the table."""

    paths: frozenset[str]
    table: Any = None  # Parquet: the rows, rewritten first into the new file
    complete_bytes: int = 0  # JSONL: the length of its complete lines, after which new rows are appended
    models: frozenset[tuple[Any, Any]] = frozenset()  # the (model, model_sha256) its rows name

    def check_model(self, output: Path, identity: dict[str, str]) -> None:
        """Refuse to add rows of another model (or of an unknown one) to a file that holds rows already."""
        wanted = (identity["model"], identity["model_sha256"])
        others = sorted(self.models - {wanted}, key=str)
        if not others:
            return
        name, digest = others[0]
        if digest is None:
            raise InputError(f"--resume: the rows in {output} do not name the model that wrote them (an older "
                             "vitdeploy wrote them); write to a new file")
        raise InputError(f"--resume: {output} holds rows of {name} (sha256 {digest[:12]}...), not of "
                         f"{identity['model']} (sha256 {identity['model_sha256'][:12]}...); resume with that model "
                         "or write to a new file")


def read_previous_rows(output: Path, output_format: str) -> PreviousRows | None:
    """What --resume keeps from `output`: None when it does not exist yet. A JSONL line an interrupted run left
    unfinished (no newline, or not JSON) ends what is kept; a Parquet file that cannot be read is refused."""
    if output_format not in RESUMABLE_FORMATS:
        raise ConfigError(f"--resume needs --format {' or '.join(RESUMABLE_FORMATS)}, not {output_format}")
    if not output.is_file():
        return None
    if output_format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(output)
            for name in ("model", "model_sha256"):  # an older vitdeploy's file: check_model refuses its rows
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
            table = table.cast(parquet_schema())
        except (OSError, ValueError, KeyError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"--resume: {output} is not a Parquet file of predict rows ({e})") from None
        models = zip(table.column("model").to_pylist(), table.column("model_sha256").to_pylist())
        return PreviousRows(frozenset(table.column("path").to_pylist()), table, models=frozenset(models))
    paths: set[str] = set()
    models: set[tuple[Any, Any]] = set()
    complete = 0
    with reported_as(output), open(output, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n") and (line.startswith(JSONL_ROW_START) or JSONL_ROW_START.startswith(line)):
                break  # the unfinished last line of an interrupted run: cut off, its input predicted again
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("path"), str) or "ok" not in row:
                raise InputError(f"--resume: {output} is not a file of predict rows (line {number} is not one); "
                                 "nothing was changed: give --output a new file or one predict wrote")
            paths.add(row["path"])
            models.add((row.get("model"), row.get("model_sha256")))
            complete += len(line)
    return PreviousRows(frozenset(paths), complete_bytes=complete, models=frozenset(models))
