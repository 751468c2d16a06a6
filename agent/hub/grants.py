"""Group grants as pure rules: an exact group name, or a prefix ending in ``*``.

``porch`` covers the group ``porch`` only; ``site-*`` covers every group whose name starts
with ``site-``; a lone ``*`` covers every group. No I/O here.
"""

from __future__ import annotations

from typing import Final

from agent.errors import AccountError

__all__ = ["MAX_GRANT_CHARS", "WILDCARD", "check_grant", "grant_matches", "grants_overlap"]

MAX_GRANT_CHARS: Final = 128  # the protocol's longest group name
WILDCARD: Final = "*"


def check_grant(text: str) -> str:
    """``text`` as a grant; ``AccountError`` naming what is wrong with it."""
    if not isinstance(text, str) or not text or len(text) > MAX_GRANT_CHARS:
        raise AccountError(
            f"Bad group grant {text!r}: use 1 to {MAX_GRANT_CHARS} characters, "
            "a group name or a prefix ending in *."
        )
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise AccountError(f"Bad group grant {text!r}: no spaces or control characters.")
    if WILDCARD in text[:-1]:
        raise AccountError(f"Bad group grant {text!r}: * may only end a grant (site-*).")
    return text


def grant_matches(grant: str, group: str) -> bool:
    """Whether ``grant`` (a name or a ``prefix*``) covers ``group``."""
    if grant.endswith(WILDCARD):
        return group.startswith(grant[:-1])
    return grant == group


def grants_overlap(a: str, b: str) -> bool:
    """Whether some group is covered by both ``a`` and ``b``."""
    a_prefix, b_prefix = a.endswith(WILDCARD), b.endswith(WILDCARD)
    if a_prefix and b_prefix:
        return a.startswith(b[:-1]) or b.startswith(a[:-1])
    if a_prefix:
        return grant_matches(a, b)
    if b_prefix:
        return grant_matches(b, a)
    return a == b
