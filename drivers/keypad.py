"""The technician's keypad: a 4x4 row/column matrix on GPIO, read through gpiozero.

Why a GPIO matrix and not a USB keypad (evdev): the keypad is part of the
enclosure (a sealed membrane or metal keypad on the front panel of a gate or
canteen reader), not an accessory on a cable that a customer at a counter can
unplug or walk off with; it needs no USB port, no input-device permissions
and no extra package, and the same gpiozero pin factory the relay and LEDs
use lets the simulator drive it through ``MockFactory``.

Wiring: rows are outputs, columns are inputs with the internal pull-up. A row
is "selected" by driving it low; a pressed key then pulls its column low.
The scan is polling, not edge interrupts: a membrane contact bounces for a
few milliseconds and an interrupt fires on every bounce, while a poll every
``scan_ms`` with a two-scan agreement debounces for free. An idle poll costs
one write and four reads (all rows selected, any column low?); only when
something is pressed are the rows walked one by one.

Events reach the loop as :class:`terminal.hardware.InputEvent` (kind KEY)
through the sink given to :meth:`MatrixKeypad.start`, from the scan thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from gpiozero import DigitalInputDevice, DigitalOutputDevice

from terminal.config import KeypadSection
from terminal.hardware import InputEvent, InputKind

log = logging.getLogger("unionterm.drivers.keypad")

#: Consecutive scans that must agree before a press or release is believed.
DEBOUNCE_SCANS = 2


class KeyDebouncer:
    """Turns raw scans (the set of keys seen down) into press and release events.

    Pure, so the rules are tested without pins: a key counts as pressed once
    :data:`DEBOUNCE_SCANS` scans in a row saw exactly that key and nothing
    else, and as released once as many scans saw nothing. Two keys at once
    are ignored (a matrix without diodes cannot tell three keys from four,
    so a chord could be read as a key nobody pressed).
    """

    def __init__(self, scans: int = DEBOUNCE_SCANS) -> None:
        self.scans = scans
        self.down: str | None = None
        self._candidate: frozenset[str] = frozenset()
        self._count = 0

    def feed(self, seen: frozenset[str]) -> Iterator[InputEvent]:
        """Take one scan; yield the events it settles (at most a release and a press)."""
        if seen == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = seen, 1
        if self._count != self.scans:
            return
        if len(seen) > 1:
            return  # a chord: keep whatever state we had until it resolves
        key = next(iter(seen), None)
        if key == self.down:
            return
        if self.down is not None:
            yield InputEvent(InputKind.KEY, active=False, key=self.down)
        self.down = key
        if key is not None:
            yield InputEvent(InputKind.KEY, active=True, key=key)


class MatrixKeypad:
    """:class:`terminal.hardware.Inputs` for a row/column keypad matrix."""

    def __init__(self, cfg: KeypadSection, pin_factory: Any = None) -> None:
        self.legends = [cfg.keys[r * len(cfg.column_pins):(r + 1) * len(cfg.column_pins)]
                        for r in range(len(cfg.row_pins))]
        self.period = cfg.scan_ms / 1000
        # active_high=False: "on" selects the row by pulling it low.
        self.rows = [DigitalOutputDevice(pin, active_high=False, initial_value=False, pin_factory=pin_factory)
                     for pin in cfg.row_pins]
        self.columns = [DigitalInputDevice(pin, pull_up=True, pin_factory=pin_factory)
                        for pin in cfg.column_pins]
        self._debouncer = KeyDebouncer()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _select(self, row: int | None) -> None:
        """Select one row (index), every row (``-1``) or none (``None``)."""
        for i, device in enumerate(self.rows):
            device.value = row == -1 or i == row

    def _columns_down(self) -> list[int]:
        return [c for c, device in enumerate(self.columns) if device.is_active]

    def scan(self) -> frozenset[str]:
        """The keys down right now (one scan)."""
        self._select(-1)
        if not self._columns_down():
            self._select(None)
            return frozenset()
        seen = set()
        for r in range(len(self.rows)):
            self._select(r)
            seen.update(self.legends[r][c] for c in self._columns_down())
        self._select(None)
        return frozenset(seen)

    def start(self, sink: Callable[[InputEvent], None]) -> None:
        """Scan in a thread of our own: gpiozero has no matrix device, and the loop must never poll pins."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, args=(sink,), name="keypad", daemon=True)
        self._thread.start()

    def _run(self, sink: Callable[[InputEvent], None]) -> None:
        failing = False
        while not self._stop.wait(self.period):
            try:
                events = list(self._debouncer.feed(self.scan()))
            except Exception:  # noqa: BLE001 - a pin error must not kill the scanner for good
                if not failing:  # once per failure spell, not 50 times a second
                    log.exception("event=keypad_scan_failed")
                failing = True
                continue
            if failing:
                log.info("event=keypad_scan_recovered")
                failing = False
            for event in events:
                sink(event)

    def close(self) -> None:
        """Stop scanning before the pins are released, so no scan runs on a closed pin."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        for device in self.rows + self.columns:
            device.close()


def open_keypad(cfg: KeypadSection, pin_factory: Any = None) -> MatrixKeypad | None:
    """The keypad ``[keypad]`` asks for, or ``None`` when the terminal has none."""
    if cfg.driver == "none":
        return None
    return MatrixKeypad(cfg, pin_factory)
