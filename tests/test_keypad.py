"""The matrix keypad driver, on gpiozero MockFactory pins wired like a real membrane keypad."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from drivers.keypad import KeyDebouncer, MatrixKeypad, open_keypad
from simulator.keypad import SimulatedMatrix
from terminal.config import KeypadSection
from terminal.hardware import InputEvent, InputKind

CFG = KeypadSection(driver="matrix", scan_ms=5)


def press(key: str) -> InputEvent:
    return InputEvent(InputKind.KEY, True, key)


def release(key: str) -> InputEvent:
    return InputEvent(InputKind.KEY, False, key)


def settle(debouncer: KeyDebouncer, *scans: str) -> list[InputEvent]:
    """Feed scans written as strings of the keys seen down ("" = nothing)."""
    return [event for scan in scans for event in debouncer.feed(frozenset(scan))]


# --- debouncing (pure) ----------------------------------------------------------


def test_a_press_needs_two_agreeing_scans_and_bounces_are_ignored() -> None:
    debouncer = KeyDebouncer()
    assert settle(debouncer, "1", "", "1", "") == []  # contact bounce: never two in a row
    assert settle(debouncer, "1", "1") == [press("1")]
    assert settle(debouncer, "1", "1", "", "1") == []  # held, one bounce open: still held
    assert settle(debouncer, "", "") == [release("1")]


def test_rolling_from_one_key_to_another_releases_then_presses() -> None:
    debouncer = KeyDebouncer()
    settle(debouncer, "4", "4")
    assert settle(debouncer, "5", "5") == [release("4"), press("5")]


def test_a_chord_is_never_read_as_a_key() -> None:
    debouncer = KeyDebouncer()
    assert settle(debouncer, "12", "12", "12") == []
    assert settle(debouncer, "2", "2") == [press("2")]  # the chord resolved to one key


# --- the driver on simulated copper ---------------------------------------------------


@pytest.fixture
def rig() -> Iterator[tuple[SimulatedMatrix, MatrixKeypad]]:
    factory = MockFactory()
    matrix = SimulatedMatrix(factory, CFG)
    keypad = MatrixKeypad(CFG, factory)
    yield matrix, keypad
    keypad.close()


def test_every_key_is_read_at_its_row_and_column(rig: tuple[SimulatedMatrix, MatrixKeypad]) -> None:
    matrix, keypad = rig
    assert keypad.scan() == frozenset()
    for key in CFG.keys:
        matrix.press(key)
        assert keypad.scan() == {key}, key
        matrix.release()
    matrix.press("1")
    matrix.press("D")
    assert keypad.scan() == {"1", "D"}


def test_rows_rest_unselected_between_scans(rig: tuple[SimulatedMatrix, MatrixKeypad]) -> None:
    matrix, keypad = rig
    matrix.press("5")
    keypad.scan()
    assert all(pin.state for pin in matrix.rows)  # all high: no row selected, nothing shorted at rest
    assert matrix.columns[1].state  # so the pressed key's column reads high again


def test_scan_thread_delivers_press_and_release_events(rig: tuple[SimulatedMatrix, MatrixKeypad]) -> None:
    matrix, keypad = rig
    events: queue.Queue[InputEvent] = queue.Queue()
    keypad.start(events.put)
    matrix.press("#")
    assert events.get(timeout=2) == press("#")
    matrix.release()
    assert events.get(timeout=2) == release("#")
    time.sleep(0.05)
    assert events.empty()


def test_keys_pressed_while_the_driver_scans_never_break_a_scan(rig: tuple[SimulatedMatrix, MatrixKeypad]) -> None:
    # The scan thread reads the simulated membrane while the loop presses keys (a CI run once lost a
    # PIN digit to "Set changed size during iteration"). Threads switch every microsecond here, so an
    # unsafe read fails within milliseconds.
    matrix, keypad = rig
    errors: list[Exception] = []
    stop = threading.Event()

    def scanning() -> None:
        while not stop.is_set():
            try:
                keypad.scan()
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    scanner = threading.Thread(target=scanning)
    scanner.start()
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and not errors:
            for key in CFG.keys:
                matrix.press(key)
            for key in CFG.keys:
                matrix.release(key)
    finally:
        stop.set()
        scanner.join()
        sys.setswitchinterval(interval)
    assert errors == []


def test_close_releases_the_pins(rig: tuple[SimulatedMatrix, MatrixKeypad]) -> None:
    _matrix, keypad = rig
    factory = keypad.rows[0].pin_factory
    keypad.close()
    again = MatrixKeypad(CFG, factory)  # would raise GPIOPinInUse if any pin were still held
    again.close()


def test_a_terminal_without_keypad_opens_none() -> None:
    assert open_keypad(KeypadSection()) is None
    keypad = open_keypad(CFG, MockFactory())
    assert isinstance(keypad, MatrixKeypad)
    keypad.close()
