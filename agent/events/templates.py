"""Alert templates: ``str.format_map`` over a safe mapping, with names checked when rules load.

A template names values of the event in braces: ``"{device}: {temp:.1f} °C at {time}"``.
Only plain names are accepted (no positions, attribute access or indexing), so a template in
a settings file can never reach into Python objects (``{x.__class__}``). At run time a name the
event lacks renders as ``?`` and a format spec that does not fit the value falls back to the
plain value: a reading that arrived without one field must not stop the alert.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MISSING", "render", "template_names"]

MISSING: Final = "?"
_CONVERSIONS: Final = (None, "r", "s", "a")
_FORMATTER: Final = string.Formatter()


def template_names(template: str) -> tuple[str, ...]:
    """The names ``template`` uses, in order; ``ValueError`` naming what is not accepted."""
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(f"template {template!r} is not valid: {exc}") from None
    names: list[str] = []
    for _text, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(
                f"template {template!r}: {{{name}}} is not a plain name; use names such as "
                "{device} or {time} (no positions, attributes or indexes)"
            )
        if conversion not in _CONVERSIONS or "{" in (spec or ""):
            raise ValueError(f"template {template!r}: the format of {{{name}}} is not accepted")
        names.append(name)
    return tuple(names)


def render(template: str, context: Mapping[str, Any]) -> str:
    """``template`` filled from ``context``; never raises for a checked template."""
    template_names(template)  # refuse unchecked syntax here too, whatever the caller did
    return template.format_map(_SafeContext(context))


class _Value:
    """A context value whose formatting cannot fail."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __format__(self, spec: str) -> str:
        try:
            return format(self.value, spec)
        except (ValueError, TypeError):
            return str(self.value)

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return repr(self.value)


class _SafeContext(dict[str, _Value]):
    """Context for ``format_map``: every value wrapped, a missing name shown as ``?``."""

    def __init__(self, context: Mapping[str, Any]) -> None:
        super().__init__((key, _Value(value)) for key, value in context.items())

    def __missing__(self, key: str) -> _Value:
        return _Value(MISSING)
