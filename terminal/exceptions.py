"""Every error unionterm raises on purpose, under one root.

One module, one root class (as python-kasa does): callers that must keep the
terminal serving catch :class:`UniontermError` at the boundary of a tap, a
message or a frame, and anything else is a bug that deserves a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING


class UniontermError(Exception):
    """Root of every deliberate unionterm error."""


class ConfigError(UniontermError):
    """A configuration file is missing, unreadable or invalid.

    The message always names the file, and the key where one is at fault, so a
    technician can fix it without reading code.
    """

    def __init__(self, path: str, key: str | None, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")


class HardwareError(UniontermError):
    """A device did not do what was asked (reader gone, pin busy, port closed)."""


class ReaderUnavailable(HardwareError):
    """The PC/SC service or the reader is not there right now; retry later."""


class CardError(UniontermError):
    """Anything that goes wrong while talking to a card during one tap.

    ``reason`` is a short machine word that ends up in the journal as the deny
    reason, so it must be stable.
    """

    reason = "card_error"


class CardRemoved(CardError):
    """The card left the field before the exchange was complete: no transaction."""

    reason = "card_removed"


class MalformedResponse(CardError):
    """The card answered, but not in a shape the profile allows."""

    reason = "card_unreadable"


class UnexpectedStatus(MalformedResponse):
    """The card answered a status word the exchange does not accept."""

    def __init__(self, command: str, sw: int) -> None:
        self.command = command
        self.sw = sw
        super().__init__(f"{command}: card answered status {sw:04X}")


class CardNotGenuine(CardError):
    """Cryptographic proof failed: a clone, a wrong key or a replayed token."""

    reason = "card_not_genuine"


class PayloadError(UniontermError):
    """An inbound message (MQTT payload, serial frame) is malformed.

    ``where`` names the topic, port or field, so the log line says what and where.
    """

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class SignatureError(PayloadError):
    """A signed message is unsigned, signed by an unknown key, or does not verify."""


class UnsignedError(SignatureError):
    """No signature envelope at all: refused as ``unsigned``, not ``bad_signature``.

    Its own class so the refusal word never depends on the message text,
    which may quote a sender's scope or kind.
    """


class ReplayError(PayloadError):
    """A signed message is valid but old, expired or already seen."""


class StorageError(UniontermError):
    """A database could not be written (disk full, read-only, corrupt)."""


class SamError(CardError):
    """The secure access module could not supply a key (absent, unknown slot, bad answer).

    A card tap fails without the card being at fault, so the journal says so.
    """

    reason = "sam_unavailable"


class ImportRejected(UniontermError):
    """A member import file has bad rows, so nothing from it is used.

    ``errors`` lists every fault as ``(line, column, problem)``: whoever fixes
    the file fixes it in one pass instead of one error per attempt.
    """

    def __init__(self, source: str, errors: list[tuple[int, str, str]]) -> None:
        self.source = source
        self.errors = errors
        line, column, problem = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{source}: line {line}, column {column}: {problem}{more}")


if TYPE_CHECKING:  # only for the annotation below; model imports nothing from here
    from .model import CardIdentity


class CardRefused(CardError):
    """A card the card layer refused, with what the card was taken for.

    ``attempt`` (a :class:`terminal.model.CardIdentity`) names the profile whose
    proof failed, the strength that profile stands for and, where one was read,
    the card_ref, so the journal tells a cloned UID from a failed DESFire
    authentication or a replayed QR token. ``reason`` is the cause's reason.
    """

    def __init__(self, cause: CardError, attempt: "CardIdentity") -> None:
        super().__init__(str(cause))
        self.reason = cause.reason
        self.attempt = attempt


class ActionRefused(UniontermError):
    """A simulator workbench request that cannot be carried out now; the message is shown to the person."""
