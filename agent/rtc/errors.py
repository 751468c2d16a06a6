"""Errors of calls.

    EdgeAgentError                      (agent.errors)
     ├── RealtimeError                  code + message, as the reference API's
     │    ├── DeviceNotFoundError       DEVICE_NOT_FOUND (agent.errors)
     │    └── CallEndedError            CALL_ENDED: the call ended before it was up
     └── StackLoadError                 the media stack could not be loaded (``need``)

A call that is refused, hung up or fails before pickup ends its ``connection`` with
:class:`CallEndedError`; ``reason`` says which.
"""

from __future__ import annotations

from typing import Final

from agent.errors import EdgeAgentError, RealtimeError

__all__ = ["CALL_ENDED", "CallEndedError", "StackLoadError"]

CALL_ENDED: Final = "CALL_ENDED"


class CallEndedError(RealtimeError):
    """The call ended before it was picked up (refused, hung up or failed)."""

    def __init__(self, cid: str, reason: str) -> None:
        super().__init__(CALL_ENDED, f"The call with {cid} ended: {reason}.")
        self.cid = cid
        self.reason = reason


class StackLoadError(EdgeAgentError):
    """aiortc, PyAV or the camera pipeline could not be loaded when ``need`` asked for them
    (:mod:`agent.rtc.standby`); the cause is chained."""

    def __init__(self, need: str, cause: BaseException) -> None:
        super().__init__(f"the media stack could not be loaded for {need}: {cause}")
        self.need = need
