"""What state the terminal's storage is in, told apart by cause.

"Disk I/O error" is useless to the technician in front of the box and to the
back office watching telemetry: a full SD card needs space freed, a card the
kernel remounted read-only needs replacing, a journal at its configured
capacity needs the uplink to catch up. So every storage failure is mapped to
one :class:`StorageState`, which the screen, telemetry and the refusal
reason all name, and which tells whether value may still be granted.

SQLite's result codes alone cannot tell these apart (a write on a file system
the kernel switched to read-only after an error surfaces as a generic
``SQLITE_IOERR_WRITE``), so the file system is asked directly: a tiny probe
file is created and removed, and its ``errno`` decides.
"""

from __future__ import annotations

import enum
import errno
import os
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path

_PROBE_NAME = ".unionterm-write-probe"


class StorageState(enum.Enum):
    """The journal's storage, worst cause first where several apply."""

    OK = "ok"
    #: The journal holds more rows than ``journal.warn_at``: value still granted.
    NEAR_FULL = "near_full"
    #: ``journal.capacity`` reached: value refused until rows are acknowledged and pruned.
    JOURNAL_FULL = "journal_full"
    #: The file system has no room (or less than ``journal.min_free_kb``).
    DISK_FULL = "disk_full"
    #: The file system refuses writes (kernel remounted it read-only after an error).
    READ_ONLY = "read_only"
    #: Any other failure: I/O error, corrupt file that could not be moved aside.
    FAILED = "failed"

    @property
    def accepts_value(self) -> bool:
        """Whether a value-granting transaction may be journaled (and so granted)."""
        return self in (StorageState.OK, StorageState.NEAR_FULL)


#: What the member and the technician read, as one short screen line.
SCREEN_TEXT: dict[str, dict[StorageState, str]] = {
    "zh": {
        StorageState.NEAR_FULL: "记录将满",
        StorageState.JOURNAL_FULL: "记录已满 暂停服务",
        StorageState.DISK_FULL: "存储已满 暂停服务",
        StorageState.READ_ONLY: "存储只读 暂停服务",
        StorageState.FAILED: "存储故障 暂停服务",
    },
    "en": {
        StorageState.NEAR_FULL: "Journal nearly full",
        StorageState.JOURNAL_FULL: "Journal full",
        StorageState.DISK_FULL: "Storage full",
        StorageState.READ_ONLY: "Storage read-only",
        StorageState.FAILED: "Storage failure",
    },
}


def screen_text(state: StorageState, lang: str) -> str:
    """The screen line for ``state`` ("" when there is nothing to say)."""
    return SCREEN_TEXT.get(lang, SCREEN_TEXT["en"]).get(state, "")


def disk_free(directory: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer may still use in ``directory``'s file system (-1 if unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def _from_errno(code: int | None) -> StorageState | None:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StorageState.DISK_FULL
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StorageState.READ_ONLY
    return None


def probe_directory(directory: str | os.PathLike[str], min_free: int = 0) -> StorageState:
    """Can a file be created and written in ``directory`` right now, and is there room?

    Returns OK, DISK_FULL, READ_ONLY or FAILED. Cheap enough to run every few
    seconds while the terminal waits for its storage to come back.
    """
    path = Path(directory, _PROBE_NAME)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(path)
    except OSError as exc:
        return _from_errno(exc.errno) or StorageState.FAILED
    if min_free and 0 <= disk_free(directory) < min_free:
        return StorageState.DISK_FULL
    return StorageState.OK


def classify(exc: BaseException, directory: str | os.PathLike[str]) -> StorageState:
    """Name the cause of a failed journal write.

    ``SQLITE_FULL`` and ``SQLITE_READONLY`` say it themselves; an I/O error
    or an ``OSError`` without a telling ``errno`` is settled by probing the
    file system, and stays FAILED if the probe succeeds.
    """
    if isinstance(exc, OSError):
        state = _from_errno(exc.errno)
        if state is not None:
            return state
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            primary = code & 0xFF
            if primary == sqlite3.SQLITE_FULL:
                return StorageState.DISK_FULL
            if primary == sqlite3.SQLITE_READONLY:
                return StorageState.READ_ONLY
    state = probe_directory(directory)
    return StorageState.FAILED if state is StorageState.OK else state


def fsync_path(path: str | os.PathLike[str]) -> None:
    """``fsync`` a file or a directory (a rename is durable only once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int | None = None,
                 prepare: Callable[[int], None] | None = None) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new, never a mix.

    A temp file beside it is written and fsynced, renamed over it, and the
    folder fsynced (the rename is durable only then). ``mode`` is set exactly
    (else the umask decides); ``prepare(fd)`` runs on the open temp file before
    anything is written (a chown, so the file is never visible with the wrong
    owner).
    """
    temp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # exact, whatever the umask
        if prepare is not None:
            prepare(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(temp, path)
    fsync_path(path.parent)
