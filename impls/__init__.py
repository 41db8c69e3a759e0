"""What reformer-bench measures: LSH attention backends, dense baselines and models.

impls never imports harness; harness reaches backends only through this registry, and reads what
it needs to know about one (impls.registry.BackendInfo) without building it.
"""
from .config import LSHConfig
from .registry import (
    AttentionBackend,
    BackendInfo,
    backend_availability,
    backend_info,
    get_backend,
    list_backends,
    reference_backend,
    register_backend,
)


def _register_builtin_backends() -> None:
    def eager():
        from .eager import EagerBackend

        return EagerBackend()

    def compiled():
        from .compiled import CompiledBackend  # imports torch._dynamo machinery: only when asked

        return CompiledBackend()

    def triton():
        from .triton_lsh import TritonBackend  # imports triton: only when asked

        return TritonBackend()

    def dense():
        from .dense import DenseBackend

        return DenseBackend()

    def sdpa():
        from .dense import SdpaBackend

        return SdpaBackend()

    register_backend("eager", eager, kind="lsh", capabilities={"replay_buckets"},
                     description="LSH attention in plain PyTorch (blocked, in place)")
    register_backend("compiled", compiled, kind="lsh", compiles=True, flops_via="eager",
                     capabilities={"replay_buckets", "compile_stats", "dynamo"},
                     description="eager's algorithm with the passes between matmuls compiled by torch.compile")
    register_backend("triton", triton, kind="lsh", devices=("cuda",), compiles=True, flops_via="eager",
                     capabilities={"replay_buckets"},
                     cpu_interpreter_env={"TRITON_INTERPRET": "1"}, requires=("triton",),
                     description="fused Triton kernels (on the CPU only under the Triton interpreter)")
    register_backend("dense", dense, kind="dense", reference=True,
                     conventions={"unit_keys": True, "masks_self": True, "scaled": False},
                     description="exact shared-QK attention, seq x seq scores: the reference LSH approximates")
    register_backend("sdpa", sdpa, kind="dense",
                     conventions={"unit_keys": False, "masks_self": False, "scaled": True},
                     description="torch scaled_dot_product_attention (flash / memory-efficient kernels)")

    from .peers import register_peers  # public implementations; their packages load only when asked

    register_peers(register_backend)


_register_builtin_backends()

__all__ = ["LSHConfig", "AttentionBackend", "BackendInfo", "backend_availability", "backend_info", "get_backend",
           "list_backends", "reference_backend", "register_backend"]
