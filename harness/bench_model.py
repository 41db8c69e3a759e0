"""Reformer language model on this machine: one training step against the public implementations, and
training-step memory against depth.

    python -m harness.bench_model step     # 6 layers, 8,192 tokens: ours vs transformers vs reformer-pytorch
    python -m harness.bench_model depth    # peak live tensor bytes, 2..12 layers, reversible vs not

Model (the model issue's shape): vocab 256, d_model 256, 4 heads of 64, d_ff 1024, causal, LSH with
chunk_len 64 and 4 hash rounds, n_buckets = 2 * seq / chunk_len, dropout 0, batch 1, axial position
embeddings (64, seq / 64). One training step = zero_grad(set_to_none) + forward + next-token
cross-entropy + backward (no optimizer). Peers, same shape and knobs:
  transformers      ReformerModelWithLMHead: attn_layers ["lsh"] * layers, lsh_attn_chunk_length 64,
                    num_hashes 4, num_buckets 2 * seq / 64, one chunk before, none after, is_decoder.
  reformer_pytorch  ReformerLM: bucket_size 64 (so seq / 64 buckets), n_hashes 4, ff_mult 4, causal.

Each (impl, configuration) runs in its own process, so its peak RSS (ru_maxrss: includes the ~0.2 GB
of the interpreter and torch) is its own. Time: one warm-up step, then the median of --repeats steps
(wall seconds; "cpu s" is the process CPU time of all threads, a cross-check for contention).
Peak tensor bytes: harness.memory.track_peak_memory around one more step (exact live tensor storage
added by the step: activations, gradients, temporaries; the parameters are there before it).
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

from harness.memory import format_size, track_peak_memory

VOCAB, D_MODEL, HEADS, D_HEAD, D_FF, CHUNK_LEN, N_HASHES = 256, 256, 4, 64, 1024, 64, 4
IMPLS = ("ours", "ours-irreversible", "transformers", "reformer_pytorch")
# Measured on this 2-core CPU by the model issue's author: one training step, 6 layers, 8,192 tokens.
ISSUE_REFERENCE = {"transformers": (21.2, 1.62), "reformer_pytorch": (25.2, 1.62)}  # (s, GB peak RSS)


def build(impl: str, layers: int, seq_len: int, backend: str = "eager",
          ff_chunks: int = 1) -> tuple[torch.nn.Module, callable]:
    """(model, loss_fn(tokens) -> scalar next-token cross-entropy); backend: our attention backend.

    ff_chunks: the feed-forward runs on that many slices of the sequence, in every implementation
    (ours: ff_chunks; transformers: chunk_size_feed_forward = seq / ff_chunks; reformer-pytorch:
    ff_chunks), so a chunked comparison chunks all three alike."""
    if impl in ("ours", "ours-irreversible"):
        from impls.model import ModelConfig, ReformerLM
        cfg = ModelConfig(vocab=VOCAB, d_model=D_MODEL, heads=HEADS, d_ff=D_FF, layers=layers,
                          max_seq_len=seq_len, causal=True, n_hashes=N_HASHES, chunk_len=CHUNK_LEN,
                          axial_shape=_axial_shape(seq_len), ff_chunks=ff_chunks)
        model = ReformerLM(cfg, backend=backend, reversible=impl == "ours")
        return model, model.loss
    if impl == "transformers":
        from transformers import ReformerConfig, ReformerModelWithLMHead
        config = ReformerConfig(
            vocab_size=VOCAB, hidden_size=D_MODEL, num_attention_heads=HEADS, attention_head_size=D_HEAD,
            feed_forward_size=D_FF, attn_layers=["lsh"] * layers, lsh_attn_chunk_length=CHUNK_LEN,
            num_hashes=N_HASHES, num_buckets=max(2, 2 * seq_len // CHUNK_LEN), lsh_num_chunks_before=1,
            lsh_num_chunks_after=0, is_decoder=True, max_position_embeddings=seq_len, axial_pos_embds=True,
            axial_pos_shape=_axial_shape(seq_len), axial_pos_embds_dim=(D_MODEL // 2, D_MODEL // 2),
            hidden_act="gelu", hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
            pad_token_id=0, eos_token_id=1, chunk_size_feed_forward=0 if ff_chunks == 1 else seq_len // ff_chunks)
        model = ReformerModelWithLMHead(config)
        return model, lambda tokens: model(input_ids=tokens, labels=tokens).loss
    if impl == "reformer_pytorch":
        from reformer_pytorch import ReformerLM as LucidReformerLM
        model = LucidReformerLM(num_tokens=VOCAB, dim=D_MODEL, depth=layers, max_seq_len=seq_len, heads=HEADS,
                                dim_head=D_HEAD, bucket_size=CHUNK_LEN, n_hashes=N_HASHES,
                                ff_mult=D_FF // D_MODEL, causal=True, ff_chunks=ff_chunks)

        def loss(tokens):
            logits = model(tokens)
            return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB),
                                                     tokens[:, 1:].reshape(-1))
        return model, loss
    raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got impl={impl!r}")


def _axial_shape(seq_len: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols = seq_len, as transformers requires for axial embeddings."""
    if seq_len % CHUNK_LEN == 0 and seq_len > CHUNK_LEN:
        return CHUNK_LEN, seq_len // CHUNK_LEN
    return 1, seq_len


def measure_one(impl: str, layers: int, seq_len: int, repeats: int, track_tensors: bool,
                backend: str = "eager", ff_chunks: int = 1) -> dict:
    torch.manual_seed(0)
    model, loss_fn = build(impl, layers, seq_len, backend, ff_chunks)
    model.train()
    tokens = torch.randint(0, VOCAB, (1, seq_len), generator=torch.Generator().manual_seed(1))

    def step():
        model.zero_grad(set_to_none=True)
        loss_fn(tokens).backward()

    times, cpu_times = [], []
    for _ in range(1 + repeats):  # the first is the warm-up
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    row = {"impl": impl, "backend": backend if impl.startswith("ours") else None, "layers": layers,
           "seq_len": seq_len, "first_s": times[0],
           "median_s": statistics.median(times[1:]) if repeats else None, "times_s": times[1:],
           # CPU seconds of all threads: ~ threads x median_s on a quiet machine, more under contention
           "median_cpu_s": statistics.median(cpu_times[1:]) if repeats else None,
           # before the tracked step: the tracker's bookkeeping is not the model's memory
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "threads": torch.get_num_threads(), "peak_tensor_bytes": None}
    if track_tensors:
        with track_peak_memory("cpu") as peak:
            step()
        row["peak_tensor_bytes"] = peak.peak_bytes
    return row


def run_worker(impl: str, layers: int, seq_len: int, repeats: int, track_tensors: bool,
               backend: str = "eager", ff_chunks: int = 1) -> dict:
    cmd = [sys.executable, "-m", "harness.bench_model", "worker", "--impl", impl, "--layers", str(layers),
           "--seq", str(seq_len), "--repeats", str(repeats), "--backend", backend, "--ff-chunks", str(ff_chunks)]
    cmd += [] if track_tensors else ["--no-tensor-peak"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"impl": impl, "layers": layers, "seq_len": seq_len, "error": last[:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gb(nbytes) -> str:
    return "-" if nbytes is None else f"{nbytes / 1e9:.2f}"


def cmd_step(args) -> int:
    impls = args.impl or ["ours", "transformers", "reformer_pytorch"]
    print(f"one training step (forward + backward), {args.layers} layers, {args.seq} tokens, batch 1, "
          f"d_model {D_MODEL}, {HEADS} heads, d_ff {D_FF}, vocab {VOCAB}, chunk {CHUNK_LEN}, "
          f"{N_HASHES} hash rounds, causal, feed-forward in {args.ff_chunks} chunk(s) in every implementation; "
          f"our attention backend {args.backend}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'impl':<20}{'median s':>10}{'cpu s':>8}{'first s':>9}{'peak RSS GB':>13}{'peak tensors':>14}"
          f"   source")
    rows = {}
    for impl in impls:
        row = run_worker(impl, args.layers, args.seq, args.repeats, not args.no_tensor_peak, args.backend,
                         args.ff_chunks)
        rows[impl] = row
        if "error" in row:
            ref = ISSUE_REFERENCE.get(impl) if (args.layers, args.seq) == (6, 8192) else None
            note = f"; issue's reference: {ref[0]} s, {ref[1]} GB" if ref else ""
            print(f"{impl:<20}{'-':>10}{'-':>8}{'-':>9}{'-':>13}{'-':>14}   not run: {row['error']}{note}",
                  flush=True)
            continue
        print(f"{impl:<20}{row['median_s']:>10.2f}{row['median_cpu_s']:>8.2f}{row['first_s']:>9.2f}"
              f"{_gb(row['peak_rss_bytes']):>13}"
              f"{format_size(row['peak_tensor_bytes']):>14}   measured now", flush=True)
    ours = rows.get("ours", {})
    if "median_s" in ours:
        for peer in ("transformers", "reformer_pytorch"):
            if "median_s" in rows.get(peer, {}):
                time_ref, rss_ref = rows[peer]["median_s"], rows[peer]["peak_rss_bytes"] / 1e9
                source = "measured now"
            elif (args.layers, args.seq) == (6, 8192):
                time_ref, rss_ref = ISSUE_REFERENCE[peer]
                source = "issue's reference numbers"
            else:
                continue
            print(f"ours / {peer} ({source}): time {ours['median_s'] / time_ref:.2f}x, "
                  f"peak RSS {ours['peak_rss_bytes'] / 1e9 / rss_ref:.2f}x   (issue's bar vs transformers: "
                  f"time <= 0.5x, RSS <= 0.6x)")
    return 0


def cmd_depth(args) -> int:
    print(f"training-step peak live tensor bytes against depth, {args.seq} tokens, d_model {D_MODEL}, "
          f"{HEADS} heads, d_ff {D_FF}, chunk {CHUNK_LEN}, {N_HASHES} hash rounds, causal, "
          f"{args.backend} attention")
    print(f"{'layers':>6}{'reversible':>16}{'x 2-layer':>10}{'irreversible':>16}{'x 2-layer':>10}"
          f"{'rev step s':>12}{'irrev step s':>14}")
    base = {}
    curves = {"ours": [], "ours-irreversible": []}
    for layers in args.layers_list:
        cells = []
        for impl in ("ours", "ours-irreversible"):
            row = run_worker(impl, layers, args.seq, 0, True, args.backend, args.ff_chunks)
            if "error" in row:
                cells.append(("error: " + row["error"][:40], "-", "-"))
                continue
            peak = row["peak_tensor_bytes"]
            base.setdefault(impl, peak)
            curves[impl].append((layers, peak))
            cells.append((format_size(peak), f"{peak / base[impl]:.2f}", f"{row['first_s']:.2f}"))
        (rev, rev_ratio, rev_s), (irr, irr_ratio, irr_s) = cells
        print(f"{layers:>6}{rev:>16}{rev_ratio:>10}{irr:>16}{irr_ratio:>10}{rev_s:>12}{irr_s:>14}",
              flush=True)
    for impl, points in curves.items():
        if len(points) >= 2:
            (l0, p0), (l1, p1) = points[0], points[-1]
            print(f"{impl}: {(p1 - p0) / (l1 - l0) / 2**20:.2f} MiB per added layer "
                  f"(({format_size(p1)} - {format_size(p0)}) / ({l1} - {l0}) layers)")
    if curves["ours"] and curves["ours"][0][0] == 2 and curves["ours"][-1][0] == 12:
        ratio = curves["ours"][-1][1] / curves["ours"][0][1]
        print(f"reversible 12-layer / 2-layer peak: {ratio:.3f}x (issue's bar: <= 1.2x)")
    print("step s: the timed step ran without the tensor tracker (its first, unwarmed step)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step", help="one training step: ours against the public implementations")
    step.add_argument("--impl", action="append", choices=IMPLS,
                      help="repeatable; default ours, transformers, reformer_pytorch")
    step.add_argument("--layers", type=int, default=6)
    step.add_argument("--seq", type=int, default=8192)
    step.add_argument("--repeats", type=int, default=2)
    step.add_argument("--no-tensor-peak", action="store_true",
                      help="skip the tracked step (peak tensor bytes)")
    depth = sub.add_parser("depth", help="training-step peak tensor bytes against depth")
    depth.add_argument("--seq", type=int, default=8192)
    depth.add_argument("--layers", dest="layers_list", type=int, nargs="+", default=[2, 4, 6, 8, 12])
    worker = sub.add_parser("worker", help=argparse.SUPPRESS)
    for sub_parser in (step, depth, worker):
        sub_parser.add_argument("--backend", default="eager",
                                help="our attention backend (eager, compiled, ...)")
        sub_parser.add_argument("--ff-chunks", type=int, default=1,
                                help="feed-forward slices along the sequence, in every implementation")
    worker.add_argument("--impl", choices=IMPLS, required=True)
    worker.add_argument("--layers", type=int, required=True)
    worker.add_argument("--seq", type=int, required=True)
    worker.add_argument("--repeats", type=int, required=True)
    worker.add_argument("--no-tensor-peak", action="store_true")
    args = parser.parse_args(argv)
    # The worker may run 0 timed steps (depth only needs the tracked one); `step` reports a median.
    minimum = {"seq": 1, "layers": 1, "ff_chunks": 1, "repeats": 0 if args.command == "worker" else 1}
    for name, least in minimum.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            parser.exit(2, f"bench_model: --{name} must be >= {least}, got {value}\n")
    for value in getattr(args, "layers_list", None) or []:
        if value < 1:
            parser.exit(2, f"bench_model: --layers must be >= 1, got {value}\n")
    if args.command == "worker":
        print(json.dumps(measure_one(args.impl, args.layers, args.seq, args.repeats, not args.no_tensor_peak,
                                     args.backend, args.ff_chunks)))
        return 0
    return cmd_step(args) if args.command == "step" else cmd_depth(args)


if __name__ == "__main__":
    raise SystemExit(main())
