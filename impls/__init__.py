"""What reformer-bench measures: LSH attention backends, dense baselines and models.

impls never imports harness; harness reaches backends only through this registry.
"""
from .config import LSHConfig
from .registry import AttentionBackend, get_backend, list_backends, register_backend


def _register_builtin_backends() -> None:
    from .dense import DenseBackend, SdpaBackend
    from .eager import EagerBackend

    def compiled():
        from .compiled import CompiledBackend  # imports torch._dynamo machinery: only when asked

        return CompiledBackend()

    def triton():
        from .triton_lsh import TritonBackend  # imports triton: only when asked

        return TritonBackend()

    register_backend("eager", EagerBackend)
    register_backend("compiled", compiled)
    register_backend("triton", triton)
    register_backend("dense", DenseBackend)
    register_backend("sdpa", SdpaBackend)

    from .peers import register_peers  # public implementations; their packages load only when asked

    register_peers(register_backend)


_register_builtin_backends()

__all__ = ["LSHConfig", "AttentionBackend", "get_backend", "list_backends", "register_backend"]
