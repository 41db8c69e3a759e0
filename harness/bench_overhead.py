"""What the harness costs per case: worker start-up + setup, and how far its median is from a bare loop.

    python -m harness.bench_overhead                            # eager forward, 4096 tokens
    python -m harness.bench_overhead --seq-len 1024 --repeats 20 --rounds 3 --backend dense

For each round, alternately:
  harness  one case through harness.runner.run_case_in_worker (a fresh worker process): its
           worker_setup_s (process spawn -> inputs built, before the first call), wall_s (the
           whole case: setup, timing, memory, FLOPs and fidelity passes) and time_median_s;
  bare     a fresh `python -c` process that builds the same inputs, makes the same warm-up
           calls and times the same number of calls with time.perf_counter: its median.
Reported: the median over rounds of each figure, and
  overhead = harness median / bare median - 1  (target: |overhead| < 5%)
  setup    = worker_setup_s                     (target: < 3 s)
Both sides use the same intra-op thread count (--threads; default torch's own).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from .runner import run_case_in_worker
from .spec import expand_suite

BARE_LOOP = r"""
import json, statistics, sys, time
import torch
from impls import LSHConfig, get_backend
p = json.loads(sys.argv[1])
if p["threads"]:
    torch.set_num_threads(p["threads"])
gen = torch.Generator().manual_seed(0)
shape = (p["batch"], p["heads"], p["seq_len"], p["d_head"])
qk, v = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
cfg = LSHConfig(n_buckets=p["n_buckets"], n_hashes=p["n_hashes"], chunk_len=p["chunk_len"])
backend = get_backend(p["backend"])
times = []
with torch.no_grad():
    for _ in range(1 + p["warmup"]):
        backend.attend(qk, v, cfg)
    for _ in range(p["repeats"]):
        t0 = time.perf_counter()
        backend.attend(qk, v, cfg)
        times.append(time.perf_counter() - t0)
print(json.dumps({"median_s": statistics.median(times)}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-head", type=int, default=64)
    parser.add_argument("--chunk-len", type=int, default=64)
    parser.add_argument("--n-hashes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    suite_data = {
        "suite": {"name": "overhead", "threads": args.threads} if args.threads else {"name": "overhead"},
        "defaults": {"backend": args.backend, "mode": "forward", "seq_len": args.seq_len, "batch": args.batch,
                     "heads": args.heads, "d_head": args.d_head, "chunk_len": args.chunk_len,
                     "n_hashes": args.n_hashes, "repeats": args.repeats, "warmup": args.warmup,
                     "timeout_s": 3600},
    }
    from pathlib import Path

    case = expand_suite(suite_data, Path("overhead.toml")).cases[0]
    bare_params = {"backend": case.backend, "batch": case.batch, "heads": case.heads, "seq_len": case.seq_len,
                   "d_head": case.d_head, "n_buckets": case.n_buckets or 2, "n_hashes": case.n_hashes or 1,
                   "chunk_len": case.chunk_len, "repeats": case.repeats, "warmup": case.warmup,
                   "threads": args.threads}
    print(f"case {case.case_id}: {case.repeats} timed calls after {case.warmup} warm-up calls, "
          f"{args.rounds} rounds", file=sys.stderr)
    harness_median, bare_median, setup, wall = [], [], [], []
    for i in range(args.rounds):
        row = run_case_in_worker(case)
        if row["status"] != "ok":
            print(f"harness case failed: {row['status']}: {row['reason']}", file=sys.stderr)
            return 1
        harness_median.append(row["time_median_s"])
        setup.append(row["worker_setup_s"])
        wall.append(row["wall_s"])
        done = subprocess.run([sys.executable, "-c", BARE_LOOP, json.dumps(bare_params)], check=True,
                              capture_output=True, text=True)
        bare_median.append(json.loads(done.stdout)["median_s"])
        print(f"round {i + 1}: harness median {harness_median[-1] * 1e3:.3f} ms, bare median "
              f"{bare_median[-1] * 1e3:.3f} ms, worker setup {setup[-1]:.2f} s, case wall {wall[-1]:.2f} s",
              file=sys.stderr)
    h, b = statistics.median(harness_median), statistics.median(bare_median)
    overhead = h / b - 1
    result = {
        "case_id": case.case_id,
        "harness_median_ms": round(h * 1e3, 4),
        "bare_median_ms": round(b * 1e3, 4),
        "median_overhead_pct": round(100 * overhead, 2),
        "worker_setup_s": round(statistics.median(setup), 3),
        "case_wall_s": round(statistics.median(wall), 3),
        "within_5pct": abs(overhead) < 0.05,
        "setup_under_3s": statistics.median(setup) < 3.0,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
