"""impls.registry: a backend's optional capabilities are declared at registration and checked when it is
built; the harness reads the declaration, never probes the instance."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import impls
from impls.registry import CAPABILITIES, CAPABILITY_METHODS, backend_info, register_backend

REPO = Path(__file__).resolve().parents[1]


class _Plain:
    def available(self):
        return True, ""

    def attend(self, qk, v, cfg):
        return v


def test_built_in_backends_declare_what_their_instances_offer():
    assert backend_info("compiled").capabilities == {"replay_buckets", "compile_stats", "dynamo"}
    assert backend_info("eager").offers("replay_buckets") and not backend_info("dense").offers("replay_buckets")
    assert backend_info("reformer_pytorch").capabilities == {"score_scale", "effective_n_buckets"}
    for name in ("eager", "compiled", "dense", "sdpa"):
        backend = impls.get_backend(name)
        for capability in backend_info(name).capabilities:
            methods = CAPABILITY_METHODS.get(capability, ())
            assert all(callable(getattr(backend, m)) for m in methods), (name, capability)


@pytest.fixture
def registry(monkeypatch):
    """The registry as it was before the test (its registrations do not reach other tests)."""
    from impls import registry as module

    for table in ("_INFO", "_FACTORIES", "_INSTANCES"):
        monkeypatch.setattr(module, table, dict(getattr(module, table)))


def test_an_unknown_capability_is_refused_at_registration(registry):
    with pytest.raises(ValueError, match="capabilities must be names of"):
        register_backend("declares_nonsense", _Plain, kind="dense", capabilities={"teleport"})
    with pytest.raises(ValueError, match="unknown capability 'teleport'"):
        backend_info("dense").offers("teleport")


def test_a_declared_capability_without_its_method_is_an_unavailable_backend(registry):
    register_backend("claims_compile_stats", _Plain, kind="lsh", capabilities={"compile_stats"})
    ok, reason = impls.backend_availability("claims_compile_stats")
    assert not ok and "has no compile_stats, reset_compile_stats()" in reason


def test_no_harness_module_probes_a_backend_for_a_capability():
    methods = {m for names in CAPABILITY_METHODS.values() for m in names} | set(CAPABILITIES)
    for path in (REPO / "harness").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr"):
                probed = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
                assert not set(probed) & methods, f"{path.relative_to(REPO)}:{node.lineno} probes {probed}"
