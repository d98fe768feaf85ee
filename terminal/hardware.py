"""The seams between the core and the hardware.

Every device the terminal touches is one of these small Protocols. A driver in
``drivers/`` and its simulated twin both satisfy them, so the core (app loop,
modes, journal, uplink) runs unchanged on a Raspberry Pi and in CI.

Events that start in driver threads (a PC/SC monitor, a gpiozero callback)
reach the loop only through :class:`terminal.bridge.LoopBridge`.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncContextManager, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL.Image import Image


# --- card reader -------------------------------------------------------------


@dataclass(frozen=True)
class CardRead:
    """What a reader's arrival work (``CardReader.read_on_arrival``) made of a card.

    The reader keeps the card until the app calls :meth:`served` (or a short
    while has passed): releasing it and watching again means work in the
    reader's thread and in pcscd, which would otherwise compete with the
    tap's decision and journal commit for the interpreter and the CPUs.
    """

    value: object = None
    error: Exception | None = None
    done: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    def result(self) -> object:
        """The work's result; raises what the work raised."""
        if self.error is not None:
            raise self.error
        return self.value

    def served(self) -> None:
        """The app is through with this tap: the reader may let the card go."""
        self.done.set()


@dataclass(frozen=True)
class CardPresent:
    """A card entered the field of ``reader``.

    ``detected_at`` is ``time.perf_counter()`` when the driver first learned of
    the card; latency figures are measured from it. ``read`` is set when the
    reader already ran the app's arrival work on the card (it releases the
    card once told ``read.served()``).
    """

    reader: str
    atr: bytes
    detected_at: float
    read: CardRead | None = None


@dataclass(frozen=True)
class CardGone:
    """The card on ``reader`` left the field."""

    reader: str


@dataclass(frozen=True)
class ReaderState:
    """Reader attached or lost (hot-plug, pcscd restart)."""

    reader: str
    online: bool
    detail: str = ""


ReaderEvent = CardPresent | CardGone | ReaderState


@runtime_checkable
class CardChannel(Protocol):
    """An open connection to one card: APDUs in, responses (data + SW1 SW2) out.

    ``transmit`` raises :class:`terminal.exceptions.CardRemoved` when the card
    has left; it never returns a partial response.
    """

    async def transmit(self, apdu: bytes) -> bytes: ...


@runtime_checkable
class CardReader(Protocol):
    """A source of card events and of channels to the card currently present."""

    def events(self) -> "AsyncIteratorLike[ReaderEvent]": ...

    def connect(self, reader: str) -> AsyncContextManager[CardChannel]:
        """Open the card on ``reader``; the handle is released on exit, always."""
        ...

    # Optional: ``read_on_arrival(work)`` makes the reader run ``await work(channel, atr)``
    # on every arriving card in its own thread, before telling the loop, and deliver the
    # outcome in ``CardPresent.read``. Only for work that waits on nothing but the card;
    # the app gives it when its Identify says ``inline`` (and may decide and journal the
    # tap in that thread, under the loop's StateGuard).


class AsyncIteratorLike(Protocol):
    def __aiter__(self) -> "AsyncIteratorLike": ...

    async def __anext__(self) -> ReaderEvent: ...


# --- outputs -----------------------------------------------------------------


class Light(enum.Enum):
    GREEN = "green"
    RED = "red"


@runtime_checkable
class Outputs(Protocol):
    """Relay, the two LEDs and the buzzer.

    Timed patterns (a relay pulse, a beep) are the driver's to run so the core
    never sleeps on the decision path; calls return at once.
    """

    def pulse_relay(self, seconds: float) -> None: ...

    def set_relay(self, energised: bool) -> None: ...

    def flash(self, light: Light, seconds: float) -> None: ...

    def beep(self, pattern: tuple[float, ...]) -> None:
        """Sound the buzzer: on, off, on, ... durations in seconds."""
        ...

    def close(self) -> None: ...


# --- inputs ------------------------------------------------------------------


class InputKind(enum.Enum):
    DOOR_CONTACT = "door_contact"
    EXIT_BUTTON = "exit_button"
    KEY = "key"


@dataclass(frozen=True)
class InputEvent:
    """A change on an input: door opened/closed, exit pressed, a key typed.

    ``active`` is True for door open / button pressed; ``key`` holds the
    keypad character for KEY events.
    """

    kind: InputKind
    active: bool = True
    key: str = ""


@runtime_checkable
class Inputs(Protocol):
    """Door contact, exit button and keypad, delivered as events."""

    def start(self, sink: Callable[[InputEvent], None]) -> None:
        """Begin delivering events; ``sink`` may be called from any thread."""
        ...

    def close(self) -> None: ...


# --- display -----------------------------------------------------------------


@runtime_checkable
class Display(Protocol):
    """A small monochrome screen that shows a ready-made 1-bit image."""

    size: tuple[int, int]

    def show(self, image: "Image") -> None: ...

    def close(self) -> None: ...


# --- serial ------------------------------------------------------------------


@runtime_checkable
class SerialLink(Protocol):
    """A byte stream to a cash register or a QR scanner."""

    async def read(self, max_bytes: int = 256) -> bytes:
        """Return the next bytes available (at least one), or raise HardwareError."""
        ...

    async def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass
class Hardware:
    """The set of devices one terminal runs with, as chosen by its config."""

    reader: CardReader
    outputs: Outputs
    inputs: Inputs | None = None
    display: Display | None = None
    serial: dict[str, SerialLink] = field(default_factory=dict)
