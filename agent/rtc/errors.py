"""Errors of calls.

    EdgeAgentError                      (agent.errors)
     └── RealtimeError                  code + message, as the reference API's
          ├── DeviceNotFoundError       DEVICE_NOT_FOUND (agent.errors)
          └── CallEndedError            CALL_ENDED: the call ended before it was up

A call that is refused, hung up or fails before pickup ends its ``connection`` with
:class:`CallEndedError`; ``reason`` says which.
"""

from __future__ import annotations

from typing import Final

from agent.errors import RealtimeError

__all__ = ["CALL_ENDED", "CallEndedError"]

CALL_ENDED: Final = "CALL_ENDED"


class CallEndedError(RealtimeError):
    """The call ended before it was picked up (refused, hung up or failed)."""

    def __init__(self, cid: str, reason: str) -> None:
        super().__init__(CALL_ENDED, f"The call with {cid} ended: {reason}.")
        self.cid = cid
        self.reason = reason
