"""GPIO buttons through gpiozero (optional): presses reach the events engine on its loop.

gpiozero calls ``when_pressed`` from its own thread; the press is handed to the event loop
with ``call_soon_threadsafe``. Rules with button triggers are refused when the settings load
if gpiozero is not installed (``ButtonTrigger``), so this module imports it only when used.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from agent.errors import ConfigError
from agent.events.settings import ButtonTrigger

__all__ = ["GpioButtons"]

log = logging.getLogger(__name__)


class GpioButtons:
    """One gpiozero ``Button`` per configured pin, calling ``on_press(pin)`` on the loop."""

    def __init__(
        self,
        triggers: Sequence[ButtonTrigger],
        on_press: Callable[[int | str], None],
        *,
        pin_factory: Any = None,
    ) -> None:
        # Several rules may share a button: one Button per pin, first settings win.
        self._triggers = {trigger.pin: trigger for trigger in reversed(triggers)}
        self._on_press = on_press
        self._pin_factory = pin_factory
        self._buttons: list[Any] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the pins; ``ConfigError`` naming the pin when one cannot be used."""
        try:
            # Through importlib: gpiozero ships no type information, and is optional.
            button_class: Any = importlib.import_module("gpiozero").Button
        except ImportError as exc:
            raise ConfigError(
                "GPIO button triggers need the gpiozero package", key="events"
            ) from exc
        for pin, trigger in self._triggers.items():
            try:
                button = button_class(
                    pin,
                    pull_up=trigger.pull_up,
                    bounce_time=trigger.bounce_seconds,
                    pin_factory=self._pin_factory,
                )
            except Exception as exc:  # gpiozero raises its own tree: bad pin, pin in use, ...
                self.close()
                raise ConfigError(f"GPIO pin {pin!r} cannot be used: {exc}", key="events") from exc
            button.when_pressed = self._relay(loop, pin)
            self._buttons.append(button)
            log.info("GPIO button on pin %r ready", pin)

    def close(self) -> None:
        """Release the pins."""
        buttons, self._buttons = self._buttons, []
        for button in buttons:
            with contextlib.suppress(Exception):
                button.close()

    def _relay(self, loop: asyncio.AbstractEventLoop, pin: int | str) -> Callable[[], None]:
        def pressed() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
                loop.call_soon_threadsafe(self._on_press, pin)

        return pressed
