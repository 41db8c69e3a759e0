"""pytest-benchmark: one attention layer's forward + backward at CI sizes, per backend.

Run with `pytest --benchmark` (plain `pytest` deselects these). Each benchmark's extra_info holds
mem_peak_bytes (exact tensor bytes on CPU, CUDA allocator peak on GPU; inputs included),
mem_method, flops (the analytic count of harness.measure.flops, forward + backward), flops_counted
(FlopCounterMode) and device, measured in untimed calls.
The timed call synchronises the GPU, so the wall-clock timer sees finished work.
"""
from __future__ import annotations

import pytest
import torch

from harness.measure.flops import dense_attention_flops, lsh_attention_flops
from harness.pytest_plugin import measure_extra_info, synchronized
from impls import LSHConfig, backend_info, get_backend

BATCH, HEADS, D_HEAD, CHUNK_LEN = 1, 2, 64, 64
SEQ_LENS = (256, 1024)
LSH_CASES = [("eager", seq_len, n_hashes) for seq_len in SEQ_LENS for n_hashes in (1, 4)]
# Dense baselines have no hash rounds: one case per length, n_hashes recorded as None.
DENSE_CASES = [(backend, seq_len, None) for backend in ("dense", "sdpa") for seq_len in SEQ_LENS]


def make_inputs(seq_len: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded (qk, v, grad_out), each (BATCH, HEADS, seq_len, D_HEAD) float32."""
    gen = torch.Generator().manual_seed(seq_len)
    shape = (BATCH, HEADS, seq_len, D_HEAD)
    qk, v, grad_out = (torch.randn(shape, generator=gen).to(device) for _ in range(3))
    return qk.requires_grad_(), v.requires_grad_(), grad_out


@pytest.mark.parametrize(("backend", "seq_len", "n_hashes"), LSH_CASES + DENSE_CASES,
                         ids=lambda value: str(value))
def test_attention_forward_backward(benchmark, bench_device, backend, seq_len, n_hashes):
    attention = get_backend(backend)
    ok, reason = attention.available()
    if not ok:
        pytest.skip(f"{backend} unavailable: {reason}")
    cfg = LSHConfig(n_buckets=2 * seq_len // CHUNK_LEN, n_hashes=n_hashes or 1, chunk_len=CHUNK_LEN, seed=0)

    def forward_backward(qk, v, grad_out):
        out = attention.attend(qk, v, cfg)
        return torch.autograd.grad(out, (qk, v), grad_out)

    benchmark.group = f"attention fwd+bwd seq_len={seq_len}"
    if backend_info(backend).kind == "dense":
        flops = dense_attention_flops(BATCH, HEADS, seq_len, D_HEAD, backward=True)
    else:
        flops = lsh_attention_flops(BATCH, HEADS, seq_len, D_HEAD, cfg.n_buckets, cfg.n_hashes, CHUNK_LEN,
                                    backward=True)
    benchmark.extra_info.update(backend=backend, seq_len=seq_len, n_hashes=n_hashes, batch=BATCH,
                                heads=HEADS, d_head=D_HEAD, chunk_len=CHUNK_LEN, flops=flops)
    benchmark.extra_info.update(
        measure_extra_info(lambda: forward_backward(*make_inputs(seq_len, bench_device)), bench_device))
    inputs = make_inputs(seq_len, bench_device)
    step = synchronized(lambda: forward_backward(*inputs), bench_device)
    step()  # warm-up: first-call allocations and kernel selection stay out of the timing
    benchmark(step)
