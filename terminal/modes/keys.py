"""Digits typed on the terminal's keypad: a PIN, an amount in fen, an offering number.

The same conventions as the technician's menu (:mod:`terminal.service_menu`),
so one keypad behaves one way: digits append, ``*`` erases the last digit
(and cancels when nothing is left), ``#`` confirms. Letter keys are left to
the mode (void, door states).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

CONFIRM = "#"
ERASE = "*"


class Typed(enum.Enum):
    """What one key did to the line being typed."""

    MORE = "more"
    DONE = "done"
    CANCELLED = "cancelled"
    IGNORED = "ignored"


@dataclass
class Typing:
    """One line of digits being typed; ``max_len`` keeps a stuck key from growing it."""

    max_len: int
    text: str = ""

    def press(self, key: str) -> Typed:
        if key.isdigit():
            if len(self.text) < self.max_len:
                self.text += key
            return Typed.MORE
        if key == ERASE:
            if not self.text:
                return Typed.CANCELLED
            self.text = self.text[:-1]
            return Typed.MORE
        if key == CONFIRM:
            return Typed.DONE if self.text else Typed.IGNORED
        return Typed.IGNORED

    @property
    def value(self) -> int:
        """The digits as a number (0 when empty)."""
        return int(self.text) if self.text else 0


class NumberEntry:
    """A number the cashier or operator types between taps (an amount in fen, an offering's
    position on the list): nothing is being typed until the first digit."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.typing: Typing | None = None

    @property
    def active(self) -> bool:
        return self.typing is not None

    @property
    def value(self) -> int:
        return self.typing.value if self.typing is not None else 0

    def press(self, key: str) -> tuple[Typed, int]:
        """One key; returns what it did and, on :attr:`Typed.DONE`, the number confirmed.
        ``IGNORED`` for a key that means nothing here (a letter, or ``#`` with nothing typed)."""
        typing = self.typing or Typing(self.max_len)
        typed = typing.press(key)
        if typed is Typed.IGNORED:
            return typed, 0
        self.typing = typing if typed is Typed.MORE else None
        return typed, typing.value
