"""Serial devices (cash-register link, QR scanner) through pyserial.

Reads block in a worker thread with a short timeout so a closed port ends the
read promptly; the loop only ever awaits.
"""

from __future__ import annotations

import asyncio

import serial

from terminal.exceptions import HardwareError


class PySerialLink:
    """:class:`terminal.hardware.SerialLink` on a tty (a pty in the simulator)."""

    def __init__(self, port: str, baudrate: int = 9600) -> None:
        try:
            self._port = serial.Serial(port, baudrate=baudrate, timeout=0.2)
        except serial.SerialException as exc:
            raise HardwareError(f"serial {port}: {exc}") from exc
        self.name = port

    def _read_some(self, max_bytes: int) -> bytes:
        try:
            first = self._port.read(1)
            if not first:
                return b""
            rest = self._port.read(min(self._port.in_waiting, max_bytes - 1)) if max_bytes > 1 else b""
            return first + rest
        except (serial.SerialException, OSError, TypeError) as exc:
            raise HardwareError(f"serial {self.name}: {exc}") from exc

    async def read(self, max_bytes: int = 256) -> bytes:
        while True:
            data = await asyncio.to_thread(self._read_some, max_bytes)
            if data:
                return data

    async def write(self, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._port.write, data)
        except (serial.SerialException, OSError) as exc:
            raise HardwareError(f"serial {self.name}: {exc}") from exc

    def close(self) -> None:
        self._port.close()
