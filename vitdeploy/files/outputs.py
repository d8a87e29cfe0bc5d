"""Where a command may write what a user names with -o/--out: never over something vitdeploy did not write.

The rule, for every command that writes a folder (import, train --out, explain -o, triton --out, samples):
the folder may be

  - a path that does not exist yet (it and its parents are created when the command writes),
  - an empty folder (vitdeploy's own temporary files, `.NAME.XXXXXXXX.tmp`, do not count),
  - a folder vitdeploy wrote, of the kind the command writes (FolderKind.recognise; it is then updated as that
    command writes: a bundle is replaced as train saves one, see bundle.py).

A folder is recognised by what vitdeploy writes into it, each kind by its own self-description:

  bundle              config.json that is a bundle's (its "format" and "model" entries)
  run (train --out)   nothing but best/ and last/, each a bundle (or empty, or about to be written)
  Triton repository   a README.md that says it was written by `vitdeploy triton`
  explain PNGs        nothing but PNG files named <stem>.<method>.png (method: cls, rollout, grad-rollout)
  held-out samples    nothing but PNG files named NNN_true-<label>.png
  (a new kind)        the marker file `.vitdeploy` naming it: write_marker() after creating the folder

Anything else (a file, a folder holding other files, a folder of another kind) is refused with InputError (exit
code 2) naming what is there, unless `force`. Whatever `force` says, the path must be writable: a probe folder is
created (and removed at once) where the output will go, so /proc/x, a read-only mount or a file on the way is
exit code 2 naming the path before any work starts, whoever runs the command (root included).

Files (-o FILE: export, predict, bench, explain --guide) follow the usual rule for an output file: an existing
file is replaced; a folder at that path, a file on the way or an unwritable place is refused (check_output_file).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitdeploy.core.atomic import atomic_write_json
from vitdeploy.errors import InputError, WriteError
from vitdeploy.files.bundle import is_bundle

MARKER = ".vitdeploy"  # {"kind": NAME}: written into folders of kinds that do not describe themselves
MAX_SHOWN = 5  # entries named in a refusal; the count says how many there are
# atomic.py's temporary files (and bundle.py's staged folders): .<final name>.<8 random characters>.tmp
TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")
EXPLAIN_PNG = re.compile(r".+\.(cls|rollout|grad-rollout)\.png")
SAMPLE_PNG = re.compile(r"\d{3,}_true-.+\.png")
TRITON_README = "Written by `vitdeploy triton`"


@dataclass(frozen=True)
class FolderKind:
    """A kind of folder vitdeploy writes: its name in messages, the command that writes it, and how an existing
    folder is recognised as one (called on non-empty folders only)."""

    name: str
    command: str
    recognise: Callable[[Path], bool]


def entries(folder: Path) -> list[Path]:
    """What a folder holds, vitdeploy's temporary files left out."""
    return sorted(p for p in folder.iterdir() if not TEMPORARY.fullmatch(p.name))


def marked(kind_name: str) -> Callable[[Path], bool]:
    """A recognise function for a kind that marks its folders with write_marker(): the marker names the kind, and
    every file in the folder is one the marker lists (a file a user added makes it the user's folder again)."""
    def recognise(folder: Path) -> bool:
        try:
            marker = json.loads((folder / MARKER).read_text())
            listed = set(marker["files"])
            return marker.get("kind") == kind_name and set(files_below(folder)) <= listed | {MARKER}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            return False
    return recognise


def files_below(folder: Path) -> list[str]:
    """Every file and link under `folder` (relative, '/'-separated), vitdeploy's temporary files left out (empty
    folders hold nothing to lose)."""
    found = []
    for path in sorted(folder.rglob("*")):
        if any(TEMPORARY.fullmatch(part) for part in path.relative_to(folder).parts):
            continue
        if path.is_symlink() or path.is_file():
            found.append(path.relative_to(folder).as_posix())
    return found


def unlisted(folder: Path) -> list[str]:
    """The files of a marked folder that its marker does not list (empty when it has no marker)."""
    try:
        listed = set(json.loads((folder / MARKER).read_text())["files"]) | {MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in files_below(folder) if name not in listed]


def write_marker(folder: Path, kind_name: str) -> None:
    """Mark `folder` as a `kind_name` folder holding exactly the files now in it (write it last)."""
    atomic_write_json(folder / MARKER, {"kind": kind_name, "files": files_below(folder)})


def _only(pattern: re.Pattern[str]) -> Callable[[Path], bool]:
    return lambda folder: all(p.is_file() and pattern.fullmatch(p.name) for p in entries(folder))


def _is_run(folder: Path) -> bool:
    return all(p.name in ("best", "last") and p.is_dir() and (is_bundle(p) or not entries(p))
               for p in entries(folder))


def _is_triton(folder: Path) -> bool:
    try:
        return TRITON_README in (folder / "README.md").read_text(encoding="utf-8", errors="replace")[:2000]
    except OSError:
        return False


BUNDLE = FolderKind("model bundle", "vitdeploy import / train", is_bundle)
RUN = FolderKind("training run (best/ and last/ bundles)", "vitdeploy train", _is_run)
TRITON = FolderKind("Triton repository", "vitdeploy triton", _is_triton)
EXPLAIN = FolderKind("folder of explain PNGs", "vitdeploy explain", _only(EXPLAIN_PNG))
SAMPLES = FolderKind("folder of held-out samples", "vitdeploy samples", _only(SAMPLE_PNG))
KINDS = (BUNDLE, RUN, TRITON, EXPLAIN, SAMPLES)


def check_output_folder(path: str | os.PathLike[str], kind: FolderKind, *, force: bool = False,
                        option: str = "-o") -> Path:
    """Refuse, before anything is written, an output folder the rule above does not allow (InputError, or
    WriteError when the place cannot be written: both exit code 2). Creates nothing; returns the path to write,
    which callers must use: a symbolic link to a folder is written through (the link stays a link)."""
    path = follow_link(Path(path), option)
    if path.exists() and not path.is_dir():
        raise InputError(f"cannot write to {path}: it is a file, and {option} names a folder")
    probe_writable(path)
    if not path.exists() or force or not entries(path) or kind.recognise(path):
        return path
    added = unlisted(path)  # a marked folder: name only what the user added to it
    held = [path / name for name in added] if added else entries(path)
    shown = ", ".join(p.relative_to(path).as_posix() + ("/" if p.is_dir() else "") for p in held[:MAX_SHOWN])
    shown += f", ... ({len(held)} in all)" if len(held) > MAX_SHOWN else ""
    other = next((k for k in KINDS if k is not kind and k.recognise(path)), None)
    what = (f"is a {other.name} ({other.command} wrote it), not a {kind.name}" if other else
            f"holds files vitdeploy did not write: {shown}")
    raise InputError(f"{path} {what}; {option} must name a new folder, an empty one or a {kind.name} that "
                     f"{kind.command} wrote. Choose another {option}, or pass --force to write there anyway")


def follow_link(path: Path, option: str) -> Path:
    """The folder a symbolic link `path` points to (so that the link is written through, never replaced by a
    folder); a link that points nowhere is refused: which of the two places the user means is not for us to guess."""
    if not path.is_symlink():
        return path
    target = path.resolve()
    if not target.exists():
        raise InputError(f"cannot write to {path}: it is a symbolic link to {os.readlink(path)}, which does not "
                         f"exist; create that folder or give {option} another path")
    return target


def check_output_file(path: str | os.PathLike[str], option: str = "-o") -> Path:
    """Refuse an output file path that is a folder, lies under a file, or cannot be written (exit code 2).
    An existing file is fine: it will be replaced."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder, and {option} names a file")
    probe_writable(path.parent if str(path.parent) else Path("."), shown=path)
    return path


def probe_writable(path: Path, shown: Path | None = None) -> None:
    """WriteError/InputError (exit code 2) naming `shown` (default `path`) unless a folder can be created at
    `path` or inside it: the nearest existing folder on the way is where the command's first write will go."""
    shown = shown or path
    existing = next(p for p in (path, *path.absolute().parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise InputError(f"cannot write {shown}: {existing} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".vitdeploy-probe.", dir=existing)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):  # /proc and friends: no folder can be made there
            raise InputError(f"cannot write {shown}: {existing} does not take new files") from None
        raise WriteError.from_os_error(shown, e) from None
    shutil.rmtree(probe, ignore_errors=True)
