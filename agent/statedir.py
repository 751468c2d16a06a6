"""The state directory (accounts, secrets) and how secret files are written into it.

The directory comes from an explicit setting, else systemd's ``$STATE_DIRECTORY``
(systemd.exec(5), "StateDirectory="; colon-separated when several are configured), else
``$XDG_STATE_HOME/edge-agent`` (XDG Base Directory Specification), else
``~/.local/state/edge-agent``. Secret files are created with mode 0600 and written
atomically, so a reader never sees half a key and no other user ever can.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["APP_DIR_NAME", "read_or_create_secret", "resolve_state_dir", "write_secret"]

APP_DIR_NAME = "edge-agent"
_DIR_MODE = 0o700
_SECRET_MODE = 0o600


def resolve_state_dir(explicit: Path | None = None) -> Path:
    """The state directory to use; created with mode 0700 when it does not exist yet."""
    path = _choose_state_dir(explicit)
    path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    return path


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; the file is created with mode 0600."""
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def read_or_create_secret(path: Path, factory: Callable[[], bytes]) -> bytes:
    """The secret stored at ``path``; made by ``factory`` and stored (0600) on first use.

    Two processes starting at once agree on one secret: the new file is linked into
    place, which fails if another process got there first, and then that one is read.
    """
    with contextlib.suppress(FileNotFoundError):
        return _read_existing(path)
    tmp = _write_temp(path, factory())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return _read_existing(path)


def _choose_state_dir(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit.expanduser()
    systemd_dirs = os.environ.get("STATE_DIRECTORY", "")
    if systemd_dirs:
        return Path(systemd_dirs.split(":", 1)[0])
    xdg = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says a relative path in these variables is invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP_DIR_NAME
    return Path.home() / ".local" / "state" / APP_DIR_NAME


def _write_temp(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _SECRET_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _read_existing(path: Path) -> bytes:
    data = path.read_bytes()
    if (path.stat().st_mode & 0o077) != 0:
        # A secret readable by others was copied in by hand; tighten it rather than refuse.
        path.chmod(_SECRET_MODE)
    return data


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
