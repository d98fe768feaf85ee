"""systemd readiness and watchdog protocol (sd_notify), without libsystemd.

The terminal runs as a ``Type=notify`` unit with ``WatchdogSec=``: systemd
starts counting the terminal as up only when it says ``READY=1``, and kills and
restarts it when the ``WATCHDOG=1`` pings stop. The protocol is a datagram of
newline-separated ``KEY=VALUE`` lines on the AF_UNIX socket named by
``$NOTIFY_SOCKET``, so a few lines of stdlib replace a C dependency that would
have to be built for the terminal's ARM board.

Everything here is a no-op when ``$NOTIFY_SOCKET`` is unset, so the same code
runs under the simulator, in CI and on a developer's laptop.

The watchdog is only worth having if a ping means "the terminal still serves
taps". Pings are therefore sent from a task on the asyncio loop itself (a loop
that is stopped or blocked by a synchronous call sends none) and only while a
caller-supplied health check passes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("unionterm.sdnotify")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def socket_address(value: str | None) -> str | bytes | None:
    """Turn ``$NOTIFY_SOCKET`` into an address :func:`socket.sendto` accepts.

    systemd writes abstract-namespace sockets with a leading ``@`` because a NUL
    byte cannot travel in an environment variable; the kernel wants the NUL.
    Anything that is neither absolute nor abstract (e.g. ``vsock:`` addresses of
    newer systemd versions, meant for VMs) is not for a terminal: ``None``.
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds systemd waits for a ping, or ``None`` if this process has no watchdog.

    ``WATCHDOG_PID`` names the process the watchdog is meant for: a child that
    inherited the environment must not ping on its parent's behalf (mirrors
    ``sd_watchdog_enabled``). Malformed values disable the watchdog rather than
    crash start-up: systemd itself never writes them.
    """
    usec_text = environ.get(WATCHDOG_USEC, "")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid_text = environ.get(WATCHDOG_PID, "")
    if pid_text:
        try:
            if int(pid_text) != pid:
                return None
        except ValueError:
            return None
    return usec / 1_000_000


class Notifier:
    """Sends state changes to the service manager; silently idle without one.

    A notification is advisory: losing one must never take the terminal down,
    so send errors are logged, not raised, and a full socket queue drops the
    datagram instead of blocking the event loop.
    """

    def __init__(self, address: str | bytes | None, watchdog_seconds: float | None = None) -> None:
        self._address = address
        self.watchdog_seconds = watchdog_seconds if address is not None else None
        self._socket: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build the notifier systemd asked for through the process environment."""
        env = os.environ if environ is None else environ
        raw = env.get(NOTIFY_SOCKET)
        address = socket_address(raw)
        if raw and address is None:
            log.warning("event=sd_notify_unsupported_socket address=%s", raw)
        return cls(address, watchdog_interval(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening at all."""
        return self._address is not None

    def notify(self, **fields: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; ``True`` if it left.

        Keys are upper-cased (``notify(status="x")`` sends ``STATUS=x``);
        newlines in values would start a new assignment, so they become spaces.
        """
        if self._address is None:
            return False
        lines = [f"{key.upper()}={value}".replace("\n", " ") for key, value in fields.items()]
        return self._send("\n".join(lines).encode())

    def ready(self) -> bool:
        """Start-up is complete: systemd ends the start job and starts the watchdog clock."""
        return self.notify(ready="1")

    def status(self, text: str) -> bool:
        """One line shown by ``systemctl status``, for the technician in front of the box."""
        return self.notify(status=text)

    def stopping(self) -> bool:
        """Shutdown has begun, so a slow stop is not mistaken for a hang."""
        return self.notify(stopping="1")

    def watchdog(self) -> bool:
        """Tell systemd the terminal is alive; see :func:`watchdog_task` for when."""
        return self.notify(watchdog="1")

    def close(self) -> None:
        """Release the socket; a later notification opens a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, payload: bytes) -> bool:
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(payload, socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            reason = "queue_full" if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) else exc.strerror
            log.warning("event=sd_notify_failed reason=%s", reason)
            self.close()
            return False
        return True


def _is_healthy(health: Callable[[], bool]) -> bool:
    """Run the health check; a check that crashes counts as unhealthy, not as a dead watchdog task."""
    try:
        return bool(health())
    except Exception:  # noqa: BLE001 - any failure of the check means "do not vouch for the terminal"
        log.exception("event=watchdog_health_error")
        return False


async def watchdog_task(
    health: Callable[[], bool],
    notifier: Notifier,
    interval: float | None = None,
) -> None:
    """Ping systemd at half the watchdog interval while ``health()`` is True.

    Runs until cancelled. The ping is sent from this coroutine, so it needs the
    event loop to schedule it: a stopped process or a loop blocked by a
    synchronous call stops the pings and systemd restarts the terminal, while a
    loop that is merely busy still gets here in time. ``health()`` is for the
    failures the loop cannot see (reader lost for good, database unwritable);
    the transition to unhealthy is logged once, not on every tick.

    ``interval`` overrides the watchdog period systemd announced; without
    either there is nothing to ping and the task returns at once.
    """
    period = interval if interval is not None else notifier.watchdog_seconds
    if period is None or not notifier.enabled:
        return
    healthy = True
    while True:
        if _is_healthy(health):
            if not healthy:
                log.info("event=watchdog_healthy")
                healthy = True
            notifier.watchdog()
        elif healthy:
            log.error("event=watchdog_unhealthy watchdog_s=%s", period)
            healthy = False
        await asyncio.sleep(period / 2)
