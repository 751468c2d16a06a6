"""Fixtures of the sensors tests: pty-backed fake serial devices."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sensors.ptys import PtyDevice


@pytest.fixture
def make_device(tmp_path: Path) -> Iterator[Callable[..., PtyDevice]]:
    """Make pty devices at tmp_path/NAME; all are unplugged at teardown."""
    devices: list[PtyDevice] = []

    def make(name: str = "tty0", *, plugged: bool = True) -> PtyDevice:
        device = PtyDevice(tmp_path / name, plugged=plugged)
        devices.append(device)
        return device

    yield make
    for device in devices:
        device.close()
