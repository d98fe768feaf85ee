"""The card layer: everything that turns APDU exchanges into a proven identity.

Split so that all byte and crypto work is pure (``cmac``, ``desfire``,
``tlv``, ``emv``, ``qr``) and only :mod:`terminal.cards.profiles` awaits a
:class:`terminal.hardware.CardChannel`. That keeps the protocol logic
testable against published vectors without a reader, and keeps every failure
inside the :class:`terminal.exceptions.CardError` family so a tap always ends
with a journal-able reason.

The byte layouts are specified in ``docs/card-profiles.md``; the simulated
cards in ``simulator/cards/`` are written from that document, not from this
package, so the two implementations check each other.
"""

from __future__ import annotations
