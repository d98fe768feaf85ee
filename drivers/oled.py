"""The OLED through luma: ssd1306 or sh1106, over I2C or SPI, or luma's ``dummy``.

Like luma itself, the device is built from an injected interface; ``dummy``
is luma's shipped in-memory twin, and ``capture_dir`` writes every frame as a
PNG (the simulator's screens, and a field technician's evidence).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL.Image import Image

from terminal.config import DisplaySection

log = logging.getLogger("unionterm.drivers.oled")


def make_device(cfg: DisplaySection) -> Any:
    """Build the luma device the config asks for."""
    if cfg.driver == "dummy":
        from luma.core.device import dummy

        return dummy(width=cfg.width, height=cfg.height, rotate=cfg.rotate, mode="1")
    from luma.core.interface.serial import i2c, spi
    from luma.oled.device import sh1106, ssd1306

    if cfg.interface == "i2c":
        serial = i2c(port=cfg.i2c_port, address=cfg.i2c_address)
    else:
        serial = spi(port=cfg.spi_port, device=cfg.spi_device,
                     gpio_DC=cfg.spi_dc_pin, gpio_RST=cfg.spi_reset_pin)
    cls = ssd1306 if cfg.controller == "ssd1306" else sh1106
    return cls(serial, width=cfg.width, height=cfg.height, rotate=cfg.rotate)


class LumaDisplay:
    """:class:`terminal.hardware.Display` over any luma device."""

    def __init__(self, device: Any, capture_dir: str | Path | None = None) -> None:
        self.device = device
        self.size: tuple[int, int] = tuple(device.size)  # type: ignore[assignment]
        self.capture_dir = Path(capture_dir) if capture_dir else None
        self.frames = 0
        self.last_capture: Path | None = None
        if self.capture_dir:
            self.capture_dir.mkdir(parents=True, exist_ok=True)

    def show(self, image: Image) -> None:
        self.device.display(image.convert(self.device.mode))
        self.frames += 1
        if self.capture_dir:
            path = self.capture_dir / f"screen-{self.frames:04d}.png"
            shown = getattr(self.device, "image", image)
            shown.save(path)
            self.last_capture = path

    def close(self) -> None:
        try:
            self.device.cleanup()
        except Exception as exc:  # a display failing at shutdown must not mask the real exit
            log.warning("event=display_cleanup_failed error=%r", exc)
