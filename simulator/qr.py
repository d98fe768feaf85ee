"""A simulated QR scanner on a pseudo-terminal, and the issuer of the tokens it reads.

The terminal opens the pty's slave side as its serial port, through the
production pyserial driver, exactly as it opens ``/dev/ttyACM0`` on a Pi;
:meth:`PtyScanner.scan` writes a code to the master side the way a USB-serial
scanner types it (the text and CR LF). The issuer signs e-card tokens with the
back office's format (:func:`terminal.cards.qr.issue_token`), so what the
scanner shows the terminal is what a member's phone would.
"""

from __future__ import annotations

import os
import time
import tty
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from terminal.cards.qr import MAX_LIFETIME, issue_token
from terminal.signing import write_public_key

SUFFIX = b"\r\n"


class PtyScanner:
    """One scanner: ``port`` is the device path to put in ``[serial.<name>] port``."""

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        # Raw from the start: with the default line discipline, bytes typed before the
        # terminal opens the port would be echoed back and CR turned into LF.
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.scanned: list[str] = []

    def scan(self, code: str | bytes, suffix: bytes = SUFFIX) -> None:
        """Present one code: its bytes and the line ending, in one write."""
        raw = code.encode() if isinstance(code, str) else code
        self.scanned.append(raw.decode(errors="replace"))
        os.write(self._master, raw + suffix)

    def close(self) -> None:
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "PtyScanner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EcardIssuer:
    """The back office's e-card signing key, and the tokens a member's phone would show."""

    def __init__(self, key: Ed25519PrivateKey | None = None) -> None:
        self.key = key or Ed25519PrivateKey.generate()

    def write_public_key(self, path: str | os.PathLike[str]) -> Path:
        """The file a terminal lists in ``[cards] qr_public_keys``."""
        write_public_key(path, self.key.public_key())
        return Path(path)

    def token(self, member_no: str, now: float | None = None, lifetime: int = MAX_LIFETIME) -> str:
        """A fresh token (new nonce) for ``member_no`` issued at ``now`` (default: this second)."""
        issued = int(time.time() if now is None else now)
        return issue_token(self.key, member_no, issued, lifetime)
