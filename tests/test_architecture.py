"""The architecture of docs/DESIGN.md, read from the source with ast: harness/ has no import cycle, impls never
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


# The layers of harness/, bottom to top (docs/DESIGN.md, "Layers"): a module imports only from its own layer
# or below, at module level or inside a function. Keyed by the top-level module or package under
# harness/; a new one must be placed here (test_every_harness_module_has_a_layer).
LAYERS: dict[str, int] = {
    "harness": 0, "errors": 0, "env": 0, "plugins": 0, "units": 0,  # errors, machine facts, plugin import, sizes
    # Registries that import nothing else of harness (their entries are torch / impls code): tasks,
    # attention inputs, corpora. Below suite, which validates a case against them.
    "tasks": 0, "inputs": 0, "corpora": 0,
    "suite": 1,  # cases and their parameters
    "measure": 2,  # the metric table, measurements, workloads
    "results": 3,  # rows
    "run": 4,  # runner, launchers, workers
    "views": 5, "report": 5, "gate": 5,
    "cli": 6, "pytest_plugin": 6,
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1] if len(parts) > 1 else parts[0])


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            if target.startswith("harness."):
                low, high = _layer(module), _layer(target)
                if low is not None and high is not None and high > low:
                    found.append(f"{module} (layer {low}) imports {target} (layer {high})")
    return found


def test_every_harness_module_has_a_layer():
    unplaced = sorted({name for name in _graph("harness") if _layer(name) is None})
    assert not unplaced, f"place these in LAYERS of tests/test_architecture.py: {unplaced}"


def test_no_import_runs_up_the_layers():
    upward = _upward_imports(_graph("harness"))
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_an_upward_import():
    graph = {"harness.measure.stages": {"harness.run.worker", "harness.suite.case"}, "harness.cli": {"harness.env"}}
    assert _upward_imports(graph) == ["harness.measure.stages (layer 2) imports harness.run.worker (layer 4)"]
    assert _layer("harness.somewhere_new") is None
