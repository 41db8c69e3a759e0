"""Language models: the Reformer (reversible layers, LSH attention, chunked feed-forward) and a dense
pre-norm Transformer baseline with the same widths. Read top to bottom:

  ModelConfig -> embeddings (token + plain or axial position) -> attention and feed-forward sublayers
  -> the reversible stack (forward without activations, backward that recomputes them)
  -> ReformerLM / TransformerLM -> the chunked LM-head loss.

Reversible block (RevNet; Kitaev et al. 2020, Sec. 3), two streams x1, x2 of d_model each:
    y1 = x1 + Attn(LN(x2))        x2 = y2 - FF(LN(y1))
    y2 = x2 + FF(LN(y1))          x1 = y1 - Attn(LN(x2))
so a layer's inputs are recomputed from its outputs and no layer's activations are kept: training
memory holds one layer's intermediates plus O(seq * d_model) for the streams, whatever the depth;
what grows with depth is the parameters' gradients and each layer's hash buckets
(batch * heads * n_hashes * seq int64), replayed in the backward.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import LSHConfig, require_int, resolve_buckets
from .lsh import hash_buckets
from .registry import backend_info, get_backend

# Logits materialised at once by the LM-head loss (elements): 4M fp32 = 16 MiB, so seq x vocab never is.
LOSS_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a language model.

    vocab: token ids are in [0, vocab). d_model: width of each residual stream (the reversible model
        carries two). heads: attention heads, d_head = d_model / heads. d_ff: feed-forward hidden width.
    layers: blocks. max_seq_len: longest sequence the position embedding covers.
    causal: position i attends only to positions <= i.
    n_hashes, chunk_len, n_buckets, dedup, seed: LSH attention settings (LSHConfig). n_buckets=None
        means 2 * seq_len / chunk_len at call time (the paper's choice); layer i hashes with seed + i.
    dropout: probability on embeddings, attention output, feed-forward hidden and output.
    ff_chunks: the feed-forward runs on this many slices of the sequence at a time (bounds its
        seq x d_ff hidden activation to seq / ff_chunks x d_ff; position-wise, so exact).
    axial_shape: (rows, cols) with rows * cols = max_seq_len for axial position embeddings
        (position r * cols + c gets [row_r ; col_c]), or None for one learned vector per position.
    share_qk: one projection for queries and keys (the Reformer's shared-QK attention, which LSH
        needs); False gives full attention separate query and key projections and the standard
        scaled dot-product attention (the paper's Figure 3 ablation), with a dense backend only.
    """

    vocab: int = 256
    d_model: int = 256
    heads: int = 4
    d_ff: int = 1024
    layers: int = 6
    max_seq_len: int = 8192
    causal: bool = True
    n_hashes: int = 4
    chunk_len: int | None = 64
    n_buckets: int | None = None
    dropout: float = 0.0
    ff_chunks: int = 1
    axial_shape: tuple[int, int] | None = None
    dedup: bool = False
    seed: int = 0
    share_qk: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab", "d_model", "heads", "d_ff", "layers", "max_seq_len", "n_hashes", "ff_chunks"):
            require_int(name, getattr(self, name), minimum=1)
        require_int("seed", self.seed)
        if self.d_model % self.heads:
            raise ValueError(f"d_model must be a multiple of heads, got d_model={self.d_model}, "
                             f"heads={self.heads}")
        for flag in ("causal", "dedup", "share_qk"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {flag}={getattr(self, flag)!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got dropout={self.dropout!r}")
        if self.chunk_len is not None:
            require_int("chunk_len", self.chunk_len, minimum=1)
        if self.n_buckets is not None:
            require_int("n_buckets", self.n_buckets)
            if self.n_buckets < 2 or self.n_buckets % 2:
                raise ValueError(f"n_buckets must be an even integer >= 2 or None, "
                                 f"got n_buckets={self.n_buckets}")
        if self.chunk_len is None and self.n_buckets is None:
            raise ValueError("chunk_len=None and n_buckets=None: set at least one of them")
        if self.axial_shape is not None:
            shape = self.axial_shape
            if not isinstance(shape, (tuple, list)) or len(shape) != 2 \
                    or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
                raise ValueError(f"axial_shape must be two positive integers (rows, cols), "
                                 f"got axial_shape={shape!r}")
            if shape[0] * shape[1] != self.max_seq_len:
                raise ValueError(f"axial_shape={tuple(shape)} must multiply to "
                                 f"max_seq_len={self.max_seq_len}, got {shape[0] * shape[1]}")
            object.__setattr__(self, "axial_shape", tuple(shape))

    def lsh_config(self, layer: int, seq_len: int) -> LSHConfig:
        """The LSHConfig of block `layer` for a sequence of seq_len tokens."""
        n_buckets = self.n_buckets if self.n_buckets is not None else resolve_buckets(seq_len, None, self.chunk_len)[0]
        return LSHConfig(n_buckets=n_buckets, n_hashes=self.n_hashes, chunk_len=self.chunk_len,
                         causal=self.causal, dedup=self.dedup, seed=self.seed + layer)


def _init_weights(module: nn.Module) -> None:
    """N(0, 0.02) weights, zero biases (GPT-2 / nanoGPT); LayerNorm keeps its (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        bias = getattr(module, "bias", None)  # nn.Embedding has none
        if isinstance(bias, torch.Tensor):
            nn.init.zeros_(bias)


# --- embeddings ------------------------------------------------------------------------------------

class PositionEmbedding(nn.Module):
    """One learned d_model vector per position 0 .. max_seq_len - 1."""

    def __init__(self, max_seq_len: int, d_model: int) -> None:
        super().__init__()
        self.table = nn.Embedding(max_seq_len, d_model)

    def forward(self, seq_len: int) -> torch.Tensor:
        if seq_len > self.table.num_embeddings:
            raise ValueError(f"sequence length {seq_len} exceeds max_seq_len={self.table.num_embeddings}")
        return self.table.weight[:seq_len]


class AxialPositionEmbedding(nn.Module):
    """Axial position embedding (trax, Hugging Face): position p = r * cols + c gets [row_r ; col_c],
    row_r of d_model // 2 and col_c of the rest, so rows * cols positions cost (rows + cols) vectors."""

    def __init__(self, shape: tuple[int, int], d_model: int) -> None:
        super().__init__()
        self.shape = shape
        rows, cols = shape
        self.rows = nn.Parameter(torch.randn(rows, d_model // 2) * 0.02)
        self.cols = nn.Parameter(torch.randn(cols, d_model - d_model // 2) * 0.02)

    def forward(self, seq_len: int) -> torch.Tensor:
        rows, cols = self.shape
        if seq_len > rows * cols:
            raise ValueError(f"sequence length {seq_len} exceeds axial_shape={self.shape} "
                             f"({rows * cols} positions)")
        used_rows = -(-seq_len // cols)
        row_part = self.rows[:used_rows, None, :].expand(used_rows, cols, -1)
        col_part = self.cols[None, :, :].expand(used_rows, cols, -1)
        return torch.cat([row_part, col_part], dim=-1).reshape(used_rows * cols, -1)[:seq_len]


class Embedding(nn.Module):
    """tokens (batch, seq) int64 -> Dropout(token_emb + pos_emb): (batch, seq, d_model)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.vocab = cfg.vocab
        self.tokens = nn.Embedding(cfg.vocab, cfg.d_model)
        self.positions = (AxialPositionEmbedding(cfg.axial_shape, cfg.d_model) if cfg.axial_shape
                          else PositionEmbedding(cfg.max_seq_len, cfg.d_model))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be a (batch, seq) int64 tensor, got "
                             f"{getattr(tokens, 'dtype', type(tokens).__name__)} of shape "
                             f"{tuple(getattr(tokens, 'shape', ()))}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab):
            raise ValueError(f"tokens must be in [0, vocab={self.vocab}), got values in "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        return self.dropout(self.tokens(tokens) + self.positions(tokens.shape[1]))


# --- sublayers --------------------------------------------------------------------------------------

class SelfAttention(nn.Module):
    """Pre-norm multi-head shared-QK attention: Dropout(W_o Attn(LN(x) W_qk, LN(x) W_v) + b_o).

    With an LSH backend, forward returns the buckets it hashed into, and accepts them back
    (`buckets=`) so that a recomputation attends exactly as the first pass did even when its qk
    differs from the original in the last bit.
    """

    def __init__(self, cfg: ModelConfig, backend, hashes: bool) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.backend = backend
        self.hashes = hashes  # an LSH backend: hash here, so that a recomputation can replay the buckets
        self.norm = nn.LayerNorm(cfg.d_model)
        self.to_qk = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.to_v = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.to_out = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        if not cfg.share_qk:
            if hashes:
                raise ValueError("share_qk=False needs full attention (a dense backend): LSH hashes the shared "
                                 "query-keys")
            self.to_k: nn.Linear | None = nn.Linear(cfg.d_model, cfg.d_model, bias=False)  # to_qk: queries
        else:
            self.to_k = None

    def forward(self, x: torch.Tensor, lsh_cfg: LSHConfig,
                buckets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq_len, d_model = x.shape
        h = self.norm(x)
        qk = self.to_qk(h).view(batch, seq_len, self.heads, -1).transpose(1, 2)
        v = self.to_v(h).view(batch, seq_len, self.heads, -1).transpose(1, 2)
        if self.to_k is not None:  # separate keys: standard attention, no self-mask, keys not normalised
            k = self.to_k(h).view(batch, seq_len, self.heads, -1).transpose(1, 2)
            out = F.scaled_dot_product_attention(qk, k, v, is_causal=lsh_cfg.causal)
        elif self.hashes:
            if buckets is None:
                buckets = hash_buckets(qk, lsh_cfg)
            out = self.backend.attend(qk, v, lsh_cfg, buckets=buckets)
        else:
            out = self.backend.attend(qk, v, lsh_cfg)
        out = out.transpose(1, 2).reshape(batch, seq_len, d_model)
        return self.dropout(self.to_out(out)), buckets


class FeedForward(nn.Module):
    """Pre-norm position-wise MLP: Dropout(W2 Dropout(GELU(LN(x) W1 + b1)) + b2), d_model -> d_ff -> d_model.

    forward(x, chunks) runs it on `chunks` consecutive slices of the sequence (torch.chunk along
    dim 1), in order, so dropout masks are drawn slice by slice in the same order on every pass.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.hidden_dropout = nn.Dropout(cfg.dropout)
        self.out_dropout = nn.Dropout(cfg.dropout)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_dropout(self.down(self.hidden_dropout(F.gelu(self.up(self.norm(x))))))

    def forward(self, x: torch.Tensor, chunks: int = 1) -> torch.Tensor:
        if chunks == 1:
            return self.mlp(x)
        return torch.cat([self.mlp(piece) for piece in x.chunk(chunks, dim=1)], dim=1)


class Block(nn.Module):
    """One layer's two sublayers; ReformerLM wires them reversibly, TransformerLM as residuals."""

    def __init__(self, cfg: ModelConfig, backend, hashes: bool) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg, backend, hashes)
        self.ff = FeedForward(cfg)


# --- the reversible stack ---------------------------------------------------------------------------

class RngState:
    """The global CPU (and CUDA, for a CUDA device) generator state at one point of the forward, so
    that a recomputation draws the same dropout masks (as torch.utils.checkpoint, reformer-pytorch's
    Deterministic and Hugging Face's per-layer seeds do)."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda_device = device if device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(device) if self.cuda_device is not None else None

    @contextmanager
    def replay(self):
        """Run the enclosed code from this state; the generators are put back afterwards, so the
        backward consumes no random numbers of the caller's stream (the plain backward does not either)."""
        devices = [self.cuda_device] if self.cuda_device is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.cuda_device)
            yield


class LayerRecord:
    """What one layer's forward leaves for its backward: the buckets it hashed into and the RNG
    states before each sublayer (None when not training). Buckets are kept as int32
    (O(seq * heads * n_hashes) * 4 bytes: half of int64, and this is the part of the reversible
    stack's memory that grows with depth) and widened back to int64 when replayed."""

    def __init__(self) -> None:
        self._buckets: torch.Tensor | None = None
        self.attn_rng: RngState | None = None
        self.ff_rng: RngState | None = None

    @property
    def buckets(self) -> torch.Tensor | None:
        return None if self._buckets is None else self._buckets.long()

    @buckets.setter
    def buckets(self, value: torch.Tensor | None) -> None:
        self._buckets = None if value is None else value.to(torch.int32)


@contextmanager
def _maybe_replay(state: RngState | None):
    if state is None:
        yield
    else:
        with state.replay():
            yield


class ReversibleStack(torch.autograd.Function):
    """x -> (y1, y2) through all blocks with x1 = x2 = x; saves only the last layer's outputs.

    apply(x, blocks, lsh_cfgs, ff_chunks, *params): params are the blocks' trainable parameters,
    passed as inputs so that their gradients are returned by backward (and so reach .grad, hooks
    and torch.autograd.grad like any other gradient).
    """

    @staticmethod
    def forward(ctx, x, blocks, lsh_cfgs, ff_chunks, *params):
        # autograd.Function.forward runs without grad: no layer keeps its activations.
        training = blocks[0].training
        records = []
        x1 = x2 = x
        for block, lsh_cfg in zip(blocks, lsh_cfgs):
            record = LayerRecord()
            record.attn_rng = RngState(x.device) if training else None
            attn_out, record.buckets = block.attn(x2, lsh_cfg)
            x1 = x1 + attn_out
            del attn_out
            record.ff_rng = RngState(x.device) if training else None
            x2 = x2 + block.ff(x1, ff_chunks)
            records.append(record)
        # Kept as detached aliases, not save_for_backward: the backward drops them once it has read
        # them (saved tensors would stay alive, two residual streams, until the whole backward ends).
        # Detached, so that no reference cycle runs through the outputs' grad_fn; their versions are
        # checked in the backward, as autograd checks saved tensors (an alias shares the counter).
        ctx.outputs = (x1.detach(), x2.detach())
        ctx.output_versions = (x1._version, x2._version)
        ctx.blocks, ctx.lsh_cfgs, ctx.ff_chunks, ctx.records = blocks, lsh_cfgs, ff_chunks, records
        ctx.param_index = {id(p): i for i, p in enumerate(params)}
        return x1, x2

    @staticmethod
    def backward(ctx, dy1, dy2):
        if ctx.outputs is None:
            raise RuntimeError("ReversibleStack's backward frees the outputs it reconstructs from: it runs "
                               "once per forward (retain_graph=True is not supported)")
        (y1, y2), ctx.outputs = ctx.outputs, None
        if (y1._version, y2._version) != ctx.output_versions:
            raise RuntimeError("ReversibleStack's outputs were modified by an inplace operation after its "
                               "forward: its backward reconstructs the activations from them")
        dy1 = torch.zeros_like(y1) if dy1 is None else dy1
        dy2 = torch.zeros_like(y2) if dy2 is None else dy2
        param_grads: list[torch.Tensor | None] = [None] * len(ctx.param_index)

        def accumulate(params, grads):
            for p, g in zip(params, grads):
                if g is None:  # a parameter this sublayer did not use
                    continue
                i = ctx.param_index[id(p)]
                param_grads[i] = g if param_grads[i] is None else param_grads[i] + g

        layers = zip(ctx.blocks, ctx.lsh_cfgs, ctx.records)
        for block, lsh_cfg, record in reversed(list(layers)):
            # y2 = x2 + FF(y1): recompute FF slice by slice (bounding its seq x d_ff hidden), which
            # gives x2 = y2 - FF(y1) and the gradient dx1 = dy1 + dy2 dFF/dy1.
            ff_params = [p for p in block.ff.parameters() if id(p) in ctx.param_index]
            ff_out = torch.empty_like(y1)
            dy1_ff = torch.empty_like(y1)
            with _maybe_replay(record.ff_rng):
                for y1_piece, dy2_piece, out_piece, grad_piece in zip(
                        y1.chunk(ctx.ff_chunks, 1), dy2.chunk(ctx.ff_chunks, 1),
                        ff_out.chunk(ctx.ff_chunks, 1), dy1_ff.chunk(ctx.ff_chunks, 1)):
                    y1_piece = y1_piece.detach().requires_grad_()
                    with torch.enable_grad():
                        ff_piece = block.ff.mlp(y1_piece)
                    grads = torch.autograd.grad(ff_piece, [y1_piece, *ff_params], dy2_piece,
                                                allow_unused=True)
                    out_piece.copy_(ff_piece.detach())
                    grad_piece.copy_(grads[0])
                    accumulate(ff_params, grads[1:])
                    del ff_piece, grads
            # Each tensor is dropped as soon as it is spent (the chunk views too: a view keeps its
            # whole buffer alive), and sums go into buffers of our own: the attention's recompute
            # and backward below run beside y1, x2, dx1 and dy2 alone (and, all through, the incoming
            # gradients of the last layer, which autograd holds until this backward returns).
            del y1_piece, dy2_piece, out_piece, grad_piece
            x2 = y2 - ff_out
            del y2, ff_out
            dx1 = dy1_ff.add_(dy1)  # dy1 + dy2 dFF/dy1
            del dy1, dy1_ff

            # y1 = x1 + Attn(x2): recompute with the forward's buckets and RNG state.
            attn_params = [p for p in block.attn.parameters() if id(p) in ctx.param_index]
            x2 = x2.requires_grad_()
            with torch.enable_grad(), _maybe_replay(record.attn_rng):
                attn_out, _ = block.attn(x2, lsh_cfg, buckets=record.buckets)
            grads = torch.autograd.grad(attn_out, [x2, *attn_params], dx1, allow_unused=True)
            x1 = y1 - attn_out.detach()
            del y1, attn_out
            dx2 = grads[0].add_(dy2)  # a fresh tensor of autograd's: ours to add into
            accumulate(attn_params, grads[1:])
            del grads, dy2
            # ruff takes these for unused: the next layer's iteration reads them (its dels confuse it).
            y1, y2, dy1, dy2 = x1, x2.detach(), dx1, dx2  # noqa: F841
        # Both streams started as x.
        return (dy1 + dy2, None, None, None, *param_grads)


# --- the models -------------------------------------------------------------------------------------

class _LanguageModel(nn.Module):
    """Shared by both models: logits and the chunked next-token loss over hidden(tokens)."""

    norm: nn.LayerNorm
    head: nn.Linear
    blocks: nn.ModuleList

    def block_list(self) -> Iterable[Block]:
        """The blocks, typed as Blocks (nn.ModuleList is not generic: its items type as Module)."""
        return cast("Iterable[Block]", self.blocks)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (batch, seq) int64 -> logits (batch, seq, vocab)."""
        return self.head(self.hidden(tokens))

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy in nats:
        -1/(B (N-1)) sum_{b, i < N-1} log softmax(logits[b, i])[tokens[b, i+1]]."""
        if tokens.dim() == 2 and tokens.shape[1] < 2:
            raise ValueError(f"loss needs sequences of at least 2 tokens, got seq={tokens.shape[1]}")
        return chunked_lm_loss(self.hidden(tokens)[:, :-1], self.head, tokens[:, 1:])


def _resolve_ff_chunks(cfg: ModelConfig, ff_chunks: int | None) -> int:
    if ff_chunks is None:
        return cfg.ff_chunks
    require_int("ff_chunks", ff_chunks, minimum=1)
    return ff_chunks


def _available_backend(name: str, allowed_kinds: tuple[str, ...]):
    """(backend, whether it hashes) for a registered backend of one of allowed_kinds."""
    kind = backend_info(name).kind
    if kind not in allowed_kinds:
        raise ValueError(f"backend={name!r} is a {kind!r} backend; this model takes "
                         f"{' or '.join(allowed_kinds)} backends")
    backend = get_backend(name)
    ok, reason = backend.available()
    if not ok:
        raise ValueError(f"backend={name!r} is not available here: {reason}")
    return backend, kind == "lsh"


class ReformerLM(_LanguageModel):
    """Reformer language model: embedding, `layers` reversible blocks over two streams started as
    x1 = x2 = embedding, LayerNorm over [y1 ; y2] (2 * d_model), LM head 2 * d_model -> vocab.

    backend: an LSH backend of the registry (eager, compiled, triton), or dense / sdpa for a
    reversible Transformer with full attention. reversible=False wires the same blocks and
    parameters as plain residuals under ordinary autograd (same function, memory linear in depth).
    ff_chunks overrides cfg.ff_chunks.
    """

    def __init__(self, cfg: ModelConfig, backend: str = "eager", reversible: bool = True,
                 ff_chunks: int | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
        if not isinstance(reversible, bool):
            raise ValueError(f"reversible must be a bool, got reversible={reversible!r}")
        self.cfg = cfg
        self.backend, self.hashes = _available_backend(backend, ("lsh", "dense"))
        self.reversible = reversible
        self.ff_chunks = _resolve_ff_chunks(cfg, ff_chunks)
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg, self.backend, self.hashes) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(2 * cfg.d_model)
        self.head = nn.Linear(2 * cfg.d_model, cfg.vocab)
        self.apply(_init_weights)

    def lsh_configs(self, seq_len: int) -> list[LSHConfig]:
        if not self.hashes:  # full attention reads only `causal`
            return [LSHConfig(causal=self.cfg.causal)] * self.cfg.layers
        return [self.cfg.lsh_config(i, seq_len) for i in range(self.cfg.layers)]

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (batch, seq) -> LN([y1 ; y2]) (batch, seq, 2 * d_model)."""
        x = self.embed(tokens)
        lsh_cfgs = self.lsh_configs(tokens.shape[1])
        params = [p for p in self.blocks.parameters() if p.requires_grad]
        if self.reversible and torch.is_grad_enabled() and (x.requires_grad or params):
            y1, y2 = ReversibleStack.apply(x, list(self.blocks), lsh_cfgs, self.ff_chunks, *params)
        else:
            y1 = y2 = x
            for block, lsh_cfg in zip(self.block_list(), lsh_cfgs):
                y1 = y1 + block.attn(y2, lsh_cfg)[0]
                y2 = y2 + block.ff(y1, self.ff_chunks)
        return self.norm(torch.cat([y1, y2], dim=-1))


class TransformerLM(_LanguageModel):
    """Dense baseline: pre-norm Transformer, x += Attn(LN(x)); x += FF(LN(x)), final LN, LM head
    d_model -> vocab; same widths and sublayers as ReformerLM, attention through `sdpa` or `dense`."""

    def __init__(self, cfg: ModelConfig, backend: str = "sdpa", ff_chunks: int | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.backend, _ = _available_backend(backend, ("dense",))
        self.ff_chunks = _resolve_ff_chunks(cfg, ff_chunks)
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg, self.backend, False) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab)
        self.attn_cfg = LSHConfig(causal=cfg.causal)  # full attention reads only `causal`
        self.apply(_init_weights)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.block_list():
            x = x + block.attn(x, self.attn_cfg)[0]
            x = x + block.ff(x, self.ff_chunks)
        return self.norm(x)


def build_model(backend: str, cfg: ModelConfig, reversible: bool | None = None) -> nn.Module:
    """The language model a benchmark of `backend` trains: a module with forward(tokens) and
    loss(tokens). A backend registered with its own `model` builder (a peer's whole LM) gets that;
    otherwise ReformerLM (reversible unless reversible=False) for an LSH backend, and for a dense
    one TransformerLM, or ReformerLM with full attention when `reversible` is given."""
    info = backend_info(backend)
    if info.model is not None:
        return info.model(cfg, reversible)
    if info.kind == "lsh" or reversible is not None:
        return ReformerLM(cfg, backend=backend, reversible=True if reversible is None else reversible)
    return TransformerLM(cfg, backend=backend)


# --- loss -------------------------------------------------------------------------------------------

def chunked_lm_loss(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor,
                    block_elements: int = LOSS_BLOCK_ELEMENTS) -> torch.Tensor:
    """Mean cross-entropy of head(hidden) against targets, at most ~block_elements logits at a time.

    hidden (batch, n, d), targets (batch, n) int64. With more than one slice each slice runs under
    activation checkpointing: its logits are rebuilt in the backward instead of kept, so neither
    pass holds batch x n x vocab logits.
    """
    batch, n, _ = hidden.shape
    positions = max(1, block_elements // (batch * head.out_features))
    if positions >= n:
        return _summed_cross_entropy(hidden, targets, head) / targets.numel()
    total: torch.Tensor | None = None
    for h_piece, t_piece in zip(hidden.split(positions, dim=1), targets.split(positions, dim=1)):
        if torch.is_grad_enabled():
            piece = checkpoint(_summed_cross_entropy, h_piece, t_piece, head, use_reentrant=False)
        else:
            piece = _summed_cross_entropy(h_piece, t_piece, head)
        total = piece if total is None else total + piece
    assert total is not None  # positions < n: at least one piece
    return total / targets.numel()


def _summed_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Linear) -> torch.Tensor:
    logits = head(hidden)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
