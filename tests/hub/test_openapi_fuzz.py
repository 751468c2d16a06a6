"""The hub's HTTP API against its own OpenAPI document, driven by a schema-driven fuzzer.

A real hub listens on 127.0.0.1; schemathesis (``st run`` with every check, a real process)
reads ``/openapi.json`` and sends what it generates from it: valid and invalid parameters
and bodies, methods the paths do not have, requests without the token, chains of calls
that follow the links it infers. Every answer must be a documented status with a body, media
type and headers as documented, and never a server error. Once with an admin's token, once
without any. ``scripts/fuzz_api.py`` runs the same for minutes.

Only one check is told more than the document says: ``positive_data_acceptance`` also
accepts 400 for input the document allows, because some refusals JSON Schema cannot state
(a push key that is not a P-256 point, a name already taken, a page key that no page gave,
a password shorter than the configured minimum). Those 400s still have to be documented,
with the error body; every other status there is a failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from agent.hub.accounts import AccountStore, Role
from agent.hub.tokens import TokenIssuer

from .conftest import HubFactory
from .openapi_fuzz_hooks import PROTECTED_ENV

FUZZER: Final = "fuzzer"  # the admin whose token the fuzzer holds; it cannot change itself
SPARE_ADMIN: Final = "fuzzer-spare"  # an admin the fuzzer may demote or remove
HOOKS: Final = Path(__file__).with_name("openapi_fuzz_hooks.py")
POSITIVE_STATUSES: Final = ("2xx", "3xx", "400", "401", "403", "404", "409", "429")
# A response that differs from its documented schema, media type or headers.
SCHEMA_CHECKS: Final = (
    "response_schema_conformance",
    "content_type_conformance",
    "response_headers_conformance",
)
UNDOCUMENTED_CHECK: Final = "status_code_conformance"
_SHOWN: Final = 600
_EXAMPLES: Final = 8  # failures shown per check


@dataclass
class FuzzTally:
    """What one ``st run`` sent and found, read from its NDJSON event report."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # check -> distinct failures
    examples: dict[str, list[str]] = field(default_factory=dict)  # check -> the first few
    errors: list[str] = field(default_factory=list)  # the fuzzer's own errors, network errors
    exit_code: int | None = None
    log: Path | None = None

    @property
    def server_errors(self) -> int:
        """Answers with a 5xx status."""
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def undocumented(self) -> int:
        """Distinct answers with a status the document does not declare."""
        return self.failures[UNDOCUMENTED_CHECK]

    @property
    def schema_violations(self) -> int:
        """Distinct answers whose body, media type or headers differ from the document."""
        return sum(self.failures[check] for check in SCHEMA_CHECKS)

    @property
    def clean(self) -> bool:
        """Nothing found, nothing broken, and the fuzzer said so too."""
        return (
            not self.failures
            and not self.errors
            and self.server_errors == 0
            and self.requests > 0
            and self.exit_code == 0
        )

    def merge(self, other: FuzzTally) -> None:
        """Add ``other``'s figures to these (examples: the first one found wins)."""
        self.requests += other.requests
        self.statuses.update(other.statuses)
        self.failures.update(other.failures)
        for check, examples in other.examples.items():
            kept = self.examples.setdefault(check, [])
            kept += examples[: _EXAMPLES - len(kept)]
        self.errors.extend(other.errors)

    def summary(self) -> str:
        """The figures, then the first few failures of each kind."""
        lines = [
            f"requests {self.requests}, server errors {self.server_errors}, "
            f"undocumented statuses {self.undocumented}, schema violations "
            f"{self.schema_violations}, fuzzer errors {len(self.errors)}",
            "statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())),
        ]
        lines += [f"{check}: {n} distinct" for check, n in sorted(self.failures.items())]
        for check, examples in self.examples.items():
            lines += [f"--- {check}\n{text}" for text in examples]
        lines += [f"--- error\n{text}" for text in self.errors[:3]]
        if self.exit_code not in (None, 0) and self.log is not None:
            lines.append(f"--- st exited {self.exit_code}; its log:\n" + _tail(self.log))
        return "\n".join(lines)


def read_report(lines: Iterable[str]) -> FuzzTally:
    """Tally an ``st run --report ndjson`` event stream."""
    tally = FuzzTally()
    seen: set[tuple[str, ...]] = set()
    for line in lines:
        event: dict[str, Any] = json.loads(line)
        for kind, data in event.items():
            if kind == "ScenarioFinished":
                _tally_scenario(tally, data.get("recorder", {}), seen)
            elif kind in ("NonFatalError", "FatalError"):
                tally.errors.append(json.dumps(data)[:_SHOWN])
    return tally


def make_fuzzer_admins(accounts: AccountStore, tokens: TokenIssuer, *, ttl: int) -> str:
    """The fuzzer's admin and a spare admin; the fuzzer's token, valid for ``ttl`` s."""
    fuzzer = accounts.add(FUZZER, None, Role.ADMIN, groups=("*",))
    accounts.add(SPARE_ADMIN, None, Role.ADMIN, groups=("*",))
    return tokens.issue(fuzzer, ttl)


async def run_fuzzer(
    base_url: str,
    workdir: Path,
    *,
    token: str | None,
    max_examples: int | None = None,
    seconds: float | None = None,
    seed: int | None = None,
) -> FuzzTally:
    """``st run`` against ``base_url`` with every check: ``max_examples`` per operation and
    phase, or fuzzing and stateful runs repeated for ``seconds``. ``token``: an admin's
    (the calls that would change its account go elsewhere, see the hooks) or none."""
    report, log, config = _prepare(workdir)
    command = [sys.executable, "-m", "schemathesis.cli", "--no-color"]
    command += ["--config-file", str(config), "run", f"{base_url}/openapi.json"]
    command += ["--checks", "all", "--continue-on-failure", "--workers", "1"]
    command += ["--generation-database", "none", "--request-timeout", "30"]
    command += ["--report", "ndjson", "--report-ndjson-path", str(report)]
    if token is not None:
        command += ["--header", f"Authorization: Bearer {token}"]
    if max_examples is not None:
        command += ["--max-examples", str(max_examples)]
    if seconds is not None:
        command += ["--max-time", str(max(1, round(seconds)))]
    if seed is not None:
        command += ["--seed", str(seed)]
    env = {**os.environ, PROTECTED_ENV: FUZZER}
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=workdir, env=env, stdout=output, stderr=asyncio.subprocess.STDOUT
        )
        exit_code = await process.wait()
    with report.open(encoding="utf-8") as events:
        tally = read_report(events)
    tally.exit_code, tally.log = exit_code, log
    return tally


# --- the CI sample ------------------------------------------------------------------------


async def test_the_fuzzer_finds_every_answer_documented(
    hub_factory: HubFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await hub_factory()
    server = hub.server
    token = make_fuzzer_admins(server.accounts, server.tokens, ttl=3600)
    admin = await run_fuzzer(
        server.http_url, tmp_path / "admin", token=token, max_examples=8, seed=1
    )
    anonymous = await run_fuzzer(
        server.http_url, tmp_path / "anonymous", token=None, max_examples=3, seed=2
    )
    assert admin.clean, admin.summary()
    assert anonymous.clean, anonymous.summary()
    # The admin's run reached past the token check: successes and refusals of each kind.
    assert {200, 201, 400, 404, 405} <= set(admin.statuses), admin.summary()
    assert {200, 401} <= set(anonymous.statuses), anonymous.summary()
    fuzzer = server.accounts.get_by_name(FUZZER)  # it never changed its own account
    assert fuzzer is not None
    assert fuzzer.role is Role.ADMIN
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _tally_scenario(
    tally: FuzzTally, recorder: Mapping[str, Any], seen: set[tuple[str, ...]]
) -> None:
    for interaction in recorder.get("interactions", {}).values():
        tally.requests += 1
        response = interaction.get("response")
        if response is None:
            tally.errors.append(f"no answer to {interaction.get('request', {}).get('uri')}")
        else:
            tally.statuses[response["status_code"]] += 1
    for checks in recorder.get("checks", {}).values():
        for check in checks:
            if check.get("status") == "success":
                continue
            failure = check.get("failure_info", {}).get("failure", {})
            key = (check["name"], str(failure.get("operation")), str(failure.get("message")))
            if key in seen:
                continue
            seen.add(key)
            tally.failures[check["name"]] += 1
            examples = tally.examples.setdefault(check["name"], [])
            if len(examples) < _EXAMPLES:
                examples.append(f"{key[1]}: {key[2]}"[:_SHOWN])


def _prepare(workdir: Path) -> tuple[Path, Path, Path]:
    """The fuzzer's report, log and configuration files in ``workdir`` (made now)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "schemathesis.toml"
    config.write_text(_config_toml())
    return workdir / "events.ndjson", workdir / "st.log", config


def _config_toml() -> str:
    statuses = ", ".join(f'"{s}"' for s in POSITIVE_STATUSES)
    return (
        f"hooks = {json.dumps(str(HOOKS))}\n\n"
        "[checks.positive_data_acceptance]\n"
        f"expected-statuses = [{statuses}]\n"
    )


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_text(errors="replace")[-size:]
