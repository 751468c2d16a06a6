#!/usr/bin/env python3
"""Fuzz the frame decoders and the hub's frame handling for 100,000+ cases each.

The properties and strategies are the test suite's own (``tests/test_protocol_fuzz.py``,
``tests/hub/test_frame_fuzz.py``), which run a few hundred cases per test run; this runs
them at length. Targets:

- ``client``: ``parse_client_frame`` on any text (well-formed actions, frames nested up to
  1,500 deep, NaN/Infinity/1e999 anywhere, mutated and percent-encoded frames, garbage)
  with random limits: an action a hub can forward, or a clear ``ProtocolError``;
- ``hub-frames``: ``parse_hub_frame`` and the callback message our clients make of it;
- ``hub``: the hub's realtime endpoint driven in-process through ASGI callables, one
  connection per example sending up to 12 such frames (text or binary) while an observer
  shares its group; a case is one frame.

Unlike a test run, a failing case does not stop the run: every exception (a property
violated, or anything the code under test raised) is counted, and the first example of
each kind is printed. The figure that matters is "unexpected exceptions", which must be
0; the exit status is 1 otherwise.

``cost`` prints what the depth and finiteness checks cost: ``decode_frame_text`` against
plain ``json.loads`` of the same text (the baseline, measured in the same run), with the
whole of ``parse_client_frame`` for scale, on a typical frame, on one with enough brackets
to be scanned, and on the 64 KiB frames that make the depth scan work hardest.

    .venv/bin/python scripts/fuzz_frames.py                  # 100,000 cases per target
    .venv/bin/python scripts/fuzz_frames.py --cases 3000     # a quick look, ~1 min
    .venv/bin/python scripts/fuzz_frames.py --only hub --cases 200000
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
import timeit
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# The test suite's own strategies and properties (tests/ is no package).
from hub.test_frame_fuzz import (  # noqa: E402
    FUZZ_LIMITS,
    EndpointHarness,
    check_exchange,
    hub_exchanges,
)
from test_protocol_fuzz import (  # noqa: E402
    check_client_frame,
    check_hub_frame,
    frame_texts,
    hub_frame_texts,
    limits,
)

from agent.protocol import Limits, decode_frame_text, parse_client_frame  # noqa: E402

TARGETS: Final = ("client", "hub-frames", "hub", "cost")
_BATCH: Final = 2_000
_SHOWN: Final = 400
_LIMITS: Final = Limits()  # built once, as the hub does
_DEFAULT_DEPTH: Final = _LIMITS.max_json_depth


@dataclass
class Tally:
    """Cases run and unexpected exceptions, grouped by type and first line."""

    name: str
    cases: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def run(self, cases: int, check: Callable[[], None], example: object) -> None:
        """Run one check worth ``cases`` cases; an exception is counted, not raised."""
        self.cases += cases
        try:
            check()
        except Exception as exc:  # counting them all is the point
            first = (str(exc).splitlines() or [""])[0][:160]
            key = f"{type(exc).__name__}: {first}"
            self.failures[key] += 1
            self.examples.setdefault(key, repr(example)[:_SHOWN])

    @property
    def unexpected(self) -> int:
        """How many cases raised."""
        return sum(self.failures.values())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen targets and print their figures; 1 if any case raised."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="cases per target")
    parser.add_argument("--only", choices=TARGETS, action="append", help="repeatable")
    args = parser.parse_args(argv)
    chosen = args.only or list(TARGETS)
    tallies = []
    if "client" in chosen:
        tally = Tally("client frames (parse_client_frame)")
        _explore(tally, st.tuples(frame_texts, limits), args.cases, _client_case)
        tallies.append(tally)
    if "hub-frames" in chosen:
        tally = Tally("hub frames (parse_hub_frame + message)")
        _explore(tally, hub_frame_texts, args.cases, _hub_frame_case)
        tallies.append(tally)
    if "hub" in chosen:
        tallies.append(_fuzz_hub(args.cases))
    if "cost" in chosen:
        _print_cost()
    return 1 if any(t.unexpected for t in tallies) else 0


def _client_case(tally: Tally, example: tuple[str, Any]) -> None:
    text, frame_limits = example
    tally.run(1, lambda: check_client_frame(text, frame_limits), text)


def _hub_frame_case(tally: Tally, text: str) -> None:
    tally.run(1, lambda: check_hub_frame(text), text)


def _fuzz_hub(cases: int) -> Tally:
    tally = Tally("hub endpoint (ASGI, one connection per example)")
    with tempfile.TemporaryDirectory(prefix="fuzz-hub-") as state:
        harness = EndpointHarness(Path(state), **FUZZ_LIMITS)
        try:
            _explore(
                tally,
                hub_exchanges,
                cases,
                lambda t, frames: t.run(
                    len(frames), lambda: check_exchange(harness, frames), frames
                ),
            )
        finally:
            harness.close()
    return tally


def _explore(
    tally: Tally, strategy: st.SearchStrategy[Any], cases: int, case: Callable[[Tally, Any], None]
) -> None:
    """Generate examples in batches until ``cases`` cases have run; print the tally."""
    started = time.perf_counter()
    batch = settings(
        max_examples=_BATCH,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: failures are counted, never raised
        suppress_health_check=list(HealthCheck),
    )

    @batch
    @given(strategy)
    def one(example: Any) -> None:
        case(tally, example)

    while tally.cases < cases:
        before = tally.cases
        one()
        if tally.cases == before:
            break
    _print_tally(tally, time.perf_counter() - started)


def _print_tally(tally: Tally, seconds: float) -> None:
    print(f"{tally.name}")
    print(f"  cases: {tally.cases:,} in {seconds:.0f} s ({tally.cases / seconds:,.0f}/s)")
    print(f"  unexpected exceptions: {tally.unexpected}")
    for key, count in tally.failures.most_common():
        print(f"    {count:>6} x {key}")
        print(f"           first: {tally.examples[key]}")
    sys.stdout.flush()


def _print_cost() -> None:
    frames = {
        "typical frame (80 B)": json.dumps(
            {"action": "broadcast", "rid": "g", "content": {"t": "hello", "n": [1, 2, 3]}}
        ),
        "40 readings (1.6 KB, scanned)": json.dumps(
            {"action": "broadcast", "rid": "g", "content": [{"t": i, "v": 1.5} for i in range(40)]}
        ),
        "64 KiB of [] pairs": '{"action":"keepAlive","x":[' + ",".join(["[]"] * 21_800) + "]}",
        "64 KiB of [ (unclosed)": "[" * 65_536,
        "1,000 deep (2 KB)": '{"action":"keepAlive","x":' + "[" * 1000 + "]" * 1000 + "}",
    }
    print(
        "cost per frame, in us: json.loads (the baseline, no checks) | decode_frame_text "
        "(the same with the depth scan and finiteness hooks) | parse_client_frame (all of it)"
    )
    for name, text in frames.items():
        try:
            baseline = f"{_per_call(functools.partial(json.loads, text)) * 1e6:9.1f}"
        except (RecursionError, ValueError) as exc:
            baseline = f"{type(exc).__name__:>9}"
        checked = _per_call(functools.partial(_decode_or_refuse, text)) * 1e6
        parsed = _per_call(functools.partial(parse_client_frame, text, _LIMITS)) * 1e6
        print(f"  {name:<32} {baseline} | {checked:9.1f} | {parsed:9.1f}")


def _decode_or_refuse(text: str) -> object:
    try:
        return decode_frame_text(text, max_depth=_DEFAULT_DEPTH)
    except ValueError as exc:  # a refusal is this function's answer too
        return exc


def _per_call(call: Callable[[], object]) -> float:
    number, total = 1, 0.0
    while total < 0.2:
        number *= 2
        total = min(timeit.repeat(call, number=number, repeat=3))
    return total / number


if __name__ == "__main__":
    sys.exit(main())
