"""The architecture of DESIGN.md, read from the source with ast: harness/ has no import cycle, impls never
imports harness, and no harness module names a backend (it learns about backends from their registration)."""
from __future__ import annotations

import ast
from pathlib import Path

import impls

REPO = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module path.py imports, at module level or inside functions, relative imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            # `from . import x` / `from .pkg import mod`: x may be a module of its own
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph(root: str) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (REPO / root).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_harness_has_no_import_cycle():
    graph = _graph("harness")
    assert len(graph) > 20 and "harness.run.worker" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_impls_never_imports_harness():
    for path in (REPO / "impls").rglob("*.py"):
        assert not any(m == "harness" or m.startswith("harness.") for m in _imports(path)), path


def test_no_harness_module_names_a_backend():
    from impls.registry import KINDS

    names = set(impls.list_backends()) - set(KINDS)  # "dense" is a kind too, which harness code compares
    for path in (REPO / "harness").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"{path.relative_to(REPO)}:{node.lineno} names backend {node.value!r}"
