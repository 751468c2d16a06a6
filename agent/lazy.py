"""Lazy package exports: a package names what it offers without importing it.

A package ``__init__`` that re-exported its modules would load all of them (aiortc, PyAV,
websockets, aiohttp...) for whoever needs one light name; the idle agent must not pay that.
Instead it lists where each name lives and lets :func:`lazy_exports` import the home module
on first access (PEP 562 module ``__getattr__``)::

    __getattr__ = lazy_exports(__name__, {"RealtimeClient": "agent.client.realtime"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``homes[name]`` and returns its
    ``name``; any other name is an ``AttributeError`` naming the package."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(home), name)

    return __getattr__
