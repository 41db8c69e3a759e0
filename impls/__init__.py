"""What reformer-bench measures: LSH attention backends, dense baselines and models.

impls never imports harness; harness reaches backends only through this registry.
"""
from .config import LSHConfig
from .registry import AttentionBackend, get_backend, list_backends, register_backend


def _register_builtin_backends() -> None:
    from .dense import DenseBackend, SdpaBackend
    from .eager import EagerBackend

    register_backend("eager", EagerBackend)
    register_backend("dense", DenseBackend)
    register_backend("sdpa", SdpaBackend)


_register_builtin_backends()

__all__ = ["LSHConfig", "AttentionBackend", "get_backend", "list_backends", "register_backend"]
