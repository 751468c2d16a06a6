"""edge-agent: a device agent for cameras and sensors, with its own realtime hub.

The realtime API of the reference, in Python names::

    from agent import RealtimeClient, RealtimeError
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.errors import RealtimeError

if TYPE_CHECKING:
    from agent.client import RealtimeClient

__all__ = ["RealtimeClient", "RealtimeError", "__version__"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The client pulls in websockets and the HTTP stack; importing the package for the pure
    # protocol or the hub should not pay for that.
    if name == "RealtimeClient":
        from agent.client import RealtimeClient

        return RealtimeClient
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
