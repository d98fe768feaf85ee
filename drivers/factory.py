"""Assemble the devices a config asks for, as one async context.

This is the only place that maps config words to driver classes; everything
opened here is closed in reverse order by the exit stack, also on errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from terminal.config import Config
from terminal.hardware import Hardware

from .gpio import GpioInputs, GpioOutputs, make_factory
from .oled import LumaDisplay, make_device
from .pcsc import PcscReader
from .serialport import PySerialLink


@contextlib.asynccontextmanager
async def open_hardware(cfg: Config) -> AsyncIterator[Hardware]:
    async with contextlib.AsyncExitStack() as stack:
        reader = await stack.enter_async_context(
            PcscReader(cfg.reader.name, cfg.reader.reconnect_s))
        factory = make_factory(cfg.gpio.driver)
        outputs = GpioOutputs(cfg.gpio, factory)
        stack.callback(outputs.close)
        inputs = GpioInputs(cfg.gpio, factory)
        stack.callback(inputs.close)
        display = None
        if cfg.display.driver != "none":
            display = LumaDisplay(make_device(cfg.display), cfg.display.capture_dir or None)
            stack.callback(display.close)
        serial_links = {}
        for name, port in cfg.serial.items():
            link = PySerialLink(port.port, port.baudrate)
            stack.callback(link.close)
            serial_links[name] = link
        yield Hardware(reader=reader, outputs=outputs, inputs=inputs, display=display, serial=serial_links)
