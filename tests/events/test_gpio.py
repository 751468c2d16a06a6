"""GPIO buttons through gpiozero's mock pins: a press fires the rule, once per cooldown."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from agent.errors import ConfigError
from agent.events import ActionHandlers, EventEngine, EventRule

TIMEOUT = 10.0


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    pins = MockFactory()
    yield pins
    pins.close()


def button_rule(pin: int | str = 17) -> EventRule:
    return EventRule.model_validate(
        {
            "name": "bell",
            "trigger": {"type": "button", "pin": pin, "bounce_seconds": None},
            "actions": [{"type": "post"}],
            "cooldown": 3600,
        }
    )


async def test_button_press_fires_once_per_cooldown(factory: MockFactory) -> None:
    posted: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def post(group: str, payload: dict[str, Any]) -> None:
        posted.put_nowait(payload)

    engine = EventEngine(
        [button_rule()],
        device="porch",
        groups=["family"],
        actions=ActionHandlers(post=post),
        pin_factory=factory,
    )
    async with engine:
        pin = factory.pin(17)
        for _ in range(3):
            pin.drive_low()  # pressed (pulled up: low is pressed)
            pin.drive_high()
        payload = await asyncio.wait_for(posted.get(), TIMEOUT)
        await engine.drain()
    assert payload["details"] == {"pin": 17}
    assert posted.empty()
    status = engine.status()["bell"]
    assert (status["fired"], status["cooldown"]) == (1, 2)


async def test_a_pin_that_cannot_be_used_is_a_config_error(factory: MockFactory) -> None:
    async def post(group: str, payload: dict[str, Any]) -> None:
        return None

    engine = EventEngine(
        [button_rule("NOPE99")],
        device="porch",
        groups=["family"],
        actions=ActionHandlers(post=post),
        pin_factory=factory,
    )
    with pytest.raises(ConfigError, match="GPIO pin 'NOPE99' cannot be used"):
        await engine.start()
