"""What a case calls: its seeded inputs and the zero-argument callable the harness times.

workload (a case parameter) x mode:
  attention  attend(qk, v, cfg): forward under torch.no_grad(); forward_backward = attend() then
             out.backward(grad_out) with a fixed random grad_out. inputs: by name from
             harness.inputs (randn; clustered: peaked attention, as in trained layers). replay_buckets: the
             buckets are hashed once here and passed to every call (attention alone, hashing excluded).
  layer      impls.layer.build_layer (projections, attention, output projection) on x of shape
             (batch, seq, heads * d_head): forward, or forward_backward with a random grad_out.
  model      impls.model.build_model from the case's [model] table (LSH settings and causal from the
             case, max_seq_len = seq_len unless set) on random tokens: forward (logits, no grad),
             forward_backward (loss.backward(), no optimizer), train_step (one AdamW step).
`input_bytes` is what lives before a call (inputs and grad_out; or tokens, parameters, gradients
freed, optimizer state): mem_peak_bytes = input_bytes + the peak increment around one call.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch

from ..inputs import get_inputs
from ..suite import Case


class Workload(Protocol):
    """What the measurements (harness.measure.stages) call: a zero-argument call, the bytes that live
    before it, a reset that frees gradients, and the gradients of the last call."""

    @property
    def input_bytes(self) -> int | None:
        ...

    @property
    def hashes_in_call(self) -> bool:
        ...

    def __call__(self) -> Any:
        ...

    def reset(self) -> None:
        ...

    def gradients(self) -> list:
        ...


class CaseWorkload:
    #: Whether a call hashes (False where the buckets were hashed once before timing): the analytic
    #: FLOP count leaves hashing out where it is False.
    hashes_in_call = True

    """A case's workload: its device, dtype, LSH configuration and seeded generator."""

    def __init__(self, case: Case, backend_name: str | None = None) -> None:
        from impls import LSHConfig

        self.case = case
        self.backend_name = backend_name or case.backend
        self.device = torch.device(case.device)
        self.dtype = getattr(torch, case.dtype)
        self.cfg = LSHConfig(n_buckets=case.n_buckets or 2, n_hashes=case.n_hashes or 1,
                             chunk_len=case.chunk_len, causal=case.causal, dedup=bool(case.dedup), seed=case.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(case.seed)
        self.input_bytes: int | None = None

    def randn(self, *shape: int, grad: bool = False) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype).requires_grad_(grad)

    def __call__(self):
        raise NotImplementedError

    def reset(self) -> None:
        """Free gradients, so that what lives before a measured call is input_bytes exactly."""

    def gradients(self) -> list:
        return []


class AttentionWorkload(CaseWorkload):
    def __init__(self, case: Case, backend_name: str | None = None) -> None:
        import impls

        super().__init__(case, backend_name)
        self.backend = impls.get_backend(self.backend_name)
        grad = case.mode == "forward_backward"
        shape = (case.batch, case.heads, case.seq_len, case.d_head)
        make = get_inputs(case.inputs or "randn")
        qk, v = make(shape, seed=case.seed, dtype=self.dtype, device=self.device, generator=self.generator)
        self.qk, self.v = qk.requires_grad_(grad), v.requires_grad_(grad)
        self.grad_out = self.randn(*shape) if grad else None
        self.buckets = None
        if case.replay_buckets:
            from impls.lsh import hash_buckets

            self.buckets = hash_buckets(self.qk, self.cfg)
            self.hashes_in_call = False
        self.input_bytes = sum(t.numel() * t.element_size() for t in (self.qk, self.v, self.grad_out, self.buckets)
                               if t is not None)

    def attend(self, qk, v):
        if self.buckets is not None:
            return self.backend.attend(qk, v, self.cfg, buckets=self.buckets)
        return self.backend.attend(qk, v, self.cfg)

    def __call__(self):
        if self.case.mode == "forward":
            with torch.no_grad():
                return self.attend(self.qk, self.v)
        self.reset()
        out = self.attend(self.qk, self.v)
        out.backward(self.grad_out)
        return out.detach()

    def reset(self) -> None:
        if self.case.mode == "forward_backward":
            self.qk.grad = self.v.grad = None

    def gradients(self) -> list:
        return [self.qk.grad, self.v.grad] if self.case.mode == "forward_backward" else []


class LayerWorkload(CaseWorkload):
    def __init__(self, case: Case, backend_name: str | None = None) -> None:
        from impls.layer import build_layer

        super().__init__(case, backend_name)
        torch.manual_seed(case.seed)  # the layer's weights
        self.layer = build_layer(self.backend_name, case.heads, case.d_head, self.cfg, case.seq_len)
        self.layer.to(device=self.device, dtype=self.dtype)
        grad = case.mode == "forward_backward"
        width = case.heads * case.d_head
        self.x = self.randn(case.batch, case.seq_len, width, grad=grad)
        self.grad_out = self.randn(case.batch, case.seq_len, width) if grad else None
        tensors = [self.x, *self.layer.parameters()] + ([self.grad_out] if self.grad_out is not None else [])
        self.input_bytes = sum(t.numel() * t.element_size() for t in tensors)

    def __call__(self):
        if self.case.mode == "forward":
            with torch.no_grad():
                return self.layer(self.x)
        self.reset()
        out = self.layer(self.x)
        out.backward(self.grad_out)
        return out.detach()

    def reset(self) -> None:
        self.x.grad = None
        self.layer.zero_grad(set_to_none=True)

    def gradients(self) -> list:
        if self.case.mode != "forward_backward":
            return []
        return [self.x.grad] + [p.grad for p in self.layer.parameters()]


class ModelWorkload(CaseWorkload):
    def __init__(self, case: Case, backend_name: str | None = None) -> None:
        from impls.model import ModelConfig, build_model

        super().__init__(case, backend_name)
        model_table = case.model or {}
        fields = {k: v for k, v in model_table.items() if k != "reversible"}
        fields.setdefault("max_seq_len", case.seq_len)
        fields["causal"] = case.causal
        if isinstance(fields.get("axial_shape"), list):
            fields["axial_shape"] = tuple(fields["axial_shape"])
        if case.n_hashes is not None:
            fields.update(n_hashes=case.n_hashes, chunk_len=case.chunk_len, n_buckets=case.n_buckets,
                          dedup=bool(case.dedup))
        self.config = ModelConfig(**fields)
        torch.manual_seed(case.seed)  # the model's weights
        self.model = build_model(self.backend_name, self.config, model_table.get("reversible"))
        self.model.to(device=self.device, dtype=self.dtype)
        self.optimizer = (torch.optim.AdamW(self.model.parameters(), lr=1e-4) if case.mode == "train_step"
                          else None)
        self.tokens = torch.randint(0, self.config.vocab, (case.batch, case.seq_len), generator=self.generator,
                                    device=self.device)
        self.reset()

    def __call__(self):
        if self.case.mode == "forward":
            with torch.no_grad():
                return self.model(self.tokens)
        self.model.zero_grad(set_to_none=True)
        loss = self.model.loss(self.tokens)
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
        return loss.detach()

    def reset(self) -> None:
        # The optimizer state exists after the first step: counted from then on, as it lives then.
        self.model.zero_grad(set_to_none=True)
        tensors = [*self.model.parameters(), self.tokens]
        if self.optimizer is not None:
            tensors += [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        self.input_bytes = sum(t.numel() * t.element_size() for t in tensors)

    def gradients(self) -> list:
        return [p.grad for p in self.model.parameters()] if self.case.mode != "forward" else []


WORKLOADS: dict[str, type[CaseWorkload]] = {"attention": AttentionWorkload, "layer": LayerWorkload,
                                             "model": ModelWorkload}


def build_workload(case: Case, backend_name: str | None = None) -> CaseWorkload:
    """The case's workload, on its own backend or (for FLOP counting) on backend_name."""
    return WORKLOADS[case.workload](case, backend_name)
