"""Structured ``key=value`` log lines on stdout, for journald.

Messages are already written as ``event=... key=value`` by the callers; this
module only prefixes the level and logger so ``journalctl -o cat`` stays
greppable, and keeps secrets out by never formatting objects implicitly.
"""

from __future__ import annotations

import logging
import sys


class KeyValueFormatter(logging.Formatter):
    """``level=info logger=unionterm.app event=tap ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info:
            exc = self.formatException(record.exc_info).replace("\n", " | ")
            line += f" exc={exc!r}"
        return line


def setup(level: str = "info", stream=None) -> None:
    """Route every ``unionterm.*`` logger to ``stream`` (stdout by default)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("unionterm")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def quote(value: object) -> str:
    """Render a value for a key=value line, quoting when it has spaces."""
    text = str(value)
    if not text or any(c in text for c in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text
