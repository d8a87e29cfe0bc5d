"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file at the final path."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vitdeploy.core import strict_json
from vitdeploy.errors import WriteError

# OS errors that mean "this file cannot be written here", as opposed to a bug.
_WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


@contextlib.contextmanager
def reported_as(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a full disk (or a read-only or forbidden location) while writing into one WriteError line naming `path`
    (exit code 2), instead of a traceback; other errors pass through."""
    try:
        yield
    except OSError as e:
        if e.errno in _WRITE_FAILURES:
            raise WriteError.from_os_error(path, e) from None
        raise


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the same folder as `final`; on success fsync it and rename it into place.

    The temporary file lives beside the target so that the rename stays on one filesystem (and so is atomic).
    On any exception the temporary file is removed and `final` is untouched.
    """
    final = Path(final)
    with reported_as(final), temp_beside(final) as tmp:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
        _fsync_dir(final.parent)


def atomic_write_many(writers: dict[Path, Callable[[Path], Any]]) -> None:
    """Write several files so that a failure while writing leaves every previous file untouched.

    All files are written and fsynced under temporary names first (the slow part, where a crash is likely);
    only then are they renamed into place, in the order given. Put the file that vouches for the others
    (e.g. a config naming their hashes) last.
    """
    with contextlib.ExitStack() as stack:
        temps = {final: stack.enter_context(temp_beside(Path(final))) for final in writers}
        for final, write in writers.items():
            with reported_as(final):
                write(temps[final])
                fsync_file(temps[final])
        for final, tmp in temps.items():
            os.replace(tmp, final)
        for folder in {Path(f).parent for f in writers}:
            _fsync_dir(folder)


_UMASK = os.umask(0)
os.umask(_UMASK)


def fsync_file(path: Path) -> None:
    """Flush a written file to the disk, so that a rename after it never exposes an empty or partial file."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def temp_beside(final: Path) -> Iterator[Path]:
    """A temporary path beside `final` (same filesystem, so renaming it into place is atomic); removed on exit
    unless it was renamed. For writers that stream into a file and rename it themselves."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_UMASK)  # mkstemp creates 0600; the final file should get the usual mode
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)  # already renamed on success


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Yield a new temporary folder beside `final`; on success rename it to `final` in one step. A crash or Ctrl-C
    leaves no half-written (or empty) folder at `final`: at most a hidden .<name>.<random>.tmp folder beside it,
    which remove_stale_staging(final) removes on the writer's next run. `final` must not exist yet, unless
    `replace`: then the old folder is renamed aside and removed once the new one is in place (between the two
    renames, for a moment, neither is at `final`; never a mixture of the two)."""
    final = Path(final)
    with reported_as(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    aside = None
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700; the folder should get the usual mode
        yield tmp
        with reported_as(final):
            if replace and final.exists():
                aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
                os.rename(final, aside)  # onto an empty folder: Linux and macOS replace it
            os.rename(tmp, final)
        _fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already renamed on success
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def remove_stale_staging(final: str | os.PathLike[str]) -> None:
    """Staging folders beside `final` that a killed atomic_folder left behind (named .<name>.<random>.tmp)."""
    final = Path(final)
    if final.parent.is_dir():
        for path in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def atomic_write(final: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """Call `write(tmp_path)` and atomically move the result to `final`."""
    with atomic_path(final) as tmp:
        write(tmp)


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(final, lambda p: p.write_bytes(data))


def atomic_write_json(final: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(final, (strict_json.dumps(obj, indent=2, default=str) + "\n").encode())


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
