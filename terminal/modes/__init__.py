"""The three modes as users meet them: ``access`` (doors), ``pos`` (merchant counter,
union venue), ``canteen``. The terminal builds one with :func:`build_mode` from
``terminal.mode`` and calls it for every tap (see :class:`Mode`).
"""

from __future__ import annotations

from .access import AccessMode
from .base import Entry, Mode, ModeBase, ModeHost, Ruling
from .canteen import CanteenMode
from .pos import PosMode

__all__ = ["AccessMode", "CanteenMode", "Entry", "Mode", "ModeBase", "ModeHost", "PosMode", "Ruling",
           "build_mode"]

#: The mode classes by ``terminal.mode``.
MODES: dict[str, type[ModeBase]] = {cls.name: cls for cls in (AccessMode, PosMode, CanteenMode)}


def build_mode(host: ModeHost) -> ModeBase:
    """The mode object for ``host.cfg.terminal.mode``."""
    return MODES[host.cfg.terminal.mode](host)
