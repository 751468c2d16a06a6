"""Pure tests of alert templates: accepted names, refused syntax, safe rendering."""

from __future__ import annotations

import pytest

from agent.events.templates import MISSING, render, template_names


def test_names_in_order() -> None:
    assert template_names("{device}: {temp:.1f} at {time!s} {{literal}}") == (
        "device",
        "temp",
        "time",
    )
    assert template_names("no names") == ()


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{}", "is not a plain name"),
        ("{0}", "is not a plain name"),
        ("{device.__class__}", "is not a plain name"),
        ("{readings[env]}", "is not a plain name"),
        ("{value:{width}}", "the format of {value} is not accepted"),
        ("{value!x}", "the format of {value} is not accepted"),
        ("{device", "is not valid"),
        ("device}", "is not valid"),
    ],
)
def test_refused_syntax(template: str, words: str) -> None:
    with pytest.raises(ValueError, match="template") as info:
        template_names(template)
    assert words in str(info.value)


def test_render_fills_and_formats() -> None:
    context = {"device": "porch", "temp": 21.456, "n": 3}
    assert render("{device}: {temp:.1f} °C, {n:03d} {device!r} {n!s:>2}", context) == (
        "porch: 21.5 °C, 003 'porch'  3"
    )


def test_render_never_fails_on_values() -> None:
    # A missing value shows as "?", and a spec that does not fit falls back to the plain value.
    assert render("{temp:.1f} {gone} {gone:>5}", {"temp": "n/a"}) == f"n/a {MISSING} {MISSING:>5}"


def test_render_refuses_unchecked_syntax() -> None:
    with pytest.raises(ValueError, match="not a plain name"):
        render("{device.__class__}", {"device": "porch"})
