"""Speaking to systemd: readiness, status, watchdog, reload and stop notifications.

The wire format is sd_notify(3): a datagram of ``NAME=value`` assignments separated by
newlines, sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for
the abstract namespace). It is simple enough to speak without libsystemd, so this module
needs no optional dependency. Outside systemd (``$NOTIFY_SOCKET`` unset) every call is a
silent no-op, so the daemon calls the same code on a laptop and on a Raspberry Pi.

Layers, pure first:

- :func:`notify_message` encodes assignments to bytes (no I/O, no clock).
- :func:`status_text` words an :class:`AgentStatus` for ``STATUS=``.
- :class:`Notifier` sends datagrams; :class:`StatusBoard` sends ``STATUS=`` when it changes.
- :func:`run_watchdog` (started by :func:`start_watchdog`) pings ``WATCHDOG=1`` from the
  event loop itself, so a stalled loop stops the pings and systemd restarts the service
  (systemd.service(5), ``WatchdogSec=``).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from agent.errors import EdgeAgentError

__all__ = [
    "MAX_STATUS_CHARS",
    "AgentStatus",
    "HubLink",
    "Notifier",
    "NotifyError",
    "StatusBoard",
    "monotonic_usec",
    "notify_address",
    "notify_message",
    "parse_watchdog_usec",
    "run_watchdog",
    "start_watchdog",
    "status_text",
    "watchdog_interval",
]

logger = logging.getLogger(__name__)

# sd_notify(3) assignments are environment-style names; systemd itself only defines upper case.
_NAME_RE: Final = re.compile(r"^[A-Z][A-Z0-9_]*$")
# Long enough for a busy device, short enough for one line of `systemctl status`.
MAX_STATUS_CHARS: Final = 400
_MAX_GROUPS_SHOWN: Final = 5
_MAX_SENSORS_NAMED: Final = 3


class NotifyError(EdgeAgentError, ValueError):
    """A notification that sd_notify(3) cannot carry (bad name, newline in a value, ...)."""


def notify_message(**fields: str | int | bool) -> bytes:
    """Encode sd_notify(3) assignments, in the order given, as one datagram payload.

    ``True``/``False`` become ``1``/``0``. Raises :class:`NotifyError` for no fields, a
    name that is not upper-case ``[A-Z0-9_]``, a value holding a newline or NUL, or
    ``RELOADING=1`` without ``MONOTONIC_USEC`` (required since systemd 253, harmless before).
    """
    if not fields:
        raise NotifyError("a notification needs at least one field")
    lines = [f"{name}={_notify_value(name, value)}" for name, value in fields.items()]
    if _is_set(fields.get("RELOADING")) and "MONOTONIC_USEC" not in fields:
        raise NotifyError("RELOADING=1 must be sent with MONOTONIC_USEC")
    return "\n".join(lines).encode()


def notify_address(value: str | None) -> str | bytes | None:
    """Socket address for ``$NOTIFY_SOCKET``: a path, abstract ``@name`` as bytes, or None.

    Anything else (unset, empty, relative, ``vsock:``) is None: sd_notify(3) ignores it too.
    """
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        # A leading "@" stands for the NUL byte that starts an abstract socket name (unix(7)).
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def parse_watchdog_usec(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    """Ping interval in seconds (half of ``WATCHDOG_USEC``), or None when not for us.

    ``WATCHDOG_PID``, when set, must name this process (sd_watchdog_enabled(3)).
    """
    if not usec or (pid and pid.strip() != str(own_pid)):
        return None
    try:
        value = int(usec)
    except ValueError:
        logger.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    if value <= 0:
        return None
    # systemd's advice: ping at half the timeout, so one late ping is not fatal.
    return value / 2_000_000


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings for this process, or None without a watchdog."""
    env = os.environ if environ is None else environ
    return parse_watchdog_usec(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"), os.getpid())


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock ``MONOTONIC_USEC=`` is read against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends sd_notify(3) datagrams; silent no-op when there is no notify socket.

    Socket trouble never raises: a missing or refusing socket is logged once and ignored,
    because losing a status line must never take the daemon down.
    """

    def __init__(self, address: str | bytes | None) -> None:
        self._address = address
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, *, unset: bool = False
    ) -> Notifier:
        """Notifier for ``$NOTIFY_SOCKET``; ``unset`` drops it from os.environ (children)."""
        env = os.environ if environ is None else environ
        notifier = cls(notify_address(env.get("NOTIFY_SOCKET")))
        if unset:
            os.environ.pop("NOTIFY_SOCKET", None)
        return notifier

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to."""
        return self._address is not None

    def send(self, **fields: str | int | bool) -> bool:
        """Send one notification; True if it was handed to the socket."""
        payload = notify_message(**fields)
        if self._address is None:
            return False
        try:
            self._socket().sendto(payload, self._address)
        except OSError as exc:
            self._warn_once(exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: settings loaded and local parts up; optionally with ``STATUS=``."""
        return self._send_with_status(status, READY=1)

    def status(self, text: str) -> bool:
        """``STATUS=`` free-form text shown by ``systemctl status``."""
        return self.send(STATUS=_one_line(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the event loop is alive."""
        return self.send(WATCHDOG=1)

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``; send :meth:`ready` when done."""
        return self._send_with_status(status, RELOADING=1, MONOTONIC_USEC=monotonic_usec())

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self._send_with_status(status, STOPPING=1)

    def close(self) -> None:
        """Close the datagram socket (a later send opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send_with_status(self, status: str | None, **fields: str | int | bool) -> bool:
        if status is not None:
            fields["STATUS"] = _one_line(status)
        return self.send(**fields)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never stall the event loop on a full receive queue: drop the datagram instead.
            sock.setblocking(False)
            self._sock = sock
        return self._sock

    def _warn_once(self, exc: OSError) -> None:
        if exc.errno == errno.EAGAIN:
            logger.debug("notify socket busy; dropped one notification")
            return
        if not self._warned:
            self._warned = True
            logger.warning("cannot notify systemd at %r: %s", self._address, exc)


async def run_watchdog(
    notifier: Notifier,
    interval: float,
    *,
    healthy: Callable[[], bool] | None = None,
) -> None:
    """Ping ``WATCHDOG=1`` every ``interval`` seconds until cancelled.

    The pings come from a task on the event loop, so a blocked loop sends none and systemd
    restarts the service after ``WatchdogSec=``. ``healthy`` (optional) withholds a ping
    when the daemon knows it is stuck in a way that keeps the loop itself running.
    """
    if interval <= 0:
        raise ValueError(f"watchdog interval must be positive, got {interval!r}")
    while True:
        if healthy is None or healthy():
            notifier.watchdog()
        await asyncio.sleep(interval)


def start_watchdog(
    notifier: Notifier,
    environ: Mapping[str, str] | None = None,
    *,
    healthy: Callable[[], bool] | None = None,
) -> asyncio.Task[None] | None:
    """Start :func:`run_watchdog` on the running loop if systemd asked for a watchdog.

    Returns the task (the caller keeps it and cancels it on shutdown), or None.
    """
    interval = watchdog_interval(environ)
    if interval is None or not notifier.enabled:
        return None
    pings = run_watchdog(notifier, interval, healthy=healthy)
    return asyncio.get_running_loop().create_task(pings, name="systemd-watchdog")


class HubLink(enum.StrEnum):
    """The agent's link to its hub, as shown in ``STATUS=``."""

    STARTING = "starting"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RETRYING = "retrying"
    EMBEDDED = "embedded"


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """Everything ``STATUS=`` tells; sensors are ``(name, up)`` pairs in a stable order."""

    hub: HubLink = HubLink.STARTING
    retry_in: float | None = None
    groups: tuple[str, ...] = ()
    calls: int = 0
    sensors: tuple[tuple[str, bool], ...] = ()
    outbox: int = 0
    note: str | None = None


def status_text(status: AgentStatus) -> str:
    """Word a status for ``systemctl status``, at most :data:`MAX_STATUS_CHARS` long."""
    parts = [
        _hub_words(status),
        _groups_words(status.groups),
        _plural(status.calls, "active call"),
        *_sensor_words(status.sensors),
        f"outbox {status.outbox}",
    ]
    if status.note:
        parts.insert(0, status.note)
    text = _one_line("; ".join(parts))
    if len(text) > MAX_STATUS_CHARS:
        text = text[: MAX_STATUS_CHARS - 3] + "..."
    return text


class _Keep(enum.Enum):
    """Marker for "leave this field as it is" in :meth:`StatusBoard.update`."""

    KEEP = enum.auto()


_KEEP: Final = _Keep.KEEP


class StatusBoard:
    """Holds the agent's :class:`AgentStatus` and sends ``STATUS=`` only when its words change."""

    def __init__(self, notifier: Notifier, status: AgentStatus | None = None) -> None:
        self._notifier = notifier
        self._status = status or AgentStatus()
        self._sent: str | None = None

    @property
    def status(self) -> AgentStatus:
        """The current status."""
        return self._status

    @property
    def text(self) -> str:
        """The current ``STATUS=`` words."""
        return status_text(self._status)

    def update(
        self,
        *,
        hub: HubLink | None = None,
        retry_in: float | _Keep | None = _KEEP,
        groups: Iterable[str] | None = None,
        calls: int | None = None,
        outbox: int | None = None,
        note: str | _Keep | None = _KEEP,
    ) -> bool:
        """Change the given fields and publish; True if a new ``STATUS=`` was sent.

        Setting ``hub`` without ``retry_in`` clears the retry delay, which only means
        something while retrying.
        """
        old = self._status
        if hub is not None and retry_in is _KEEP:
            retry_in = None
        self._status = AgentStatus(
            hub=old.hub if hub is None else hub,
            retry_in=old.retry_in if retry_in is _KEEP else retry_in,
            groups=old.groups if groups is None else tuple(groups),
            calls=old.calls if calls is None else calls,
            sensors=old.sensors,
            outbox=old.outbox if outbox is None else outbox,
            note=old.note if note is _KEEP else note,
        )
        return self.publish()

    def set_sensor(self, name: str, *, up: bool) -> bool:
        """Record whether sensor ``name`` is up, and publish."""
        sensors = dict(self._status.sensors)
        sensors[name] = up
        self._status = replace(self._status, sensors=tuple(sorted(sensors.items())))
        return self.publish()

    def remove_sensor(self, name: str) -> bool:
        """Forget sensor ``name`` (it left the settings), and publish."""
        sensors = tuple(item for item in self._status.sensors if item[0] != name)
        self._status = replace(self._status, sensors=sensors)
        return self.publish()

    def publish(self, *, force: bool = False) -> bool:
        """Send ``STATUS=`` if the words changed since the last send (or ``force``)."""
        text = self.text
        if text == self._sent and not force:
            return False
        self._sent = text
        return self._notifier.status(text)


def _notify_value(name: str, value: str | int | bool) -> str:
    if not _NAME_RE.match(name):
        raise NotifyError(f"bad notification field name {name!r}: use A-Z, 0-9 and _")
    text = str(int(value)) if isinstance(value, bool) else str(value)
    if "\n" in text or "\0" in text:
        raise NotifyError(f"notification field {name} must be one line without NUL bytes")
    return text


def _is_set(value: str | int | bool | None) -> bool:
    return value is not None and str(int(value) if isinstance(value, bool) else value) == "1"


def _one_line(text: str) -> str:
    return " ".join(text.replace("\0", " ").split())


def _hub_words(status: AgentStatus) -> str:
    if status.hub is HubLink.RETRYING and status.retry_in is not None:
        return f"hub unreachable, retrying in {max(0, round(status.retry_in))}s"
    if status.hub is HubLink.RETRYING:
        return "hub unreachable, retrying"
    return f"hub {status.hub.value}"


def _groups_words(groups: tuple[str, ...]) -> str:
    if not groups:
        return "no groups"
    shown = ", ".join(groups[:_MAX_GROUPS_SHOWN])
    more = len(groups) - _MAX_GROUPS_SHOWN
    return f"groups {shown}" + (f" (+{more} more)" if more > 0 else "")


def _sensor_words(sensors: tuple[tuple[str, bool], ...]) -> list[str]:
    if not sensors:
        return []
    down = [name for name, up in sensors if not up]
    words = f"sensors {len(sensors) - len(down)}/{len(sensors)} up"
    if down:
        named = ", ".join(down[:_MAX_SENSORS_NAMED])
        extra = len(down) - _MAX_SENSORS_NAMED
        words += f" (down: {named}" + (f" +{extra} more" if extra > 0 else "") + ")"
    return [words]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
