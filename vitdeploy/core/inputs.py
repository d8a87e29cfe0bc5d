"""Which files the user means: image paths, folders and glob patterns, in the order given, each file once.

Used by predict, bench's end-to-end timing, explain and serve alike, so that they all read the same inputs.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vitdeploy.core import images

MAX_COUNTED = 100_000  # files looked at below a folder for recursive_hint (a home folder is not walked whole)


@dataclass(frozen=True)
class NoMatch:
    """An input (a path or pattern, as given) that matched no file: it gets an error row in its place."""

    text: str


def ordered_inputs(inputs: list[str], recursive: bool = False) -> list[Path | NoMatch]:
    """Every input in the order given: the image files it names, or a NoMatch.

    A file is taken as given (decoding decides whether it is an image); a folder contributes its files with an
    image suffix (recursively with `recursive`); anything else is a glob pattern (`**` needs `recursive`).
    Each file appears once, however many inputs name it (compared by resolved path), under its first spelling.
    Folders are walked following links to folders, but never into a folder already visited, so link cycles end.
    """
    seen: set[Path] = set()
    items: list[Path | NoMatch] = []
    for text in inputs:
        matches = _matches(text, recursive)
        if not matches:
            items.append(NoMatch(text))
        for path in matches:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                items.append(path)
    return items


def recursive_hint(inputs: list[str]) -> str:
    """For a message saying no input matched: how many images lie in the subfolders of the folders given, and that
    --recursive takes them (empty when there are none, e.g. with --recursive given)."""
    found = []
    for text in inputs:
        folder = Path(text)
        if folder.is_dir():
            below = itertools.islice(folder.rglob("*"), MAX_COUNTED)
            count = sum(1 for p in below if p.suffix.lower() in images.IMAGE_SUFFIXES and p.is_file())
            if count:
                found.append(f"{count} images below {text}")
    return f" ({', '.join(found)}, in subfolders: add --recursive)" if found else ""


def expand_inputs(inputs: list[str], recursive: bool = False) -> tuple[list[Path], list[str]]:
    """(image paths in the order given, without duplicates; inputs that matched nothing)."""
    items = ordered_inputs(inputs, recursive)
    return [i for i in items if isinstance(i, Path)], [i.text for i in items if isinstance(i, NoMatch)]


def _matches(text: str, recursive: bool) -> list[Path]:
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        return _images_in_folder(path, recursive)
    if recursive and "**" in text:
        return _recursive_glob(text)
    found: list[Path] = []
    for match in sorted(glob.glob(text)):  # no `**`: one level per pattern part, so no walk that could loop
        p = Path(match)
        found.extend([p] if p.is_file() else _images_in_folder(p, recursive) if p.is_dir() else [])
    return found


def _images_in_folder(folder: Path, recursive: bool) -> list[Path]:
    files = _walk_files(folder) if recursive else (p for p in folder.iterdir() if p.is_file())
    return sorted(p for p in files if images.is_image_file(p) and not p.name.startswith("."))


def _walk_files(root: Path) -> Iterator[Path]:
    """Every file below `root`, following links to folders but entering each real folder once."""
    visited: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            status = folder.stat()
            entries = list(os.scandir(folder))
        except OSError:  # unreadable, or a dangling link: nothing to classify there
            continue
        if (status.st_dev, status.st_ino) in visited:
            continue
        visited.add((status.st_dev, status.st_ino))
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir():
                    pending.append(path)
                elif entry.is_file():
                    yield path
            except OSError:
                continue


def _recursive_glob(pattern: str) -> list[Path]:
    """`dir/**/*.png` over a cycle-safe walk of `dir` (glob's own `**` follows link cycles until the path limit)."""
    parts = Path(pattern).parts
    literal = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = Path(*parts[:literal]) if literal else Path(".")
    regex = re.compile(_glob_regex("/".join(parts[literal:])))
    return sorted(p for p in _walk_files(root) if regex.fullmatch(p.relative_to(root).as_posix()))


def _glob_regex(pattern: str) -> str:
    """A glob (with `**` for any number of folders) as a regular expression over '/'-separated relative paths."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)
