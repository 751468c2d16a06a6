"""The state directory is private: created 0700, tightened to it, or refused with a reason."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.statedir import resolve_state_dir

# Two uids that own nothing here: the directory's owner and, in a child process, a
# stranger to it (the tests run as root, who could chmod anything).
OWNER_UID = 65534
STRANGER_UID = 65533


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A scratch directory other uids can traverse (pytest's own tmp_path is 0700)."""
    with tempfile.TemporaryDirectory(prefix="statedir-") as name:
        root = Path(name)
        root.chmod(0o711)
        yield root


def test_a_new_directory_and_its_parents_are_created_private(tmp_path: Path) -> None:
    path = resolve_state_dir(tmp_path / "a" / "b")
    assert path == tmp_path / "a" / "b"
    assert path.is_dir()
    assert _mode(path) == 0o700


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o707, 0o777, 0o1777])
def test_an_existing_directory_open_to_others_is_tightened_and_logged(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state"
    path.mkdir()
    path.chmod(mode)
    (path / "accounts.db").write_bytes(b"kept")
    with caplog.at_level(logging.WARNING, logger="agent.statedir"):
        assert resolve_state_dir(path) == path
    assert _mode(path) == 0o700
    assert (path / "accounts.db").read_bytes() == b"kept"
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert str(path) in message
    assert f"mode {mode:04o}" in message
    assert "tightened to 0700" in message


def test_a_private_directory_is_left_alone_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    with caplog.at_level(logging.DEBUG, logger="agent.statedir"):
        resolve_state_dir(path)
    assert _mode(path) == 0o700
    assert caplog.records == []


def test_a_directory_owned_by_another_user_is_tightened_when_we_may(tmp_path: Path) -> None:
    # Root may chmod what it does not own (e.g. `sudo edge-agent user add` on the service's
    # directory); the owner keeps it.
    path = tmp_path / "state"
    path.mkdir(mode=0o755)
    os.chown(path, OWNER_UID, OWNER_UID)
    resolve_state_dir(path)
    assert _mode(path) == 0o700
    assert path.stat().st_uid == OWNER_UID


def test_a_directory_that_cannot_be_tightened_is_refused_naming_it(shared_tmp: Path) -> None:
    path = shared_tmp / "state"
    path.mkdir()
    path.chmod(0o755)
    os.chown(path, OWNER_UID, OWNER_UID)
    # The interpreter lives under /root, which the stranger cannot read: the child starts as
    # root, imports what it needs, then drops to the stranger's uid before the real call.
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from agent.errors import ConfigError\n"
        "from agent.statedir import resolve_state_dir\n"
        f"os.setgroups([]); os.setgid({STRANGER_UID}); os.setuid({STRANGER_UID})\n"
        "try:\n"
        "    resolve_state_dir(Path(sys.argv[1]))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(2)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=shared_tmp,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == ""
    assert done.stdout.strip() == (
        f"the state directory {path} is open to other users (mode 0755, owner uid "
        f"{OWNER_UID}) and cannot be made private (Operation not permitted); run "
        f"'chmod 700 {path}' as its owner or choose another state directory"
    )
    assert _mode(path) == 0o755


def test_a_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("not a directory")
    with pytest.raises(ConfigError, match=f"cannot create the state directory {path}"):
        resolve_state_dir(path)


def test_a_directory_that_cannot_be_created_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "state"
    with pytest.raises(ConfigError, match=f"cannot create the state directory {path}: Not a"):
        resolve_state_dir(path)
