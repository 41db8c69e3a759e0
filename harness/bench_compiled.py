"""eager against compiled LSH attention: forward + backward at one size, steady state and compile time.

    python -m harness.bench_compiled                    # the core issue's layer config, 16,384 tokens
    python -m harness.bench_compiled --seq 4096 --n-buckets 64 --repeats 3    # a quick look

Case: qk, v of shape (1, heads 4, seq, d_head 64), LSHConfig(n_buckets, n_hashes 4, chunk_len 64);
one step = backend.attend(qk, v, cfg) (hashing included) then out.backward(grad).

    compile time  = t(first step) - median(warm steps)          [s]; never inside the median
    steady state  = median and IQR of --repeats steps after --warmup steps  [s]
    speedup       = median(eager) / median(compiled)

The first compiled step runs with an empty inductor cache (a fresh TORCHINDUCTOR_CACHE_DIR) unless
--warm-cache is given, so its compile time is a cold compile. The compiled backend's compile_stats()
after the timed steps gives the number of compilations and whether any block fell back to eager.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, no usage dump
        self.exit(2, f"bench_compiled: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = _OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=_positive_int, default=16384, help="tokens (default 16384)")
    p.add_argument("--heads", type=_positive_int, default=4)
    p.add_argument("--d-head", type=_positive_int, default=64)
    p.add_argument("--n-buckets", type=_positive_int, default=256)
    p.add_argument("--n-hashes", type=_positive_int, default=4)
    p.add_argument("--chunk-len", type=_positive_int, default=64)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--repeats", type=_positive_int, default=5, help="timed steps (median, IQR)")
    p.add_argument("--warmup", type=_positive_int, default=1, help="untimed steps after the first")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="intra-op threads (default: torch's); 1 is steadier on a busy machine")
    p.add_argument("--warm-cache", action="store_true", help="keep the user's inductor cache")
    return p.parse_args(argv)


def _timed_steps(backend, qk, v, grad, cfg, n_steps: int, sync) -> list[float]:
    times = []
    for _ in range(n_steps):
        qk.grad = v.grad = None
        sync()
        start = time.perf_counter()
        backend.attend(qk, v, cfg).backward(grad)
        sync()
        times.append(time.perf_counter() - start)
    return times


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return 0.0, 0.0
    q = statistics.quantiles(xs, n=4)
    return q[1], q[2] - q[0]


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.warm_cache:
        # Before torch is imported, so that inductor reads it: a cold compile, not a cache hit.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_compiled_inductor_")
    import torch

    from impls import LSHConfig, get_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        cfg = LSHConfig(n_buckets=args.n_buckets, n_hashes=args.n_hashes, chunk_len=args.chunk_len,
                        causal=args.causal)
        cfg.resolve_chunk_len(args.seq)
    except ValueError as exc:
        print(f"bench_compiled: error: {exc}", file=sys.stderr)
        return 2
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    shape = (1, args.heads, args.seq, args.d_head)
    qk = torch.randn(shape, generator=gen).to(device).requires_grad_()
    v = torch.randn(shape, generator=gen).to(device).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(device)
    print(f"case: qk, v {tuple(shape)} fp32 on {device} ({torch.get_num_threads()} threads), "
          f"n_buckets={cfg.n_buckets} n_hashes={cfg.n_hashes} chunk_len={cfg.chunk_len} "
          f"causal={cfg.causal}; step = attend + backward; torch {torch.__version__}")

    medians, outputs = {}, {}
    for name in ("eager", "compiled"):
        backend = get_backend(name)
        if name == "compiled":
            backend.reset_compile_stats()
        first = _timed_steps(backend, qk, v, grad, cfg, 1, sync)[0]
        _timed_steps(backend, qk, v, grad, cfg, args.warmup, sync)
        times = _timed_steps(backend, qk, v, grad, cfg, args.repeats, sync)
        median, iqr = _quartiles(times) if len(times) > 1 else (times[0], 0.0)
        medians[name] = median
        with torch.no_grad():
            outputs[name] = backend.attend(qk, v, cfg).float().cpu()
        line = (f"{name:>9}: step median {median:.3f} s  IQR {iqr:.3f} s  min {min(times):.3f} s  "
                f"({args.repeats} steps);  first step {first:.2f} s")
        if name == "compiled":
            stats = backend.compile_stats()
            line += (f";  compile time (first - median) {first - median:.2f} s;  "
                     f"compilations {stats['compilations']};  fell_back {stats['fell_back']}")
            if stats["fell_back"]:
                line += f" ({stats['reason']})"
        print(line, flush=True)
    max_diff = (outputs["compiled"] - outputs["eager"]).abs().max().item()
    print(f"  speedup (eager median / compiled median): {medians['eager'] / medians['compiled']:.2f}x;  "
          f"max |out_compiled - out_eager| = {max_diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
