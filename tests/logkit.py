"""Shared by tests that read what the terminal logged and that parse hostile input."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

#: CPython's default; see :func:`production_stack`.
DEFAULT_RECURSION_LIMIT = 1000


class Lines(logging.Handler):
    """Log lines as written, to assert on the ``event=... key=value`` text journald gets."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def having(self, *words: str) -> list[str]:
        return [line for line in self.lines if all(w in line for w in words)]


@contextlib.contextmanager
def production_stack() -> Iterator[None]:
    """Python's default recursion limit, which hypothesis raises by 2000 while a test runs.

    The terminal runs with the default, and json and tomllib recurse once per
    nesting level: input that only the raised limit survives would pass here
    and end in a RecursionError on a terminal.
    """
    raised = sys.getrecursionlimit()
    sys.setrecursionlimit(DEFAULT_RECURSION_LIMIT)
    try:
        yield
    finally:
        sys.setrecursionlimit(raised)
