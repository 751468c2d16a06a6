"""Schemathesis hooks for the hub's API fuzz: ``st`` loads this file (its ``hooks`` setting).

The fuzzer holds an admin token, and the API lets an admin demote, remove or revoke the
tokens of any account, its own included: ``GET /api/accounts`` hands it its own name, and
from then on every request would be a 401 and the run would prove nothing. So a change
aimed at the account named by ``EDGE_FUZZ_PROTECTED`` is not generated (``filter_case``
applies to every phase, links included). Should one be sent all the same, it goes to a name
no account has: the same route runs, and answers 404.
"""

from __future__ import annotations

import os
from typing import Any, Final

import schemathesis

PROTECTED_ENV: Final = "EDGE_FUZZ_PROTECTED"
ELSEWHERE_SUFFIX: Final = "-not-here"
_READS: Final = frozenset({"GET", "HEAD"})


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: Any) -> bool:
    """Generate no change to the protected account."""
    return not _changes_protected(case)


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: Any, kwargs: dict[str, Any]) -> None:
    """Send a change that got past the filter to an account that does not exist."""
    if _changes_protected(case):
        case.path_parameters["name"] = os.environ[PROTECTED_ENV] + ELSEWHERE_SUFFIX


def _changes_protected(case: Any) -> bool:
    protected = os.environ.get(PROTECTED_ENV)
    parameters = case.path_parameters or {}
    return (
        bool(protected)
        and case.method.upper() not in _READS
        and (parameters.get("name") == protected)
    )
