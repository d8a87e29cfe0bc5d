"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file at the final path."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the same folder as `final`; on success fsync it and rename it into place.

    The temporary file lives beside the target so that the rename stays on one filesystem (and so is atomic).
    On any exception the temporary file is removed and `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(final: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """Call `write(tmp_path)` and atomically move the result to `final`."""
    with atomic_path(final) as tmp:
        write(tmp)


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(final, lambda p: p.write_bytes(data))


def atomic_write_json(final: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(final, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def _fsync_dir(folder: Path) -> None:
    # Persist the rename itself; not every platform lets us open a directory.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
