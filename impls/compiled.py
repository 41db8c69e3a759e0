"""`compiled` backend: the contract's LSH attention with its elementwise work compiled by torch.compile.

Hashing and sorting are the shared code of impls.lsh, so for one seed every backend sees the same
buckets. The attention is eager's algorithm (impls.eager): per block of rows (one row = one batch x
head x round), gather into sorted order, attend chunk against (previous, own) chunk, softmax, gather
back, combine the rounds online by their log-sum-exp; the backward recomputes the scores. What
torch.compile (inductor: C++ on the CPU, Triton on GPUs) compiles are the passes between the matrix
products, each fused into one kernel per step of chunks:

  forward:  S = q k^T (matmul) -> [masks, row max, exp, row sum, P, lse]            -> o = P v
  backward: S = q k^T, dP = g v^T (matmuls) -> [masks, P = exp(S - lse), dS = P (dP - w g.o)]
            -> dq = dS k, dk = dS^T q, dv = P^T g (matmuls)

The matrix products stay torch.bmm calls outside the compiled graphs: inductor would call the same
BLAS routine (it does not fuse into extern matmuls on the CPU), but inside a graph it copies the
operands below into contiguous buffers first, and they need no copy:

- Windows are strided views, not copies. Each block keeps its rows' sorted q, k, v in one flat
  buffer, every row preceded by a copy of its last chunk (the circular look-back), so the keys of
  chunk c are the 2C contiguous slots of chunks c-1 and c: window t of all the block's windows is
  flat[t C : (t + 2) C], one as_strided view for a whole step. When several short rows share a
  block, the windows whose queries are a row's leading copy are computed and discarded (their
  log-sum-exp is +inf in the backward, so their probabilities and gradients are exactly 0).
- The self mask is the window's diagonal: the sorted order is a permutation per round, so the only
  key at a query's own position is the query's own slot (own chunk, same offset). Positions are read
  only for the causal mask.

Hashing runs the shared impls.lsh.hash_buckets with its per-block bucket choice (argmax over
[xR, -xR]) compiled: same buckets as eager's, ties included (tests/test_compiled.py).

Sweep safety: kernels are compiled with dynamic=True and without duck sizing, so seq_len,
chunk_len, n_buckets, n_hashes, batch x heads and step sizes are symbols of one graph: the bucket
kernel sees (rows, n_buckets / 2) projections, so batch, heads or rounds of 1 are no size of their
own, and work buffers start a few elements into their storage, so the first step of a call has no
storage offset of 0 (dynamo specialises sizes and offsets of 0 and 1). Each masking variant is its
own kernel (plain, causal, dedup: the dedup kernels take the causal flag as a 0-d tensor), so a
sweep compiles each kernel it uses once per dtype; the one size with a graph of its own is a step
of a single window (a one-chunk round in a one-row block, or a window above the step budget),
compiled once. fullgraph=True turns a graph break or a hit of dynamo's recompile limit into an
exception instead of silently running Python; the backend then runs the same kernel uncompiled (the
result stays right) and records fell_back=True with the reason. Each kernel also returns
torch.compiler.is_compiling(), a constant True in compiled code, so a call that dynamo ran as
Python anyway (set_stance("force_eager") or "eager_on_recompile", suppress_errors) is recorded too.
compile_stats() reports compilations and fallbacks for the harness.

Its speed against eager is what suites/compiled.toml measures (`reformer-bench run suites/compiled.toml
--summary`). The matrix products are the same BLAS calls and FLOPs as eager's; what it can save is in
the passes between them.
"""
from __future__ import annotations

import itertools

import torch

from .blocked import BlockPlan, Buffers, RowTable, combine_round_, keys_backward_, unit_keys
from .config import LSHConfig
from .lsh import dedup_counts as _dedup_counts
from .lsh import mask_values, sorted_order
from .phases import phase

# How dynamo / inductor report that a kernel could not be compiled (graph break under fullgraph,
# recompile limit, backend failure). Anything else is a real error and propagates.
try:
    from torch._dynamo.exc import FailOnRecompileLimitHit, TorchDynamoException

    _COMPILE_ERRORS: tuple[type[BaseException], ...] = (TorchDynamoException, FailOnRecompileLimitHit)
except ImportError:  # pragma: no cover - torch without dynamo
    _COMPILE_ERRORS = ()


# ---------------------------------------------------------------------------------------------
# Kernels (traced by dynamo): the bucket choice of hashing, and the step kernels. A step is cb
# windows; its scores are (cb, C, K) with K = W * C keys per window, (previous chunk, own chunk)
# when W = 2, the own chunk alone when W = 1.
# ---------------------------------------------------------------------------------------------

def _bucket_step(proj):
    """impls.lsh.bucket_of_projection, same buckets, as float reductions that vectorise: the first
    index of the max (min) is the smallest index whose value equals it, which is argmax's
    (argmin's) first-occurrence rule. Indices are exact in float32 (half < 2^24); the clamp keeps a
    NaN projection's bucket in range (eager's NaN bucket differs; the output is NaN either way)."""
    half = proj.shape[-1]
    index = torch.arange(half, device=proj.device, dtype=proj.dtype)
    top, bottom = proj.amax(dim=-1, keepdim=True), proj.amin(dim=-1, keepdim=True)
    top_idx = torch.where(proj == top, index, float(half)).amin(dim=-1)
    bottom_idx = torch.where(proj == bottom, index, float(half)).amin(dim=-1)
    bucket = torch.where(top.squeeze(-1) >= -bottom.squeeze(-1), top_idx, bottom_idx + half)
    return bucket.to(torch.int64).clamp(0, 2 * half - 1), torch.compiler.is_compiling()


def _softmax_(scores, lse, masked_scores) -> None:
    """scores <- softmax of masked_scores over keys (in place), lse <- its log-sum-exp."""
    row_max = masked_scores.amax(dim=-1, keepdim=True)
    exps = torch.exp(masked_scores - row_max)
    row_sum = exps.sum(dim=-1, keepdim=True)
    scores.copy_(exps / row_sum)
    lse.copy_((row_max + row_sum.log()).squeeze(-1))


def _causal_masked(scores, q_pos, k_pos, dtype):
    """Scores with the causal constant of the input dtype on keys after the query (original
    positions), and that mask."""
    future = k_pos.unsqueeze(-2) > q_pos.unsqueeze(-1)
    return torch.where(future, mask_values(dtype)[1], scores), future


# Forward kernels. scores (cb, C, K): a step's q k^T in the accumulation dtype with the self mask on
# the diagonal already; overwritten with the probabilities. lse (cb, C): written. dtype is the
# input dtype: it picks the mask constants, and gives each input dtype a graph of its own.
def _softmax_step(scores, lse, dtype: torch.dtype):
    _softmax_(scores, lse, scores)
    return (torch.compiler.is_compiling(),)


def _softmax_causal_step(scores, lse, q_pos, k_pos, dtype: torch.dtype):
    _softmax_(scores, lse, _causal_masked(scores, q_pos, k_pos, dtype)[0])
    return (torch.compiler.is_compiling(),)


def _softmax_dedup_step(scores, lse, q_pos, k_pos, log_counts, causal, dtype: torch.dtype):
    """dedup (paper Eq. 16): scores - log N_ij; causal is a 0-d bool tensor here (one graph)."""
    masked_scores = torch.where(causal, _causal_masked(scores, q_pos, k_pos, dtype)[0], scores)
    _softmax_(scores, lse, masked_scores - log_counts)
    return (torch.compiler.is_compiling(),)


# Backward kernels: P = exp(S - lse) and dL/dS = P (dP - w g.o), in place of S and dP. With
# o = sum_r w_r o_r, dL/do_r = w_r g and dL/dlse_r = w_r (g.o_r - g.o), so for round r's scores
# dL/dS_ij = P_ij (dP_ij - sum_l P_il dP_il + dL/dlse_i) = P_ij (dP_ij - w_i g_i.o_i), where
# dP = (w g) v^T and row_term = w g.o. Masked (constant) scores get dL/dS = 0: the caller zeroes
# the self diagonal; future keys are zeroed here (their P is 0 anyway, exp(-1e9 - lse)).
def _score_grads_(scores, d_probs, lse, row_term, masked_scores, future=None) -> None:
    probs = torch.exp(masked_scores - lse.unsqueeze(-1))
    d_scores = probs * (d_probs - row_term.unsqueeze(-1))
    if future is not None:
        d_scores = torch.where(future, 0.0, d_scores)
    scores.copy_(probs)
    d_probs.copy_(d_scores)


def _score_grads_step(scores, d_probs, lse, row_term, dtype: torch.dtype):
    _score_grads_(scores, d_probs, lse, row_term, scores)
    return (torch.compiler.is_compiling(),)


def _score_grads_causal_step(scores, d_probs, lse, row_term, q_pos, k_pos, dtype: torch.dtype):
    masked_scores, future = _causal_masked(scores, q_pos, k_pos, dtype)
    _score_grads_(scores, d_probs, lse, row_term, masked_scores, future)
    return (torch.compiler.is_compiling(),)


def _score_grads_dedup_step(scores, d_probs, lse, row_term, q_pos, k_pos, log_counts, causal,
                            dtype: torch.dtype):
    masked_scores, future = _causal_masked(scores, q_pos, k_pos, dtype)
    masked_scores = torch.where(causal, masked_scores, scores) - log_counts
    _score_grads_(scores, d_probs, lse, row_term, masked_scores, future & causal)
    return (torch.compiler.is_compiling(),)


# ---------------------------------------------------------------------------------------------
# Compilation with honest bookkeeping.
# ---------------------------------------------------------------------------------------------

class _CompileStats:
    """Compilations and fallbacks since the last reset (see CompiledBackend.compile_stats)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Back to none: in place, since every kernel of a backend holds this object."""
        self.compile_ids: set[tuple] = set()
        self.fell_back = False
        self.reason = ""

    def fall_back(self, reason: str) -> None:
        if not self.fell_back:  # the first reason is the cause; later ones repeat it
            self.fell_back, self.reason = True, reason


def _describe(exc: BaseException) -> str:
    """One line: the exception and the one it was raised from (dynamo wraps the real cause)."""
    parts: list[str] = []
    link: BaseException | None = exc
    while link is not None and len(parts) < 2:
        first_line = (str(link).strip().splitlines() or [""])[0]
        parts.append(f"{type(link).__name__}: {first_line}")
        link = link.__cause__
    return " <- ".join(parts)


class _Kernel:
    """A kernel, its compiled form, and the fallback bookkeeping around every call."""

    def __init__(self, fn, stats: _CompileStats) -> None:
        self.fn = fn
        self.stats = stats
        self.compiled = torch.compile(fn, backend=self._inductor_counting, dynamic=True, fullgraph=True)

    def _inductor_counting(self, graph_module, example_inputs):
        from torch._guards import CompileContext
        from torch._inductor.compile_fx import compile_fx

        # One entry per dynamo compile (first compile or recompile); a compile that dynamo
        # restarts internally hands inductor a graph twice under the same id.
        compile_id = CompileContext.current_compile_id()
        key = (self.fn.__name__, getattr(compile_id, "frame_id", None),
               getattr(compile_id, "frame_compile_id", len(self.stats.compile_ids)))
        self.stats.compile_ids.add(key)
        return compile_fx(graph_module, example_inputs)

    def __call__(self, *args):
        # Detached aliases are not views: dynamo guards a view on its base's sizes and strides,
        # which change between calls and would recompile. The kernels need no autograd.
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        try:
            # Without duck sizing, sizes that happen to be equal in the first call (e.g. a step's
            # windows and the chunk length) are not assumed equal, which would recompile later.
            # Set and restored by hand: config.patch() costs more than a whole small step.
            shape_config = torch.fx.experimental._config
            duck = shape_config.use_duck_shape
            shape_config.use_duck_shape = False
            try:
                *outputs, ran_compiled = self.compiled(*args)
            finally:
                shape_config.use_duck_shape = duck
        except _COMPILE_ERRORS as exc:
            self.stats.fall_back(f"{self.fn.__name__} not compiled, ran eagerly: {_describe(exc)}")
            *outputs, _ = self.fn(*args)
            return outputs
        if not ran_compiled:
            from torch._dynamo.eval_frame import _stance

            self.stats.fall_back(f"{self.fn.__name__} ran as eager Python under dynamo "
                                 f"(compiler stance {_stance.stance!r})")
        return outputs


# ---------------------------------------------------------------------------------------------
# The blocked autograd.Function around the kernels.
# ---------------------------------------------------------------------------------------------

class _Block:
    """G consecutive batch x head rows of one hash round, laid out flat: every row is its leading
    copy of the last chunk (P = W - 1 chunks) then its n_chunks sorted chunks, (G (n + P) C, .)."""

    def __init__(self, plan: _Plan, round_index: int, bh0: int, bh1: int, steps) -> None:
        self.round, self.bh0, self.bh1, self.steps = round_index, bh0, bh1, steps
        self.bh = torch.arange(bh0, bh1, device=plan.perm.device)
        perm = plan.perm[bh0:bh1, round_index]  # (G, N)
        rank = plan.rank[bh0:bh1, round_index]
        seq_len = perm.shape[1]
        c, pad = plan.chunk_len, plan.pad
        # Original position of every slot of every row.
        self.positions = torch.cat([perm[:, seq_len - pad * c:], perm], dim=1) if pad else perm
        # Flat slot of every original position: for gathering results back to original order.
        row_starts = torch.arange(self.rows, device=perm.device).unsqueeze(1) * (plan.n_chunks + pad) * c
        self.slot_of = (rank + row_starts + pad * c).reshape(-1)

    @property
    def rows(self) -> int:
        return self.bh1 - self.bh0


class _Plan(BlockPlan):
    """The shared plan, walked the compiled way: blocks of rows of one round laid out flat, steps of
    overlapping window views (impls.blocked.BlockPlan holds the sorted order, masks and dtypes)."""

    def __init__(self, perm, rank, chunk_len, causal, dedup, dtype):
        super().__init__(perm, rank, chunk_len, causal, dedup, dtype)
        self.pad = self.window - 1
        # The dedup kernels take the causal flag as data: one graph for both settings.
        self.causal_flag = torch.tensor(causal, device=perm.device)
        self.windows_per_step = max(1, self.budget // (chunk_len * self.window * chunk_len))
        self.step_scores = self.windows_per_step * chunk_len * self.window * chunk_len
        windows_per_row = self.n_chunks + self.pad
        fit = self.windows_per_step // windows_per_row
        # dedup reads one row's sorted order across all rounds: one row per block keeps that simple.
        self.rows_per_block = 1 if dedup or fit < 1 else min(perm.shape[0], fit)

    def blocks(self):
        bh_rows = self.perm.shape[0]
        for r in range(self.n_rounds):
            for bh0 in range(0, bh_rows, self.rows_per_block):
                bh1 = min(bh_rows, bh0 + self.rows_per_block)
                n_windows = (bh1 - bh0) * (self.n_chunks + self.pad) - self.pad
                yield _Block(self, r, bh0, bh1, _even_ranges(n_windows, self.windows_per_step))

    # Views of a step (windows t0..t1-1) into a block's flat buffers.
    def queries(self, flat: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        c = self.chunk_len
        part = flat[(t0 + self.pad) * c:(t1 + self.pad) * c]
        return part.view(t1 - t0, c, *flat.shape[1:])

    def windows(self, flat: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        """Window t = flat slots [t C, (t + W) C): overlapping views, no copy."""
        c = self.chunk_len
        inner = flat.stride()[1:]
        return flat.as_strided((t1 - t0, self.window * c, *flat.shape[1:]), (c * flat.stride(0), *(
            (flat.stride(0),) + inner)), flat.storage_offset() + t0 * c * flat.stride(0))

    def mask_args(self, block: _Block, positions, t0: int, t1: int) -> tuple:
        """The kernel variant's extra inputs for a step: none, positions (causal), or positions,
        log N_ij and the causal flag (dedup)."""
        if not (self.causal or self.dedup):
            return ()
        q_pos, k_pos = self.queries(positions, t0, t1), self.windows(positions, t0, t1)
        if not self.dedup:
            return q_pos, k_pos
        counts = _dedup_counts(self.rank[block.bh0:block.bh1], q_pos.unsqueeze(0), k_pos.unsqueeze(0),
                               self.chunk_len, self.n_chunks)[0]
        return q_pos, k_pos, counts.to(self.acc).log_(), self.causal_flag

    def variant(self) -> str:
        return "dedup" if self.dedup else "causal" if self.causal else "plain"


def _even_ranges(total: int, most: int) -> list[tuple[int, int]]:
    """[0, total) cut into the fewest ranges of at most `most`, of near-equal lengths: a short
    last range would be a new size for the kernels, and a length of 1 a recompile (dynamo
    specialises sizes 0 and 1)."""
    n_ranges = -(-total // most)
    bounds = [total * i // n_ranges for i in range(n_ranges + 1)]
    return list(itertools.pairwise(bounds))


def _bmm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out = a @ b (batched); in place when the dtypes agree (no temporary), else through one."""
    if out.dtype == a.dtype == b.dtype:
        torch.bmm(a, b, out=out)
    else:
        out.copy_(torch.bmm(a.to(b.dtype), b))


def _baddbmm_into(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b (batched); in place when the dtypes agree."""
    if acc.dtype == a.dtype == b.dtype:
        acc.baddbmm_(a, b)
    else:
        acc += torch.bmm(a.to(b.dtype), b)


# Work buffers start this many elements into their storage: a view at storage offset 0 is a value
# dynamo specialises, so the first step of a call would need a graph of its own.
BUFFER_LEAD = 64  # keeps 256-byte alignment for float32


def _cached_steps(cache: dict, step_class, plan: _Plan, buf: dict, block: _Block) -> list:
    """The step views (step_class) of a block, made once per block size and set of buffers (a
    buffer that grew is new storage: views of the old one must not be reused)."""
    key = (block.positions.numel(), *(t.data_ptr() for t in buf.values()))
    steps = cache.get(key)
    if steps is None:
        steps = cache[key] = [step_class(plan, buf, t0, t1) for t0, t1 in block.steps]
    return steps


def _flat_positions(buffers: Buffers, block: _Block) -> torch.Tensor:
    """The block's slot positions, flat, in a buffer (read by the causal and dedup kernels)."""
    positions = buffers.get("positions", (block.positions.numel(),), block.positions.dtype)
    return positions.copy_(block.positions.reshape(-1))


class _ForwardStep:
    """Views of one forward step into the call's buffers."""

    def __init__(self, plan: _Plan, buf: dict, t0: int, t1: int) -> None:
        c, pad, cb = plan.chunk_len, plan.pad, t1 - t0
        self.span = (t0, t1)
        self.q = plan.queries(buf["q"], t0, t1)
        self.k_t = plan.windows(buf["k"], t0, t1).transpose(1, 2)
        self.v = plan.windows(buf["v"], t0, t1)
        self.out = plan.queries(buf["out"], t0, t1)
        self.lse = plan.queries(buf["lse"], t0, t1)
        self.scores = buf["scores"][:cb * c * plan.window * c].view(cb, c, plan.window * c)
        self.diagonal = self.scores.diagonal(pad * c, 1, 2)


class _BackwardStep:
    """Views of one backward step into the call's buffers."""

    def __init__(self, plan: _Plan, buf: dict, t0: int, t1: int) -> None:
        c, pad, cb = plan.chunk_len, plan.pad, t1 - t0
        self.span = (t0, t1)
        self.q = plan.queries(buf["q"], t0, t1)
        self.k = plan.windows(buf["k"], t0, t1)
        self.k_t = self.k.transpose(1, 2)
        self.v_t = plan.windows(buf["v"], t0, t1).transpose(1, 2)
        self.d_out = plan.queries(buf["d_out"], t0, t1)
        self.lse = plan.queries(buf["lse"], t0, t1)
        self.row_term = plan.queries(buf["row_term"], t0, t1)
        self.dq = plan.queries(buf["dq"], t0, t1)
        scores_shape = (cb, c, plan.window * c)
        self.scores = buf["scores"][:cb * c * plan.window * c].view(scores_shape)  # then P
        self.d_probs = buf["d_probs"][:cb * c * plan.window * c].view(scores_shape)  # then dS
        self.diagonal = self.scores.diagonal(pad * c, 1, 2)
        self.d_diagonal = self.d_probs.diagonal(pad * c, 1, 2)
        # Window t's keys are chunks t (previous) and t + P (own) of the flat layout: the own
        # part's key gradients are written to chunk t + P, the previous part's added to chunk t.
        dk, dv = buf["dk"].view(-1, c, buf["dk"].shape[-1]), buf["dv"].view(-1, c, buf["dv"].shape[-1])
        self.key_grads = []
        for chunks, weights, rhs in ((dk, self.d_probs, self.q), (dv, self.scores, self.d_out)):
            own = (chunks[t0 + pad:t1 + pad], weights[:, :, pad * c:].transpose(1, 2), rhs)
            prev = (chunks[t0:t1], weights[:, :, :c].transpose(1, 2), rhs) if pad else None
            self.key_grads.append((own, prev))


class _CompiledLSHAttention(torch.autograd.Function):
    """o = sum_r w_r o_r, w = softmax_r(lse_r): the rounds are combined online (running max and
    sum of exp(lse_r - max), as in impls.eager), so backward needs only o, lse_r and the two
    running statistics."""

    @staticmethod
    def forward(ctx, q, v, plan: _Plan, kernels):
        softmax_kernel = kernels[("softmax", plan.variant())]
        batch, heads, seq_len, d = q.shape
        bh_rows, acc = batch * heads, plan.acc
        q_rows, v_rows = RowTable(q), RowTable(v)
        combined = torch.zeros(bh_rows, seq_len, d, dtype=acc, device=q.device)
        lse_max = torch.full((bh_rows, seq_len), float("-inf"), dtype=acc, device=q.device)
        weight_sum = torch.zeros(bh_rows, seq_len, dtype=acc, device=q.device)
        lse_rounds = torch.empty(plan.n_rounds, bh_rows, seq_len, dtype=acc, device=q.device)
        buffers = Buffers(q.device, lead=BUFFER_LEAD)
        step_views: dict[tuple, list[_ForwardStep]] = {}
        for block in plan.blocks():
            n_slots = block.positions.numel()
            buf = {name: buffers.get(name, (n_slots, d), q.dtype) for name in ("q", "k", "v", "out")}
            buf["lse"] = buffers.get("lse", (n_slots,), acc)
            buf["scores"] = buffers.get("scores", (plan.step_scores,), acc)
            with phase("lsh.gather"):
                q_rows.sorted_rows(block.bh, block.positions, out=buf["q"])
                v_rows.sorted_rows(block.bh, block.positions, out=buf["v"])
                unit_keys(buf["q"], out=buf["k"])
            with phase("lsh.attend"):
                steps = _cached_steps(step_views, _ForwardStep, plan, buf, block)
                positions = _flat_positions(buffers, block)
                for step in steps:
                    _bmm_into(step.scores, step.q, step.k_t)
                    step.diagonal.fill_(plan.self_value)
                    softmax_kernel(step.scores, step.lse, *plan.mask_args(block, positions, *step.span), q.dtype)
                    _bmm_into(step.out, step.scores, step.v)
            with phase("lsh.unsort"):
                out_rows = buf["out"].index_select(0, block.slot_of).view(block.rows, seq_len, d)
                lse_rows = buf["lse"].index_select(0, block.slot_of).view(block.rows, seq_len)
                rows = slice(block.bh0, block.bh1)
                lse_rounds[block.round, rows] = lse_rows
            with phase("lsh.combine"):
                combine_round_(combined[rows], lse_max[rows], weight_sum[rows], out_rows, lse_rows)
        del buffers, step_views
        with phase("lsh.combine"):
            combined.div_(weight_sum.unsqueeze(-1))
        ctx.save_for_backward(q, v, combined, lse_rounds, lse_max, weight_sum)
        ctx.plan, ctx.kernels = plan, kernels
        return combined.view(batch, heads, seq_len, d).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, v, combined, lse_rounds, lse_max, weight_sum = ctx.saved_tensors
        plan: _Plan = ctx.plan
        grads_kernel = ctx.kernels[("grads", plan.variant())]
        batch, heads, seq_len, d = q.shape
        bh_rows = batch * heads
        c, pad, acc = plan.chunk_len, plan.pad, plan.acc
        q_rows, v_rows, grad_rows = RowTable(q), RowTable(v), RowTable(grad_out)
        with phase("lsh.backward.prepare"):
            out_dot = (grad_out.to(acc) * combined.view(grad_out.shape)).sum(-1).reshape(bh_rows, seq_len)
            dq = torch.zeros(bh_rows, seq_len, d, dtype=acc, device=q.device)
            dv = torch.zeros_like(dq)
        buffers = Buffers(q.device, lead=BUFFER_LEAD)
        step_views: dict[tuple, list[_BackwardStep]] = {}
        for block in plan.blocks():
            n_slots = block.positions.numel()
            rows = slice(block.bh0, block.bh1)
            buf = {name: buffers.get(name, (n_slots, d), q.dtype) for name in ("q", "k", "v", "d_out")}
            buf.update({name: buffers.get(name, (n_slots, d), acc) for name in ("dq", "dk", "dv", "scratch")})
            buf.update({name: buffers.get(name, (n_slots,), acc) for name in ("lse", "row_term")})
            buf.update({name: buffers.get(name, (plan.step_scores,), acc) for name in ("scores", "d_probs")})
            with phase("lsh.backward.gather"):
                q_rows.sorted_rows(block.bh, block.positions, out=buf["q"])
                v_rows.sorted_rows(block.bh, block.positions, out=buf["v"])
                _, norm_s = unit_keys(buf["q"], out=buf["k"])
                lse_r = lse_rounds[block.round, rows]
                # w_r = exp(lse_r - max) / sum per original position, then every flat slot's value.
                weight = (lse_r - lse_max[rows]).exp_().div_(weight_sum[rows])
                weight_s = weight.gather(1, block.positions).view(-1, 1)
                grad_rows.sorted_rows(block.bh, block.positions, out=buf["d_out"]).mul_(weight_s.to(q.dtype))
                torch.gather(out_dot[rows].mul(weight), 1, block.positions, out=buf["row_term"].view(block.rows, -1))
                lse_s = torch.gather(lse_r, 1, block.positions, out=buf["lse"].view(block.rows, -1))
                # A row's leading copy is never a query: +inf makes its (discarded) windows' P exactly 0.
                lse_s.view(block.rows, -1, c)[:, :pad] = float("inf")
                # Key gradients: every chunk but the first is some window's own chunk (written there).
                buf["dk"][:c].zero_()
                buf["dv"][:c].zero_()
            with phase("lsh.backward.attend"):
                steps = _cached_steps(step_views, _BackwardStep, plan, buf, block)
                positions = _flat_positions(buffers, block)
                for step in steps:
                    _bmm_into(step.scores, step.q, step.k_t)
                    step.diagonal.fill_(plan.self_value)
                    _bmm_into(step.d_probs, step.d_out, step.v_t)
                    grads_kernel(step.scores, step.d_probs, step.lse, step.row_term,
                                 *plan.mask_args(block, positions, *step.span), q.dtype)
                    step.d_diagonal.zero_()  # the self score is a constant
                    _bmm_into(step.dq, step.d_probs, step.k)
                    for own, prev in step.key_grads:
                        _bmm_into(*own)
                        if prev is not None:
                            _baddbmm_into(*prev)
            with phase("lsh.backward.keys"):
                dq_s, dk_s, dv_s = buf["dq"], buf["dk"], buf["dv"]
                if pad:  # a row's leading copy is its last chunk: its key gradients belong there
                    for flat in (dk_s, dv_s):
                        per_row = flat.view(block.rows, -1, c, d)
                        per_row[:, -1] += per_row[:, 0]
                # q reaches k through k = q / |q|
                dq_s += keys_backward_(dk_s, buf["k"].to(acc), norm_s.to(acc), scratch=buf["scratch"])
            with phase("lsh.backward.unsort"):
                dq[rows] += dq_s.index_select(0, block.slot_of).view(block.rows, seq_len, d)
                dv[rows] += dv_s.index_select(0, block.slot_of).view(block.rows, seq_len, d)
        return dq.view(q.shape).to(q.dtype), dv.view(v.shape).to(v.dtype), None, None


class CompiledBackend:
    """LSH attention with its bucket choice and per-step softmax and score-gradient kernels compiled
    by torch.compile."""

    name = "compiled"

    def __init__(self) -> None:
        self._stats = _CompileStats()
        self._kernels = {
            "buckets": _Kernel(_bucket_step, self._stats),
            ("softmax", "plain"): _Kernel(_softmax_step, self._stats),
            ("softmax", "causal"): _Kernel(_softmax_causal_step, self._stats),
            ("softmax", "dedup"): _Kernel(_softmax_dedup_step, self._stats),
            ("grads", "plain"): _Kernel(_score_grads_step, self._stats),
            ("grads", "causal"): _Kernel(_score_grads_causal_step, self._stats),
            ("grads", "dedup"): _Kernel(_score_grads_dedup_step, self._stats),
        }

    def available(self) -> tuple[bool, str]:
        if not _COMPILE_ERRORS:
            return False, f"torch {torch.__version__} has no torch._dynamo"
        return True, ""

    def compile_stats(self) -> dict:
        """Since the last reset_compile_stats(): compilations (dynamo compiles of the kernels,
        first compiles and recompiles), fell_back (some step ran uncompiled) and its reason."""
        return {"compilations": len(self._stats.compile_ids), "fell_back": self._stats.fell_back,
                "reason": self._stats.reason}

    def reset_compile_stats(self) -> None:
        self._stats.reset()

    def _bucket_of(self, proj: torch.Tensor) -> torch.Tensor:
        """The compiled bucket choice on (rows, n_buckets / 2) projections: batch, heads and
        rounds of size 1 would each be a new graph as dimensions of their own."""
        return self._kernels["buckets"](proj.reshape(-1, proj.shape[-1]))[0].view(proj.shape[:-1])

    def attend(self, qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig,
               buckets: torch.Tensor | None = None) -> torch.Tensor:
        """The contract's LSH attention, (batch, heads, seq, d_head) -> same shape; differentiable.
        buckets: optional precomputed hash_buckets(qk, cfg), as for the eager backend."""
        order = sorted_order(qk, v, cfg, buckets, bucket_of=self._bucket_of)
        batch, heads, seq_len, _ = qk.shape
        plan = _Plan(order.perm.reshape(batch * heads, cfg.n_hashes, seq_len),
                     order.rank.reshape(batch * heads, cfg.n_hashes, seq_len),
                     order.chunk_len, cfg.causal, cfg.dedup, qk.dtype)
        # qk and v go in as they are (a transposed projection is gathered from in place, not copied).
        return _CompiledLSHAttention.apply(qk, v, plan, self._kernels)
