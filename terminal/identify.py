"""From the ``[cards]`` config to the terminal's card reading: profiles, SAM, QR.

The card layer (:mod:`terminal.cards`) knows how to prove each kind of card;
this module decides what *this* terminal trusts and what a refusal is
recorded as:

* which profiles are allowed (config words ``union-app``, ``bank-pan``,
  ``qr-ecard``, ``uid-legacy``; the journal records the card layer's profile
  names ``union``, ``pan``, ``ecard``, ``uid`` of docs/card-profiles.md);
* where the union master keys are (software key file, or a SAM card in a
  second reader slot, reached through the same :class:`CardReader` as the
  taps so the core never touches PC/SC);
* that a card showing the UID of a registered union card without being able
  to prove itself is a clone: ``card_not_genuine``, even where UIDs are
  otherwise taken, because a genuine union card would have taken the union
  path;
* that every refusal keeps what the card was taken for
  (:class:`~terminal.exceptions.CardRefused`), so the journal records the
  profile and strength of the proof that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .cardref import card_ref
from .cards import desfire, emv, profiles
from .cards.qr import ReplayCache
from .cards.sam import PcscSam, Sam, SoftwareSam
from .cards.unionapp import UnionAppConfig
from .config import Config
from .exceptions import (CardError, CardNotGenuine, CardRefused, CardRemoved, ConfigError,
                         MalformedResponse, SamError, UniontermError)
from .hardware import CardChannel, CardReader
from .model import CardIdentity, Strength
from .qrscan import QrScanner, TokenVerifier
from .signing import load_public_key

if TYPE_CHECKING:
    from .app import Identify, Terminal

log = logging.getLogger("unionterm.identify")

#: Config word -> card-layer profile (None: not a card profile, handled by the scanner).
CONFIG_PROFILES: dict[str, str | None] = {
    "union-app": profiles.PROFILE_UNION,
    "bank-pan": profiles.PROFILE_PAN,
    "uid-legacy": profiles.PROFILE_UID,
    "qr-ecard": None,
}

#: What a successful read of each card profile proves, hence what a failed one claimed.
STRENGTH = {profiles.PROFILE_UNION: Strength.STRONG, profiles.PROFILE_PAN: Strength.WEAK,
            profiles.PROFILE_UID: Strength.WEAK}

_OK = b"\x90\x00"
_DESFIRE_OK = b"\x91\x00"

Service = Callable[["Terminal"], Awaitable[None]]
KnownRef = Callable[[bytes], bool]


# --- SAMs --------------------------------------------------------------------------------


class UnavailableSam:
    """Stands in for a SAM that could not be loaded.

    Union cards are then refused with ``sam_unavailable`` (on screen and in the
    journal, where a technician looks) instead of being read as something
    weaker, and every other profile keeps working.
    """

    def __init__(self, why: str) -> None:
        self._why = why

    def __repr__(self) -> str:
        return "UnavailableSam()"

    async def diversified_key(self, key_slot: int, uid: bytes, aid: bytes) -> bytes:
        raise SamError(self._why)


class OneAtATimeSam:
    """Serialises a SAM card: it runs one command sequence at a time, two readers may ask together."""

    def __init__(self, sam: Sam) -> None:
        self._sam = sam
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OneAtATimeSam({self._sam!r})"

    async def diversified_key(self, key_slot: int, uid: bytes, aid: bytes) -> bytes:
        async with self._lock:
            return await self._sam.diversified_key(key_slot, uid, aid)


class ReaderChannel:
    """A card channel held open across taps on one reader slot (the SAM's).

    Opened on first use (or by :meth:`open` at start) and reopened after any
    failure, so a SAM that was pulled and put back, or a pcscd restart, costs
    one failed tap and not a terminal restart.
    """

    def __init__(self, reader: CardReader, name: str) -> None:
        self._reader = reader
        self.name = name
        self._stack: contextlib.AsyncExitStack | None = None
        self._channel: CardChannel | None = None

    async def open(self) -> CardChannel:
        if self._channel is None:
            stack = contextlib.AsyncExitStack()
            self._channel = await stack.enter_async_context(self._reader.connect(self.name))
            self._stack = stack
        return self._channel

    async def close(self) -> None:
        stack, self._stack, self._channel = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def transmit(self, apdu: bytes) -> bytes:
        channel = await self.open()
        try:
            return await channel.transmit(apdu)
        except Exception:
            await self.close()
            raise


def load_sam(cfg: Config, reader: CardReader) -> tuple[Sam, list[Service]]:
    """The SAM the config names, and the service that keeps a SAM card's link."""
    cards = cfg.cards
    if cards.sam == "pcsc":
        channel = ReaderChannel(reader, cards.sam_reader)
        return OneAtATimeSam(PcscSam(channel)), [_sam_link_service(channel)]
    path = cfg.config_path(cards.sam_key_file)
    try:
        return SoftwareSam.load(str(path)), []
    except ConfigError as exc:
        log.error("event=sam_unavailable kind=software problem=%r", exc.problem)
        return UnavailableSam(f"software SAM not loaded: {exc.problem}"), []


def _sam_link_service(channel: ReaderChannel) -> Service:
    async def sam_link(terminal: "Terminal") -> None:
        """Open the SAM at start (so the first tap does not pay for it) and release it at stop."""
        try:
            await channel.open()
            log.info("event=sam_ready kind=pcsc reader=%r", channel.name)
        except UniontermError as exc:  # taps retry the link; a start must not fail on it
            log.error("event=sam_unavailable kind=pcsc reader=%r error=%r", channel.name, str(exc))
        try:
            await asyncio.Event().wait()
        finally:
            await channel.close()

    return sam_link


# --- card reads ----------------------------------------------------------------------------


class _Watched:
    """A channel that notes how far the card went, per "Choosing a profile" in docs/card-profiles.md.

    ``profile`` becomes ``union`` once SelectApplication is accepted (the card
    is then judged as a union card only), ``pan`` once SELECT PPSE is, and
    ``uid`` when only the UID was asked for; ``uid`` keeps the UID the reader
    reported, so a refusal can be recorded against the card it names.
    """

    def __init__(self, channel: CardChannel, select_union: bytes) -> None:
        self._channel = channel
        self._select_union = select_union
        self._select_ppse = emv.select_ppse()
        self.profile = ""
        self.uid = b""

    async def transmit(self, apdu: bytes) -> bytes:
        answer = await self._channel.transmit(apdu)
        if apdu == self._select_union and answer == _DESFIRE_OK:
            self.profile = profiles.PROFILE_UNION
        elif apdu == self._select_ppse and answer[-2:] == _OK and not self.profile:
            self.profile = profiles.PROFILE_PAN
        elif apdu == profiles.GET_UID:
            self.profile = self.profile or profiles.PROFILE_UID
            if answer[-2:] == _OK and len(answer) - 2 in desfire.UID_SIZES:
                self.uid = answer[:-2]
        return answer


@dataclass
class CardIdentifier:
    """The terminal's ``Identify``: the allowed card profiles, with clone detection on top.

    ``known_ref`` says whether a card_ref belongs to a card in the member list;
    it is asked only on the UID paths, to recognise a union card's UID on a
    card that is not one.
    """

    allowed: tuple[str, ...]
    card_key: bytes
    sam: Sam | None = None
    union: UnionAppConfig = field(default_factory=UnionAppConfig)
    known_ref: KnownRef = lambda ref: False

    @property
    def union_allowed(self) -> bool:
        return profiles.PROFILE_UNION in self.allowed and self.sam is not None

    @property
    def inline(self) -> bool:
        """True when a whole exchange can run on the reader's own thread.

        It can when nothing in it waits on the event loop: every APDU goes to
        the card in the field, and the SAM (if any) is the software one. A
        PC/SC SAM talks to a second reader and must stay on the loop.
        """
        return self.sam is None or isinstance(self.sam, (SoftwareSam, UnavailableSam))

    async def __call__(self, channel: CardChannel, atr: bytes) -> CardIdentity:
        watched = _Watched(channel, desfire.select_application(self.union.aid))
        try:
            identity = await profiles.identify(watched, atr, self.allowed, card_key=self.card_key,
                                               sam=self.sam, union=self.union)
        except CardRemoved:
            raise
        except CardError as exc:
            raise await self._refusal(watched, exc) from exc
        if identity.profile == profiles.PROFILE_UID:
            self._check_not_a_clone(watched.uid)
        return identity

    def _check_not_a_clone(self, uid: bytes) -> None:
        """A card that shows a registered union card's UID but is not one: refuse it as a clone."""
        if not uid or not self.union_allowed or profiles.is_random_uid(uid):
            return
        ref = card_ref(self.card_key, "union", uid)
        if self.known_ref(ref):
            log.warning("event=card_clone_suspected profile=uid")
            raise CardRefused(CardNotGenuine("UID of a union card on a card without the union application"),
                              CardIdentity(profiles.PROFILE_UID, ref, Strength.WEAK))

    async def _refusal(self, watched: _Watched, exc: CardError) -> CardError:
        """The error to deny with, carrying what the card was taken for when that is known."""
        if not watched.profile and isinstance(exc, MalformedResponse) and self.union_allowed:
            # No allowed profile fitted: ask for the UID only to see whether it is a clone.
            try:
                await watched.transmit(profiles.GET_UID)
            except CardRemoved:
                raise
            except CardError:
                return exc
            self._check_not_a_clone(watched.uid)
            return exc
        if not watched.profile:
            return exc
        uid = watched.uid if watched.uid and not profiles.is_random_uid(watched.uid) else b""
        kind = "union" if watched.profile == profiles.PROFILE_UNION else "uid"
        ref = card_ref(self.card_key, kind, uid) if uid and watched.profile != profiles.PROFILE_PAN else b""
        return CardRefused(exc, CardIdentity(watched.profile, ref, STRENGTH[watched.profile]))


# --- assembly -----------------------------------------------------------------------------


@dataclass
class CardLayer:
    """What ``[cards]`` gives the terminal: its Identify callable and the services it needs."""

    identify: "Identify"
    services: list[Service]
    profiles: tuple[str, ...]


def build(cfg: Config, card_key: bytes, reader: CardReader, known_ref: KnownRef = lambda ref: False
          ) -> CardLayer:
    """Assemble the card layer for ``cfg``; QR key files that cannot be read are a ConfigError."""
    cards = cfg.cards
    allowed = tuple(p for word in cards.profiles if (p := CONFIG_PROFILES[word]) is not None)
    services: list[Service] = []
    sam: Sam | None = None
    if profiles.PROFILE_UNION in allowed:
        sam, sam_services = load_sam(cfg, reader)
        services += sam_services
    if "qr-ecard" in cards.profiles:
        keys = [load_public_key(cfg.config_path(name)) for name in cards.qr_public_keys]
        services.append(qr_service(cards.qr_scanner, TokenVerifier(keys, card_key, ReplayCache())))
    union = UnionAppConfig(aid=bytes.fromhex(cards.union_aid))
    identifier = CardIdentifier(allowed, card_key, sam, union, known_ref)
    log.info("event=cards_configured profiles=%s sam=%s", ",".join(cards.profiles),
             cards.sam if sam is not None else "-")
    return CardLayer(identifier, services, allowed)


def qr_service(port: str, verifier: TokenVerifier) -> Service:
    """The task that reads the scanner on serial port ``port`` into the terminal's queue."""

    async def qr_scanner(terminal: "Terminal") -> None:
        link = terminal.hw.serial.get(port)
        if link is None:
            log.error("event=qr_scanner_missing port=%s", port)
            return
        scanner = QrScanner(link, verifier, terminal.submit_identity, port,
                            clock=lambda: terminal.clock()[0] / 1000)
        await scanner.run()

    return qr_scanner
