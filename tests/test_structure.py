"""The package's shape: imports point one way (no cycles), and one root for its errors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "agent"


def _modules() -> dict[str, Path]:
    found = {}
    for path in AGENT.rglob("*.py"):
        parts = list(path.relative_to(AGENT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every agent module ``module`` imports: at the top, in functions, or for typing."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = set()
    for imported in names:
        name = imported
        while name and name not in known:
            name = name.rpartition(".")[0]
        # Python imports a module's packages before it: that is no dependency of its own.
        if name and name != module and not module.startswith(name + "."):
            resolved.add(name)
    return resolved


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_back_into_one_that_imports_it() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_error_the_package_defines_has_the_one_root() -> None:
    # In a fresh interpreter: importing every module here would load what the idle tests
    # check stays unloaded.
    code = """
import importlib, inspect, pkgutil, agent
from agent.errors import EdgeAgentError
for info in pkgutil.walk_packages(agent.__path__, "agent."):
    module = importlib.import_module(info.name)
    for name, obj in vars(module).items():
        if (inspect.isclass(obj) and issubclass(obj, BaseException)
                and obj.__module__ == info.name and not name.startswith("_")
                and not issubclass(obj, EdgeAgentError)):
            print(f"{info.name}.{name}")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", f"errors outside agent.errors.EdgeAgentError:\n{done.stdout}"


def test_every_lazily_exported_name_resolves_to_its_home() -> None:
    # A stale entry (a name moved to another module) would fail only where it is used.
    code = """
import importlib
for package in ("rtc", "media", "sensors", "events", "push", "client"):
    module = importlib.import_module(f"agent.{package}")
    for name in module.__all__:
        getattr(module, name)
    try:
        module.no_such_name
    except AttributeError as exc:
        assert str(exc) == f"module 'agent.{package}' has no attribute 'no_such_name'", exc
    else:
        raise AssertionError(f"agent.{package}.no_such_name resolved")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
