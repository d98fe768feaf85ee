"""What one tap is at each stage: read, decided where it was read, concluded.

The records the terminal's stages hand each other (:mod:`terminal.app`) and
give listeners (the demo, the workbench, tests, benches), kept apart from the
terminal that runs the stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .exceptions import CardError, CardRefused, StorageError
from .hardware import CardRead
from .journal import Record
from .members import Lookup
from .model import CardIdentity, Decision
from .modes import Ruling


@dataclass
class Tap:
    """A card that was read (or failed to read) and waits for its decision."""

    reader: str
    detected_at: float
    identity: CardIdentity | None = None
    error: CardError | None = None
    read_at: float = 0.0
    card: CardRead | None = None
    #: Set when the reader's thread decided and journaled the tap (:meth:`terminal.app.Terminal._serve_here`).
    here: "Served | None" = None

    def served(self) -> None:
        """Through with this tap: a reader that kept the card may let it go."""
        if self.card is not None:
            self.card.served()

    def fail(self, error: CardError) -> None:
        """A refused card: a refused proof keeps what the card was taken for, for the journal."""
        self.error = error
        if isinstance(error, CardRefused):
            self.identity = error.attempt


@dataclass
class Served:
    """A tap decided and journaled on the thread that read its card, for the loop to conclude."""

    ruling: Ruling
    lookup: Lookup | None
    #: The committed record, or why the journal refused it (then nothing is granted).
    result: Record | StorageError
    decided_at: float
    committed_at: float

    @property
    def record(self) -> Record | None:
        """The committed record; None when the journal refused it."""
        return self.result if isinstance(self.result, Record) else None


@dataclass
class Outcome:
    """Everything known about one served tap, for listeners (demo, tests, bench)."""

    tap: Tap
    decision: Decision
    lookup: Lookup | None
    record: Record | None
    decided_at: float
    committed_at: float
    timings_ms: dict[str, float] = field(default_factory=dict)
