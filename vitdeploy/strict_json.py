"""JSON that every parser accepts: NaN and Infinity, which Python's json writes as bare literals that strict
parsers reject, become null. Used for every JSON vitdeploy writes (--json, reports, prediction rows)."""

from __future__ import annotations

import json
import math
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
