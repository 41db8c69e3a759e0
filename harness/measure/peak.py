"""The machine's measured matmul throughput, the yardstick of achieved FLOP/s: measured once per run and
(device, dtype), in a worker-like process of its own, and stored in run.json.

    python -m harness.measure.peak DEVICE DTYPE [THREADS]   ->  one JSON object on stdout

FLOP/s = 2 * n^3 / t for square n x n matmuls: the best of REPEATS timed calls after WARMUP calls
(the best, not the median: a peak is what the hardware can do when nothing gets in its way), n = 2048
on the CPU and 8192 on CUDA (large enough to be compute-bound there).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

SIZES = {"cpu": 2048, "cuda": 8192}
WARMUP, REPEATS = 2, 5


def matmul_peak(device: str, dtype: str, threads: int | None = None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    n = SIZES.get(dev.type, SIZES["cpu"])
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=dev, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, generator=gen, device=dev, dtype=getattr(torch, dtype))
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    for _ in range(WARMUP):
        a @ b
    sync()
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return {"device": device, "dtype": dtype, "threads": torch.get_num_threads(), "flops_per_s": 2 * n ** 3 / best,
            "how": f"best of {REPEATS} {n}x{n} @ {n}x{n} {dtype} matmuls after {WARMUP} warm-ups: 2*n^3 / time"}


def measure_in_subprocess(device: str, dtype: str, threads: int | None, timeout_s: float = 120.0) -> dict:
    """matmul_peak in a fresh process (as a worker is); on failure a dict with the reason, never raises."""
    cmd = [sys.executable, "-m", "harness.measure.peak", device, dtype] + ([str(threads)] if threads else [])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode == 0:
            return json.loads(done.stdout.strip().splitlines()[-1])
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    return {"device": device, "dtype": dtype, "flops_per_s": None, "how": f"not measured: {reason[:300]}"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    device, dtype = argv[0], argv[1]
    threads = int(argv[2]) if len(argv) > 2 else None
    print(json.dumps(matmul_peak(device, dtype, threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
