"""The QR e-card scanner: lines from a serial scanner become taps.

A member shows a short-lived signed token (:mod:`terminal.cards.qr`) on a
phone; a serial scanner types it as one line. Each line is judged here and
handed to the terminal's decision queue exactly like a card read, so a QR
tap is journaled, decided and shown by the same code as a card tap.

Scanners in continuous mode send the code under the window again and again;
the same line arriving again within ``repeat_s`` of the last one is that
echo, not a second presentation, and is dropped without a tap. A token
shown later is a replay: the :class:`~terminal.cards.qr.ReplayCache` refuses
it, and the refusal is journaled with the member it names, because a
replayed screenshot is worth a look by the back office.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .cardref import card_ref
from .cards.qr import MAX_TOKEN_CHARS, ReplayCache, verify_token
from .exceptions import (CardError, CardNotGenuine, CardRefused, HardwareError, MalformedResponse,
                         PayloadError, ReplayError, SignatureError)
from .hardware import SerialLink
from .model import CardIdentity, Strength

log = logging.getLogger("unionterm.qrscan")

#: The profile (and card_ref kind) of a QR e-card tap, as in docs/card-profiles.md.
PROFILE_ECARD = "ecard"

#: Longest line kept: a token plus its CR LF. Anything longer is not a token.
MAX_LINE = MAX_TOKEN_CHARS + 2

#: Pause before reading again after the port failed (unplugged scanner).
RETRY_S = 1.0

#: ``submit(reader, identity_or_error, detected_at)``: hands a judged scan to the terminal.
Submit = Callable[[str, CardIdentity | CardError, float], bool]


class TokenVerifier:
    """Scanned text to a proven identity: trusted signature, live, never seen before."""

    def __init__(self, trusted_keys: Sequence[Ed25519PublicKey], card_key: bytes,
                 cache: ReplayCache | None = None) -> None:
        self._keys = list(trusted_keys)
        self._card_key = card_key
        self._cache = cache or ReplayCache()

    def identify(self, text: str, now: float) -> CardIdentity:
        """The e-card identity of ``text``, or a :class:`CardError` with the deny reason.

        Forged, expired and replayed tokens are ``card_not_genuine``; text that
        is not a token at all is ``card_unreadable``.
        """
        try:
            token = verify_token(text, self._keys, now)
        except (SignatureError, ReplayError) as exc:
            raise CardRefused(CardNotGenuine(str(exc)), CardIdentity(PROFILE_ECARD, b"", Strength.STRONG)) from None
        except PayloadError as exc:
            raise MalformedResponse(str(exc)) from None
        identity = CardIdentity(PROFILE_ECARD, card_ref(self._card_key, "ecard", token.member_no),
                                Strength.STRONG, token.member_no)
        try:  # last, as verify_token does, so that a forged token cannot fill the cache
            self._cache.check_and_add(token.nonce, token.expires_at, now)
        except ReplayError as exc:
            raise CardRefused(CardNotGenuine(str(exc)), identity) from None
        return identity


class LineSplitter:
    """Bytes from the port to complete lines (CR, LF or CR LF), overlong ones flagged.

    A line longer than :data:`MAX_LINE` is returned once as ``None`` when it
    finally ends, so the member sees a refusal instead of silence.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._overlong = False

    def feed(self, data: bytes) -> list[bytes | None]:
        lines: list[bytes | None] = []
        for byte in data:
            if byte in (0x0D, 0x0A):
                if self._overlong:
                    lines.append(None)
                elif self._buf:
                    lines.append(bytes(self._buf))
                self._buf.clear()
                self._overlong = False
            elif not self._overlong:
                self._buf.append(byte)
                if len(self._buf) > self.max_line:
                    self._buf.clear()
                    self._overlong = True
        return lines


class QrScanner:
    """Reads one scanner port for as long as it runs, and submits every scan."""

    def __init__(self, link: SerialLink, verifier: TokenVerifier, submit: Submit, name: str,
                 clock: Callable[[], float] = time.time, repeat_s: float = 1.5) -> None:
        self.link = link
        self.verifier = verifier
        self.submit = submit
        self.reader = f"qr:{name}"
        self.clock = clock
        self.repeat_s = repeat_s
        self._last: tuple[bytes, float] | None = None

    def judge(self, line: bytes | None, now: float) -> CardIdentity | CardError:
        """The identity behind one line, or the error to deny it with."""
        if line is None:
            return MalformedResponse("scanned line is too long for a token")
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            return MalformedResponse("scanned line is not ASCII")
        try:
            return self.verifier.identify(text, now)
        except CardError as exc:
            return exc

    def _is_echo(self, line: bytes | None, at: float) -> bool:
        last, self._last = self._last, (line or b"", at)
        return line is not None and last is not None and last[0] == line and at - last[1] < self.repeat_s

    def handle(self, line: bytes | None, detected_at: float) -> None:
        """Judge one line and submit it, unless it is the scanner repeating itself."""
        if self._is_echo(line, detected_at):
            log.debug("event=qr_repeat_ignored reader=%s", self.reader)
            return
        result = self.judge(line, self.clock())
        if isinstance(result, CardError):
            log.info("event=qr_refused reader=%s reason=%s", self.reader, result.reason)
        if not self.submit(self.reader, result, detected_at):
            log.info("event=tap_ignored reason=stopping reader=%s", self.reader)

    async def run(self) -> None:
        splitter = LineSplitter()
        log.info("event=qr_scanner_started reader=%s", self.reader)
        while True:
            try:
                data = await self.link.read()
            except HardwareError as exc:
                log.warning("event=qr_scanner_failed reader=%s error=%r", self.reader, str(exc))
                await asyncio.sleep(RETRY_S)
                continue
            arrived = time.perf_counter()
            for line in splitter.feed(data):
                self.handle(line, arrived)
