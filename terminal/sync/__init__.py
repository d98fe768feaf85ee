"""The member-list sync codec: snapshots, deltas, hot lists and terminal reports.

Everything here is pure: bytes in, validated values out, and back. The MQTT
wiring and the SQLite store call these functions; nothing here touches a
socket or a file. The wire layouts are specified in
``docs/protocol-members.md`` so that a back office can be written from the
document alone.

Modules: :mod:`.strict` (strict JSON decoding, canonical encoding),
:mod:`.records` (member record schema, list digest), :mod:`.snapshot`
(manifest and chunks), :mod:`.delta`, :mod:`.hotlist`, :mod:`.report`
(terminal-to-back-office payloads), :mod:`.limits`.

This package deliberately imports nothing at package level, so that
:mod:`terminal.signing` can use :mod:`.strict` without an import cycle.
"""
