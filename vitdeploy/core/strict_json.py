"""JSON that every parser accepts: NaN and Infinity, which Python's json writes as bare literals that strict
parsers reject, become null. Used for every JSON vitdeploy writes (--json, reports, prediction rows)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from typing import Any


def finite(obj: Any) -> Any:
    """A copy of `obj` with every non-finite float replaced by None (dicts, lists and tuples walked)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(value) for value in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps with non-finite floats as null; allow_nan=False makes any that slipped through an error."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def record(obj: Any, exclude: Iterable[str] = (), **computed: Any) -> dict[str, Any]:
    """A result dataclass as JSON-ready data, the one conversion every to_dict uses: its fields in order, less
    `exclude`, then `computed` (derived or rounded values; a name that is also a field replaces it in place).
    Paths become strings, tuples lists, nested results their own to_dict()."""
    skip = set(exclude)
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in skip}
    return {name: plain(value) for name, value in {**fields, **computed}.items()}


def plain(value: Any) -> Any:
    """`value` as JSON-ready data (see record)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return record(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value
