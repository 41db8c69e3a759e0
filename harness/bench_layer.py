"""One Reformer attention layer, forward + backward on this machine: ours against the public ones.

    python -m harness.bench_layer                       # 16,384 and 65,536 tokens, every impl found
    python -m harness.bench_layer --seq 16384 --impl eager --impl reformer_pytorch
    python -m harness.bench_layer --impl eager --n-buckets 64   # hashing cost independent of seq

Layer (the core issue's configuration): x (1, seq, 256) -> shared qk and v projections (256 -> 4 heads
x 64) -> LSH attention (chunk_len 64, n_buckets = seq / 64, 4 hash rounds, non-causal) -> output
projection; loss = sum of outputs; one step = forward + backward. reformer-pytorch's LSHSelfAttention
(bucket_size 64, n_hashes 4) hashes into seq / 64 buckets and attends in chunks of 64 (own and
previous), so n_buckets = seq / 64, chunk_len = 64 is the cost-matched setting.

Each (impl, seq) runs in its own process, so its peak RSS (ru_maxrss, which includes the ~0.3 GB of
the interpreter and torch) is its own. Time: one warm-up step, then the median of --repeats steps.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

D_MODEL, HEADS, D_HEAD, CHUNK_LEN, N_HASHES = 256, 4, 64, 64, 4

# Measured on this 2-core CPU by the issue's author, same configuration (seconds, GB peak RSS).
ISSUE_REFERENCE = {
    ("reformer_pytorch", 16384): (4.3, 1.44), ("reformer_pytorch", 65536): (27.6, 8.8),
    ("transformers", 16384): (4.8, 1.65), ("transformers", 65536): (37.9, 17.1),
    ("sdpa", 16384): (10.4, 0.48),
}


class OurAttentionLayer(torch.nn.Module):
    def __init__(self, backend: str, seq_len: int, n_buckets: int | None = None):
        super().__init__()
        from impls import LSHConfig, get_backend
        self.to_qk = torch.nn.Linear(D_MODEL, HEADS * D_HEAD, bias=False)
        self.to_v = torch.nn.Linear(D_MODEL, HEADS * D_HEAD, bias=False)
        self.to_out = torch.nn.Linear(HEADS * D_HEAD, D_MODEL)
        self.backend = get_backend(backend)
        self.cfg = LSHConfig(n_buckets=n_buckets or max(2, seq_len // CHUNK_LEN), n_hashes=N_HASHES,
                             chunk_len=CHUNK_LEN)

    def forward(self, x):
        b, n, _ = x.shape
        qk = self.to_qk(x).view(b, n, HEADS, D_HEAD).transpose(1, 2)
        v = self.to_v(x).view(b, n, HEADS, D_HEAD).transpose(1, 2)
        out = self.backend.attend(qk, v, self.cfg)
        return self.to_out(out.transpose(1, 2).reshape(b, n, HEADS * D_HEAD))


def build_layer(impl: str, seq_len: int, n_buckets: int | None = None) -> torch.nn.Module:
    if impl in ("eager", "compiled", "dense", "sdpa", "triton"):
        return OurAttentionLayer(impl, seq_len, n_buckets)
    if n_buckets is not None:
        raise ValueError(f"--n-buckets applies to our backends only, not impl={impl!r} (peers are cost-matched)")
    if impl == "reformer_pytorch":
        from reformer_pytorch import LSHSelfAttention
        return LSHSelfAttention(dim=D_MODEL, heads=HEADS, dim_head=D_HEAD, bucket_size=CHUNK_LEN,
                                n_hashes=N_HASHES, causal=False)
    if impl == "transformers":
        from transformers import ReformerConfig
        from transformers.models.reformer.modeling_reformer import LSHSelfAttention
        config = ReformerConfig(hidden_size=D_MODEL, num_attention_heads=HEADS, attention_head_size=D_HEAD,
                                lsh_attn_chunk_length=CHUNK_LEN, num_hashes=N_HASHES,
                                num_buckets=max(2, seq_len // CHUNK_LEN), lsh_num_chunks_before=1,
                                lsh_num_chunks_after=0, is_decoder=False, max_position_embeddings=seq_len,
                                attn_layers=["lsh"])
        module = LSHSelfAttention(config)
        return _FirstOutput(module)
    raise ValueError(f"unknown impl {impl!r}")


class _FirstOutput(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x).hidden_states


def measure_one(impl: str, seq_len: int, repeats: int, n_buckets: int | None = None) -> dict:
    torch.manual_seed(0)
    layer = build_layer(impl, seq_len, n_buckets)
    x = torch.randn(1, seq_len, D_MODEL, requires_grad=True)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"impl": impl, "seq_len": seq_len, "median_s": statistics.median(times), "times_s": times,
            "first_s": first, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, action="append", help="sequence length (repeatable)")
    parser.add_argument("--impl", action="append",
                        help="eager | compiled | dense | sdpa | reformer_pytorch | transformers (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-buckets", type=int, default=None,
                        help="fixed bucket count for our backends (default seq / 64, as the peers use)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seqs = args.seq or [16384, 65536]
    impls = args.impl or ["eager", "reformer_pytorch", "transformers"]
    if args.worker:
        print(json.dumps(measure_one(impls[0], seqs[0], args.repeats, args.n_buckets)))
        return 0
    print(f"{'impl':<18}{'seq':>8}{'median s':>10}{'first s':>9}{'peak RSS GB':>13}   source")
    for seq_len in seqs:
        for impl in impls:
            cmd = [sys.executable, "-m", "harness.bench_layer", "--worker", "--impl", impl,
                   "--seq", str(seq_len), "--repeats", str(args.repeats)]
            if args.n_buckets is not None:
                cmd += ["--n-buckets", str(args.n_buckets)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{impl:<18}{seq_len:>8}{row['median_s']:>10.2f}{row['first_s']:>9.2f}"
                      f"{row['peak_rss_gb']:>13.2f}   measured now ({row['threads']} threads)", flush=True)
            else:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                reference = ISSUE_REFERENCE.get((impl, seq_len))
                ref = f"; issue's reference: {reference[0]} s, {reference[1]} GB" if reference else ""
                print(f"{impl:<18}{seq_len:>8}{'-':>10}{'-':>9}{'-':>13}   not run: {last[:80]}{ref}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
