"""The backend protocol and the registry: names -> factories, plus what the harness must know about
each backend without building it (BackendInfo)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import torch

from .config import LSHConfig

KINDS = ("lsh", "dense", "peer")
DEVICE_TYPES = ("cpu", "cuda")

# What a backend may offer beyond available() and attend(), declared at registration (BackendInfo.capabilities)
# so that the harness reads the declaration instead of probing the instance.
CAPABILITIES: Mapping[str, str] = MappingProxyType({
    "replay_buckets": "attend(qk, v, cfg, buckets=...) attends with precomputed impls.lsh.hash_buckets(qk, cfg)",
    "compile_stats": "compile_stats() and reset_compile_stats(): compilations and fallbacks since the last reset",
    "dynamo": "runs under torch dynamo (torch.compile): a TorchDispatchMode memory tracker cannot see its calls",
    "score_scale": "score_scale(d_head): the factor its scores carry beyond ours (fidelity's reference scales by it)",
    "effective_n_buckets": "effective_n_buckets(cfg, seq_len): the bucket count it really hashes into",
})
# The methods an instance must have for each capability that is a method of its own.
CAPABILITY_METHODS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "compile_stats": ("compile_stats", "reset_compile_stats"),
    "score_scale": ("score_scale",),
    "effective_n_buckets": ("effective_n_buckets",),
})


@runtime_checkable
class AttentionBackend(Protocol):
    """What every backend offers. attend() computes the contract of docs/DESIGN.md."""

    def available(self) -> tuple[bool, str]:
        ...

    def attend(self, qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig) -> torch.Tensor:
        """A backend declaring the "replay_buckets" capability also accepts `buckets=` (precomputed
        impls.lsh.hash_buckets(qk, cfg))."""
        ...


@dataclass(frozen=True)
class BackendInfo:
    """Registration metadata, read without importing or instantiating the backend.

    kind: "lsh" (hashes: eager, compiled, triton), "dense" (full attention) or "peer" (a public
        implementation behind our interface).
    devices: device types it runs on.
    cpu_interpreter_env: environment under which it runs on the CPU interpreted, not compiled (the
        Triton interpreter); the worker sets it before any import, and rows say `interpreted`.
    compiles: its first call compiles (torch.compile, Triton JIT): compile time is a figure of its own.
    capabilities: what it offers beyond attend(), names of CAPABILITIES (its instance is checked for the
        methods they name when it is built).
    flops_via: the backend whose eager path FlopCounterMode counts for this one (kernels it cannot
        see into count through the same algorithm in plain PyTorch); None: itself.
    reference: the exact attention that fidelity is measured against (one backend).
    package: the distribution a peer wraps (its version goes into rows).
    requires: the distributions it needs beyond torch (their versions go into every run's environment).
    layer: builds this backend's attention layer with projections (impls.layer); None: the
        standard AttentionLayer around attend().
    model: builds this backend's language model (impls.model); None: ReformerLM for "lsh" kinds,
        TransformerLM for "dense".
    conventions: for a full attention, which function it computes: unit_keys (keys normalised to unit
        length), masks_self (a position's own key masked), scaled (scores / sqrt(d)).
    """

    name: str
    kind: str
    devices: tuple[str, ...] = DEVICE_TYPES
    cpu_interpreter_env: Mapping[str, str] = field(default_factory=dict)
    compiles: bool = False
    capabilities: frozenset[str] = frozenset()
    flops_via: str | None = None
    reference: bool = False
    package: str | None = None
    requires: tuple[str, ...] = ()
    layer: Callable | None = None
    model: Callable | None = None
    description: str = ""
    conventions: Mapping[str, bool] = field(default_factory=dict)

    def runs_on(self, device: str) -> bool:
        return str(device).split(":")[0] in self.devices

    def offers(self, capability: str) -> bool:
        """Whether it declared `capability` (a name of CAPABILITIES)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}")
        return capability in self.capabilities


_INFO: dict[str, BackendInfo] = {}
_FACTORIES: dict[str, Callable[[], AttentionBackend]] = {}
_INSTANCES: dict[str, AttentionBackend] = {}


def register_backend(name: str, factory: Callable[[], AttentionBackend], *, kind: str,
                     devices: tuple[str, ...] = DEVICE_TYPES, cpu_interpreter_env: Mapping[str, str] | None = None,
                     compiles: bool = False, capabilities: Iterable[str] = (), flops_via: str | None = None,
                     reference: bool = False,
                     package: str | None = None, requires: tuple[str, ...] = (), layer: Callable | None = None,
                     model: Callable | None = None, description: str = "",
                     conventions: Mapping[str, bool] | None = None) -> BackendInfo:
    """Register `factory` (called once, on first use) under `name` with its metadata (BackendInfo).

    A second registration of a name replaces the first (a suite plugin may override a backend)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"backend name must be an identifier, got name={name!r}")
    if kind not in KINDS:
        raise ValueError(f"backend {name!r}: kind must be one of {', '.join(KINDS)}, got kind={kind!r}")
    unknown = [d for d in devices if d not in DEVICE_TYPES]
    if not devices or unknown:
        raise ValueError(f"backend {name!r}: devices must be a non-empty subset of {DEVICE_TYPES}, got {devices!r}")
    declared = frozenset(() if isinstance(capabilities, str) else capabilities)
    if isinstance(capabilities, str) or not declared <= CAPABILITIES.keys():
        raise ValueError(f"backend {name!r}: capabilities must be names of {', '.join(CAPABILITIES)}, "
                         f"got capabilities={capabilities!r}")
    info = BackendInfo(name=name, kind=kind, devices=tuple(devices),
                       cpu_interpreter_env=MappingProxyType(dict(cpu_interpreter_env or {})),
                       compiles=compiles, capabilities=declared,
                       flops_via=flops_via, reference=reference, package=package,
                       requires=tuple(requires) or ((package,) if package else ()), layer=layer, model=model,
                       description=description, conventions=MappingProxyType(dict(conventions or {})))
    _INFO[name] = info
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)
    return info


def list_backends(kind: str | None = None) -> list[str]:
    """Registered names (of one kind, if given), in registration order."""
    return [name for name, info in _INFO.items() if kind is None or info.kind == kind]


def backend_info(name: str) -> BackendInfo:
    if name not in _INFO:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(_INFO)}")
    return _INFO[name]


def reference_backend() -> str:
    """The name of the exact attention every fidelity figure is measured against."""
    names = [name for name, info in _INFO.items() if info.reference]
    if len(names) != 1:
        raise ValueError(f"exactly one backend must be registered with reference=True, got {names}")
    return names[0]


def get_backend(name: str) -> AttentionBackend:
    """The backend's single instance (built on first use: this imports its module)."""
    info = backend_info(name)
    if name not in _INSTANCES:
        backend = _FACTORIES[name]()
        missing = [method for capability in sorted(info.capabilities)
                   for method in CAPABILITY_METHODS.get(capability, ()) if not callable(getattr(backend, method, None))]
        if missing:
            raise TypeError(f"backend {name!r} declares capabilities {sorted(info.capabilities)} but has no "
                            f"{', '.join(missing)}()")
        _INSTANCES[name] = backend
    return _INSTANCES[name]


def backend_availability(name: str) -> tuple[bool, str]:
    """(ok, reason) of a backend here, failures to import or build it included; never raises."""
    try:
        backend = get_backend(name)
    except Exception as exc:  # reported, not raised: `list` shows every backend
        return False, f"import failed: {type(exc).__name__}: {exc}"
    try:
        return backend.available()
    except Exception as exc:  # as above
        return False, f"available() raised {type(exc).__name__}: {exc}"
