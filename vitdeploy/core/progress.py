"""What long work shows a person while it runs: live progress on stderr (train, predict, bench all draw theirs
here). Notes are log records (the `vitdeploy` logger), which the CLI prints on stderr.

Progress is drawn only when stderr is a terminal and the caller is not producing machine output (--json):
logs, pipes and CI get nothing extra, and stdout is never touched.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


class NoProgress:
    """Stands in for a rich Progress when nothing should be drawn."""

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextmanager
def live_progress(enabled: bool, *columns: Any) -> Iterator[Any]:
    """A rich Progress on stderr with `columns` when `enabled` and stderr is a terminal; else a NoProgress."""
    if not (enabled and stderr_is_terminal()):
        yield NoProgress()
        return
    from rich.console import Console
    from rich.progress import Progress

    # force_terminal: the decision is made above, from stderr itself (rich would also look at the environment).
    with Progress(*columns, console=Console(stderr=True, force_terminal=True), transient=True) as progress:
        yield progress
