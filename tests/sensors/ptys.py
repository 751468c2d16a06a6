"""Fake serial devices for tests: real pseudo-terminals behind a stable symlink.

The agent opens the symlink, as it would open /dev/serial/by-id/...; the test holds the master
side. Unplugging closes the master (the agent's reads fail as with a pulled USB adapter);
replugging opens a new pty and points the symlink at it.
"""

from __future__ import annotations

import asyncio
import os
import tty
from pathlib import Path

__all__ = ["PtyDevice"]


class PtyDevice:
    """The device end of a serial port: write what the device says, read what it is told."""

    def __init__(self, link: Path, *, plugged: bool = True) -> None:
        self.link = link
        self.master: int | None = None
        self._buffer = b""
        if plugged:
            self.plug()

    @property
    def path(self) -> str:
        """What the agent opens."""
        return str(self.link)

    def plug(self) -> None:
        """A new pty, reached through the symlink from now on."""
        assert self.master is None, "already plugged"
        master, slave = os.openpty()
        tty.setraw(slave)
        target = os.ttyname(slave)
        os.close(slave)
        temporary = self.link.with_name(self.link.name + ".new")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        temporary.replace(self.link)
        self.master = master
        self._buffer = b""

    def unplug(self) -> None:
        """Close the device side: the agent's open port fails."""
        assert self.master is not None, "not plugged"
        os.close(self.master)
        self.master = None

    def send(self, data: bytes) -> None:
        """Bytes from the device to the agent."""
        assert self.master is not None, "not plugged"
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    async def read_line(self, delimiter: bytes = b"\n") -> bytes:
        """The next line the agent wrote to the device, with its delimiter."""
        while delimiter not in self._buffer:
            await self._readable()
            assert self.master is not None
            self._buffer += os.read(self.master, 4096)
        line, _, self._buffer = self._buffer.partition(delimiter)
        return line + delimiter

    async def _readable(self) -> None:
        assert self.master is not None, "not plugged"
        master = self.master
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(master, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(master)

    def close(self) -> None:
        """Unplug if plugged (test teardown)."""
        if self.master is not None:
            self.unplug()
