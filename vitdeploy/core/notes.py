"""Notes: what a stage tells its user beside its result (a runtime skipped, a default it chose, a caveat).

Every note travels one way: `Notes.add` logs it on the `vitdeploy` logger (the CLI prints those records on stderr as
they happen; a library user sees them wherever their logging goes) and keeps the same line in the list its result
carries, so `--json` and Python callers read what the terminal showed. The CLI never prints a result's notes itself.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("vitdeploy")


class Notes(list[str]):
    """A result's notes; `add` is the one way a note is said."""

    def add(self, text: str) -> None:
        logger.info(text)
        self.append(text)
