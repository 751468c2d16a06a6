#!/usr/bin/env python3
"""Fuzz the hub's HTTP API against its own OpenAPI document for minutes (default 300 s).

The run of ``tests/hub/test_openapi_fuzz.py`` at length: a real hub on 127.0.0.1 (started
here, in a fresh state directory), and schemathesis (``st run``, every check, a real
process) with its fuzzing and stateful phases repeated until the time is spent. Four fifths
of the time with an admin's token (calls that would change the fuzzer's own account go to
a name no account has; a spare admin may be demoted or removed), the rest without a token.

Printed: requests, answers by status, server errors (5xx), undocumented statuses, schema
violations (a body, media type or header unlike the document), failures of any other check,
errors the fuzzer met, and ERROR lines the hub logged. Every one of them must be 0; the exit
status is 1 otherwise. The fuzzer's own log and NDJSON report stay in ``--keep`` if given.

    .venv/bin/python scripts/fuzz_api.py                 # 5 minutes
    .venv/bin/python scripts/fuzz_api.py --seconds 60    # a quick look
    .venv/bin/python scripts/fuzz_api.py --seed 7 --keep /tmp/fuzz
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hub.test_openapi_fuzz import FuzzTally, make_fuzzer_admins, run_fuzzer  # noqa: E402

from agent.config import HubSettings, Settings  # noqa: E402
from agent.hub.server import HubServer  # noqa: E402

ANONYMOUS_SHARE: Final = 0.2
_TOKEN_MARGIN_SECONDS: Final = 600


def main(argv: Sequence[str] | None = None) -> int:
    """Fuzz for ``--seconds`` and print the figures; 1 if any of them is not 0."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="total fuzzing time")
    parser.add_argument("--seed", type=int, help="schemathesis seed (default: random)")
    parser.add_argument("--keep", type=Path, help="keep the fuzzer's logs and reports here")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    if args.keep is not None:
        return asyncio.run(_fuzz(args.seconds, seed, args.keep))
    with tempfile.TemporaryDirectory(prefix="fuzz-api-") as scratch:
        return asyncio.run(_fuzz(args.seconds, seed, Path(scratch)))


class _ErrorCount(logging.Handler):
    """ERROR records the hub logs during the run (a traceback would be one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}"[:300])


async def _fuzz(seconds: float, seed: int, workdir: Path) -> int:
    errors = _ErrorCount()
    logging.getLogger().addHandler(errors)
    settings = Settings(state_dir=workdir / "state", hub=HubSettings(host="127.0.0.1", port=0))
    hub = HubServer(settings)
    await hub.start()
    try:
        ttl = round(seconds) + _TOKEN_MARGIN_SECONDS
        token = make_fuzzer_admins(hub.accounts, hub.tokens, ttl=ttl)
        print(f"hub {hub.http_url}, {seconds:.0f} s, seed {seed}, files in {workdir}")
        parts = {"admin": (token, seconds * (1 - ANONYMOUS_SHARE))}
        parts["anonymous"] = (None, seconds * ANONYMOUS_SHARE)
        total = FuzzTally(exit_code=0)
        for name, (part_token, part_seconds) in parts.items():
            started = time.monotonic()
            tally = await run_fuzzer(
                hub.http_url, workdir / name, token=part_token, seconds=part_seconds, seed=seed
            )
            _print_tally(name, tally, time.monotonic() - started)
            total.merge(tally)
            total.exit_code = total.exit_code or tally.exit_code
    finally:
        await hub.stop()
        logging.getLogger().removeHandler(errors)
    _print_tally("total", total, seconds)
    print(f"  hub ERROR log lines: {len(errors.lines)}")
    for line in errors.lines[:5]:
        print(f"    {line}")
    return 0 if total.clean and not errors.lines else 1


def _print_tally(name: str, tally: FuzzTally, seconds: float) -> None:
    print(name)
    print(f"  requests: {tally.requests:,} in {seconds:.0f} s")
    print("  statuses: " + ", ".join(f"{s}: {n:,}" for s, n in sorted(tally.statuses.items())))
    print(f"  server errors: {tally.server_errors}")
    print(f"  undocumented statuses: {tally.undocumented}")
    print(f"  schema violations: {tally.schema_violations}")
    print(f"  failures by check: {dict(tally.failures) or 0}")
    print(f"  fuzzer errors: {len(tally.errors)}; st exit status: {tally.exit_code}")
    for check, examples in tally.examples.items():
        print(f"    {check}: {examples[0]}")
    for error in tally.errors[:3]:
        print(f"    error: {error}")


if __name__ == "__main__":
    sys.exit(main())
