"""The self-hostable realtime hub: WebSocket routing, groups, accounts, tokens, HTTP API.

server      HubServer (in-process start/stop) and run_hub (the command)
app         the ASGI application: JSON API, OpenAPI, viewer files
realtime    the /ws endpoint: authentication, frames in, dispatch
connection  one connection's outbound queue, writer and limits
backplane   presence and routing (memory now; Redis for a cluster of nodes)
listing     getRealtimeGroups / getRealtimeUsers semantics (pure)
limits      token bucket, error window, close codes (pure)
metrics     counters and the Prometheus text format (pure)
accounts    SQLite accounts with scrypt password hashes
tokens      HS256 JWTs signed with a secret in the state directory
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.hub.server import HubServer, run_hub

__all__ = ["HubServer", "run_hub"]


def __getattr__(name: str) -> Any:
    # uvicorn and FastAPI load only when a hub is actually served, not for accounts/tokens.
    if name in __all__:
        from agent.hub import server

        return getattr(server, name)
    raise AttributeError(f"module 'agent.hub' has no attribute {name!r}")
