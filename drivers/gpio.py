"""Relay, LEDs, buzzer, door contact and exit button through gpiozero.

The pin factory is injected (gpiozero's own model): on a Pi gpiozero picks
lgpio/RPi.GPIO; in the simulator and tests it is ``MockFactory``, so the very
same device code runs and tests read ``pin.states``. Timed patterns run in
gpiozero's background threads, so nothing here blocks the loop.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from gpiozero import LED, Button, Buzzer, DigitalOutputDevice

from terminal.config import GpioSection
from terminal.hardware import InputEvent, InputKind, Light

log = logging.getLogger("unionterm.drivers.gpio")


def make_factory(driver: str) -> Any:
    """The pin factory for ``gpio.driver``: None lets gpiozero choose the real one."""
    if driver == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    return None


class GpioOutputs:
    """:class:`terminal.hardware.Outputs` on four GPIO pins."""

    def __init__(self, cfg: GpioSection, pin_factory: Any = None) -> None:
        self.factory = pin_factory
        self.relay = DigitalOutputDevice(cfg.relay_pin, active_high=cfg.relay_active_high,
                                         initial_value=False, pin_factory=pin_factory)
        self.green = LED(cfg.green_led_pin, pin_factory=pin_factory)
        self.red = LED(cfg.red_led_pin, pin_factory=pin_factory)
        self.buzzer = Buzzer(cfg.buzzer_pin, pin_factory=pin_factory)

    def pulse_relay(self, seconds: float) -> None:
        self.relay.blink(on_time=seconds, off_time=0, n=1, background=True)

    def set_relay(self, energised: bool) -> None:
        self.relay.on() if energised else self.relay.off()

    def flash(self, light: Light, seconds: float) -> None:
        led = self.green if light is Light.GREEN else self.red
        led.blink(on_time=seconds, off_time=0, n=1, background=True)

    def beep(self, pattern: tuple[float, ...]) -> None:
        """Regular patterns only: (on,) or (on, off, on, ...) with equal on/off times."""
        if not pattern:
            return
        on = pattern[0]
        off = pattern[1] if len(pattern) > 1 else 0.0
        self.buzzer.blink(on_time=on, off_time=off, n=(len(pattern) + 1) // 2, background=True)

    def close(self) -> None:
        for dev in (self.relay, self.green, self.red, self.buzzer):
            dev.close()


class GpioInputs:
    """:class:`terminal.hardware.Inputs` for the door contact and the exit button.

    Both are wired to ground with the internal pull-up: "pressed" (low) means
    exit pressed, and for a normally-closed door contact, low means closed, so
    the door is open when the contact is released.
    """

    def __init__(self, cfg: GpioSection, pin_factory: Any = None) -> None:
        self.door = (Button(cfg.door_contact_pin, pull_up=True, bounce_time=None, pin_factory=pin_factory)
                     if cfg.door_contact_pin is not None else None)
        self.exit = (Button(cfg.exit_button_pin, pull_up=True, bounce_time=None, pin_factory=pin_factory)
                     if cfg.exit_button_pin is not None else None)

    def start(self, sink: Callable[[InputEvent], None]) -> None:
        if self.door is not None:
            self.door.when_released = lambda: sink(InputEvent(InputKind.DOOR_CONTACT, True))
            self.door.when_pressed = lambda: sink(InputEvent(InputKind.DOOR_CONTACT, False))
        if self.exit is not None:
            self.exit.when_pressed = lambda: sink(InputEvent(InputKind.EXIT_BUTTON, True))
            self.exit.when_released = lambda: sink(InputEvent(InputKind.EXIT_BUTTON, False))

    def close(self) -> None:
        for dev in (self.door, self.exit):
            if dev is not None:
                dev.close()
