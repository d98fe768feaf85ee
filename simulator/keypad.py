"""A keypad matrix made of gpiozero ``MockFactory`` pins, pressed by a test or the demo.

The production driver (:class:`drivers.keypad.MatrixKeypad`) runs unchanged
on top: it selects rows by driving them low and reads the columns, and the
column pins here answer exactly as copper would, low while a pressed key
joins them to a selected row. So scanning, debouncing and chord handling are
exercised for real; only the membrane is simulated.

Create the matrix *before* the keypad driver on the same factory: the column
pins must be of the class defined here, and a factory hands out the pin it
already has.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin

from terminal.config import KeypadSection

#: How long a simulated finger holds a key and waits before the next: several scans each.
HOLD_S = 0.12
GAP_S = 0.12


class MatrixColumnPin(MockPin):
    """A column input that reads low while a pressed key connects it to a row driven low."""

    def __init__(self, factory: MockFactory, info: Any, matrix: "SimulatedMatrix | None" = None) -> None:
        super().__init__(factory, info)
        self.matrix = matrix

    def _get_state(self) -> bool:
        if self.matrix is not None and self._function == "input" and self.matrix.pulls_low(self):
            return False
        return bool(super()._get_state())


class SimulatedMatrix:
    """The keys of ``cfg`` on ``factory``'s pins; :meth:`press` and :meth:`release` like a finger."""

    def __init__(self, factory: MockFactory, cfg: KeypadSection) -> None:
        self.factory = factory
        self.rows = [factory.pin(n) for n in cfg.row_pins]
        self.columns = []
        for n in cfg.column_pins:
            pin = factory.pin(n, pin_class=MatrixColumnPin, matrix=self)
            if not isinstance(pin, MatrixColumnPin):
                raise RuntimeError(f"GPIO{n} was claimed before the simulated matrix; create the matrix first")
            self.columns.append(pin)
        width = len(cfg.column_pins)
        self.where = {key: (i // width, i % width) for i, key in enumerate(cfg.keys)}
        # Replaced whole, never changed in place: the driver's scan thread reads it while the loop presses.
        self.pressed: frozenset[str] = frozenset()

    def pulls_low(self, column: MatrixColumnPin) -> bool:
        c = self.columns.index(column)
        return any(self.where[key][1] == c and not self.rows[self.where[key][0]].state for key in self.pressed)

    def press(self, key: str) -> None:
        """Hold ``key`` down until :meth:`release`; a key not on this keypad is a test bug, so it raises."""
        if key not in self.where:
            raise KeyError(f"no key {key!r} on this keypad")
        self.pressed = self.pressed | {key}

    def release(self, key: str | None = None) -> None:
        """Lift one key, or every key."""
        self.pressed = frozenset() if key is None else self.pressed - {key}

    async def tap(self, key: str, hold_s: float = HOLD_S) -> None:
        """Press and release like a finger: held for several scans, so the debouncer believes it."""
        self.press(key)
        await asyncio.sleep(hold_s)
        self.release(key)
        await asyncio.sleep(GAP_S)

    async def type(self, keys: str) -> None:
        """Tap each key of ``keys`` in turn."""
        for key in keys:
            await self.tap(key)
