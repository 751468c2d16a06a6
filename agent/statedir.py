"""The state directory (accounts, secrets) and how secret files are written into it.

The directory comes from an explicit setting, else systemd's ``$STATE_DIRECTORY``
(systemd.exec(5), "StateDirectory="; colon-separated when several are configured), else
``$XDG_STATE_HOME/edge-agent`` (XDG Base Directory Specification), else
``~/.local/state/edge-agent``. Secret files are created with mode 0600 and written
atomically, so a reader never sees half a key and no other user ever can.

The directory itself is private (0700): a new one is created so, and an existing one open
to group or others (a hand-made ``mkdir``, an umask of 022) is tightened with a warning,
or refused with a :class:`~agent.errors.ConfigError` naming it when that cannot be done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from agent.errors import ConfigError

__all__ = [
    "APP_DIR_NAME",
    "read_or_create_secret",
    "read_secret_file",
    "resolve_state_dir",
    "write_secret",
]

log = logging.getLogger(__name__)

APP_DIR_NAME = "edge-agent"
_DIR_MODE = 0o700
_SECRET_MODE = 0o600
_OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def resolve_state_dir(explicit: Path | None = None) -> Path:
    """The state directory to use, private (0700): created so, or tightened to it.

    Raises ``ConfigError`` naming the directory when it cannot be created, is not a
    directory, or is open to other users and cannot be made private.
    """
    path = _choose_state_dir(explicit)
    try:
        path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the state directory {path}: {exc.strerror}") from exc
    _make_private(path)
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


def read_secret_file(path: Path, *, what: str, key: str) -> str:
    """The secret text an operator keeps in ``path`` (surrounding whitespace dropped).

    ``ConfigError`` naming ``key`` when it is unreadable or empty; a warning when others may
    read it (it should be mode 0600).
    """
    try:
        text = path.read_text(encoding="utf-8").strip()
        mode = stat.S_IMODE(path.stat().st_mode)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read the {what} file {path}: {reason}", key=key) from exc
    if not text:
        raise ConfigError(f"the {what} file {path} is empty", key=key)
    if mode & 0o077:
        log.warning("the %s file %s is readable by others (mode %o)", what, path, mode)
    return text


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


def _make_private(path: Path) -> None:
    """Tighten ``path`` to 0700 if group or others have any access; refuse if impossible."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read the state directory {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"the state directory {path} is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if not mode & _OPEN_TO_OTHERS:
        return
    # Accounts, the token secret and the VAPID key live here: with group or other access,
    # another local user could list, replace or (if a file mode slipped) read them.
    try:
        path.chmod(_DIR_MODE)
        tightened = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise _not_private(path, mode, st.st_uid, exc.strerror) from exc
    if tightened & _OPEN_TO_OTHERS:
        # Some filesystems (FAT, some network mounts) accept chmod and keep their own modes.
        raise _not_private(path, mode, st.st_uid, f"its filesystem keeps mode {tightened:04o}")
    log.warning(
        "state directory %s was open to other users (mode %04o); tightened to %04o",
        path,
        mode,
        _DIR_MODE,
    )


def _not_private(path: Path, mode: int, owner: int, why: str | None) -> ConfigError:
    return ConfigError(
        f"the state directory {path} is open to other users (mode {mode:04o}, owner uid "
        f"{owner}) and cannot be made private ({why}); run 'chmod 700 {path}' as its owner "
        "or choose another state directory"
    )


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
