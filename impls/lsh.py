"""Shared LSH machinery: rotations, hashing, sort / undo-sort, masks, round combining.

Every LSH backend calls these functions, so for one seed all backends see the same buckets and
the same sorted order; backends differ only in how they compute attention within chunks.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .config import LSHConfig
from .phases import phase

# Score given to a token attending to itself: strongly discouraged but finite, so a token with no
# other target (the first causal position) still attends to itself (trax, Hugging Face).
SELF_MASK = {torch.float32: -1e5, torch.float64: -1e5, torch.bfloat16: -1e5, torch.float16: -1e3}
# Score given to a key in the future of a causal query; far below SELF_MASK so self always wins.
CAUSAL_MASK = {torch.float32: -1e9, torch.float64: -1e9, torch.bfloat16: -1e9, torch.float16: -1e4}
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def mask_values(dtype: torch.dtype) -> tuple[float, float]:
    """(self-mask, causal-mask) constants that are finite in `dtype`."""
    return SELF_MASK[dtype], CAUSAL_MASK[dtype]


def check_inputs(qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig) -> int:
    """Validate attend() inputs; return the chunk length for their sequence length."""
    if not isinstance(cfg, LSHConfig):
        raise ValueError(f"cfg must be an LSHConfig, got {type(cfg).__name__}")
    check_dense_inputs(qk, v)
    return cfg.resolve_chunk_len(qk.shape[2])


def check_dense_inputs(qk: torch.Tensor, v: torch.Tensor) -> None:
    if qk.dim() != 4:
        raise ValueError(f"qk must be (batch, heads, seq, d_head), got qk.shape={tuple(qk.shape)}")
    if v.shape != qk.shape:
        raise ValueError(f"v.shape={tuple(v.shape)} does not match qk.shape={tuple(qk.shape)}")
    if v.dtype != qk.dtype:
        raise ValueError(f"v.dtype={v.dtype} does not match qk.dtype={qk.dtype}")
    if qk.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"qk.dtype={qk.dtype} is not supported; use one of {SUPPORTED_DTYPES}")
    if v.device != qk.device:
        raise ValueError(f"v.device={v.device} does not match qk.device={qk.device}")


# Rotations are cached: drawn per call they cost heads x d_head x n_hashes x n_buckets/2 normals
# on the CPU and a copy from pageable memory to the device, which waits for the device. An entry
# grows with n_buckets and a sweep moves from shape to shape, so the cache is bounded and evicts the
# least recently used: by entries, as many as a deep model has layers (layer i hashes with seed + i:
# fewer entries than layers would draw every layer's rotations on every call), and by bytes (an entry
# at a million tokens is tens of MiB); the newest entry always stays.
ROTATION_CACHE_SIZE = 64
ROTATION_CACHE_BYTES = 256 << 20
_ROTATION_CACHE: OrderedDict[tuple, tuple[torch.Tensor, int]] = OrderedDict()
_ROTATION_LOCK = threading.Lock()


def _concrete_device(device) -> torch.device:
    """`device` with its index, so that "cuda" and "cuda:0" share an entry and a change of the
    current device does not hand out another device's tensor."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.index is None and device.type not in ("cpu", "meta"):
        device = torch.empty(0, device=device).device
    return device


def _shared_rotations(cfg: LSHConfig, heads: int, d_head: int, device=None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The cached rotations, one tensor shared by every caller of this module: read, never write.
    An in-place write would still be noticed (the tensor's version counter moves) and the entry
    drawn again, so a mistake costs a draw, not wrong buckets."""
    device = _concrete_device(device)
    key = (cfg.seed, heads, d_head, cfg.n_hashes, cfg.n_buckets // 2, device, dtype)
    with _ROTATION_LOCK:
        entry = _ROTATION_CACHE.get(key)
        if entry is not None and entry[0]._version == entry[1]:
            _ROTATION_CACHE.move_to_end(key)
            return entry[0]
        # Outside inference mode: an inference tensor has no version counter to check.
        with torch.inference_mode(False), torch.no_grad():
            gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
            rot = torch.randn((heads, d_head, cfg.n_hashes, cfg.n_buckets // 2), generator=gen,
                              dtype=torch.float32).to(device=device, dtype=dtype)
        _ROTATION_CACHE[key] = (rot, rot._version)
        _ROTATION_CACHE.move_to_end(key)
        def held() -> int:
            return sum(t.numel() * t.element_size() for t, _ in _ROTATION_CACHE.values())

        while len(_ROTATION_CACHE) > 1 and (len(_ROTATION_CACHE) > ROTATION_CACHE_SIZE
                                            or held() > ROTATION_CACHE_BYTES):
            _ROTATION_CACHE.popitem(last=False)
        return rot


def random_rotations(cfg: LSHConfig, heads: int, d_head: int, device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """R ~ N(0, 1) of shape (heads, d_head, n_hashes, n_buckets // 2), seeded by cfg.seed.

    Drawn on the CPU and then moved, so that one seed gives the same rotations on every device.
    Cached per (seed, shape, device, dtype); the caller gets its own copy (a copy on the device,
    not a new draw), free to modify.
    """
    return _shared_rotations(cfg, heads, d_head, device, dtype).clone()


# Projection elements materialised at once while hashing. With n_buckets = 2 * seq / chunk_len the
# projection is seq x n_buckets/2 per round, quadratic in seq if built whole, so it is built in
# blocks of sequence positions: on the CPU blocks of HASH_BLOCK_ELEMENTS (cache-sized). On CUDA a
# block costs several kernel launches whatever its size, so blocks grow beyond HASH_BLOCK_ELEMENTS
# until a call has at most HASH_MAX_BLOCKS of them, unless a block would pass HASH_BLOCK_LIMIT
# (1 GiB of fp32), where memory wins and the number of blocks grows again.
HASH_BLOCK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 24}
HASH_MAX_BLOCKS = {"cuda": 16}
HASH_BLOCK_LIMIT = {"cuda": 1 << 28}


def hash_block_plan(batch: int, heads: int, seq_len: int, n_hashes: int, n_buckets: int,
                    device_type: str) -> tuple[int, int]:
    """(positions per block, number of blocks) of hash_buckets on a device of `device_type`; every
    block is one projection matmul."""
    for name, value in (("batch", batch), ("heads", heads), ("seq_len", seq_len), ("n_hashes", n_hashes),
                        ("n_buckets", n_buckets)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {name}={value}")
    per_position = batch * heads * n_hashes * (n_buckets // 2)
    least = max(1, HASH_BLOCK_ELEMENTS.get(device_type, HASH_BLOCK_ELEMENTS["cpu"]) // per_position)
    if device_type not in HASH_MAX_BLOCKS:
        positions = min(seq_len, least)
        return positions, -(-seq_len // positions)
    most = max(1, HASH_BLOCK_LIMIT[device_type] // per_position)
    positions = min(seq_len, most, max(least, -(-seq_len // HASH_MAX_BLOCKS[device_type])))
    n_blocks = -(-seq_len // positions)
    return -(-seq_len // n_blocks), n_blocks  # blocks of equal size rather than a short last one


def bucket_of_projection(proj: torch.Tensor) -> torch.Tensor:
    """argmax([p ; -p]) over the last dim of p = x R, without building the concatenation: argmax(p)
    where max(p) >= -min(p) (ties go to the first half, as argmax's first-occurrence rule does on
    the concatenation), else n_buckets/2 + argmin(p)."""
    top, top_idx = proj.max(dim=-1)
    bottom, bottom_idx = proj.min(dim=-1)
    return torch.where(top >= -bottom, top_idx, bottom_idx + proj.shape[-1])


def hash_buckets(qk: torch.Tensor, cfg: LSHConfig, bucket_of=bucket_of_projection) -> torch.Tensor:
    """bucket = argmax([x R ; -x R]) per round: (batch, heads, n_hashes, seq) int64.

    Hashing runs in float32 whatever the input dtype, so half-precision inputs hash like fp32 ones
    (a bf16 projection can flip the argmax between near-tied directions). All batches and heads are
    projected together, in blocks of sequence positions. bucket_of: bucket_of_projection or a
    function with the same result (the compiled backend passes its compiled form).
    """
    batch, heads, seq_len, d_head = qk.shape
    n_rounds, half = cfg.n_hashes, cfg.n_buckets // 2
    rot = _shared_rotations(cfg, heads, d_head, device=qk.device).reshape(heads, d_head, n_rounds * half)
    if batch > 1:
        rot = rot.repeat(batch, 1, 1)  # (B*H, d, R*half): one bmm for all batches and heads
    buckets = torch.empty(batch, heads, n_rounds, seq_len, dtype=torch.int64, device=qk.device)
    positions_per_block, _ = hash_block_plan(batch, heads, seq_len, n_rounds, cfg.n_buckets, qk.device.type)
    # One projection buffer for every block, written by bmm in place: a fresh result per block
    # (torch.matmul) made hashing slower on the CPU (docs/DESIGN.md, "Tuned constants").
    store = torch.empty(batch * heads * positions_per_block * n_rounds * half, dtype=torch.float32,
                        device=qk.device)
    with torch.no_grad():
        x = qk.detach()
        for s0 in range(0, seq_len, positions_per_block):
            s1 = min(seq_len, s0 + positions_per_block)
            proj = store[:batch * heads * (s1 - s0) * n_rounds * half].view(batch * heads, s1 - s0, n_rounds * half)
            # Per block: a transposed input (the model's projections) is copied a block at a time.
            torch.bmm(x[:, :, s0:s1].float().reshape(batch * heads, s1 - s0, d_head), rot, out=proj)
            block = bucket_of(proj.view(batch, heads, s1 - s0, n_rounds, half))  # (B, H, n, R)
            buckets[:, :, :, s0:s1] = block.transpose(2, 3)
    return buckets


@dataclass
class SortedOrder:
    """The (round, bucket, position) sort of one call, shared by forward and backward.

    perm[b, h, r, i]: the original position at sorted slot i of round r.
    rank[b, h, r, p]: the sorted slot of original position p in round r (perm's inverse).
    """

    buckets: torch.Tensor  # (B, H, R, N) int64
    perm: torch.Tensor  # (B, H, R, N) int64
    rank: torch.Tensor  # (B, H, R, N) int64
    chunk_len: int

    @property
    def n_chunks(self) -> int:
        return self.perm.shape[-1] // self.chunk_len


def sort_by_buckets(buckets: torch.Tensor, chunk_len: int) -> SortedOrder:
    """Stable sort of every round by (bucket, position)."""
    if buckets.dim() != 4 or buckets.dtype != torch.int64:
        raise ValueError(f"buckets must be (batch, heads, n_hashes, seq) int64, got "
                         f"shape={tuple(buckets.shape)} dtype={buckets.dtype}")
    seq_len = buckets.shape[-1]
    positions = torch.arange(seq_len, device=buckets.device)
    # bucket * seq + position is unique per round, so a plain sort of it is the stable sort.
    keys = buckets * seq_len + positions
    perm = keys.argsort(dim=-1)
    rank = torch.empty_like(perm)
    rank.scatter_(-1, perm, positions.expand_as(perm).contiguous())
    return SortedOrder(buckets=buckets, perm=perm, rank=rank, chunk_len=chunk_len)


def sorted_order(qk: torch.Tensor, v: torch.Tensor, cfg: LSHConfig,
                 buckets: torch.Tensor | None = None, bucket_of=bucket_of_projection) -> SortedOrder:
    """What every LSH backend does first: validate the inputs, hash (unless `buckets` replays an
    earlier hashing, as a reversible layer's backward does) and sort every round."""
    chunk_len = check_inputs(qk, v, cfg)
    if buckets is None:
        with phase("lsh.hash"):
            buckets = hash_buckets(qk, cfg, bucket_of)
    with phase("lsh.sort"):
        return sort_by_buckets(buckets, chunk_len)


def window_chunks(n_chunks: int) -> int:
    """How many chunks a query chunk attends to: itself and the previous one (circularly within
    the round), or only itself when a round is one chunk (its 'previous' chunk would be itself)."""
    return 1 if n_chunks == 1 else 2


def dedup_counts(rank_rows: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                 chunk_len: int, n_chunks: int) -> torch.Tensor:
    """N_ij of paper Eq. 16: in how many rounds key j lies in query i's window.

    rank_rows: (G, R, N) sorted slot of every original position in every round, one row per
    query row of the block; q_pos: (G, ..., C) and k_pos: (G, ..., K) original positions of the
    block's queries and their window keys. Returns int32 counts (G, ..., C, K); every pair that is
    in a window in the current round counts that round, so counts there are >= 1.
    """
    g = rank_rows.shape[0]
    counts: torch.Tensor | None = None
    for r in range(rank_rows.shape[1]):
        rank = rank_rows[:, r]
        q_chunk = (rank.gather(1, q_pos.reshape(g, -1)).view(q_pos.shape) // chunk_len).unsqueeze(-1)
        k_chunk = (rank.gather(1, k_pos.reshape(g, -1)).view(k_pos.shape) // chunk_len).unsqueeze(-2)
        in_window = k_chunk == q_chunk
        if n_chunks > 1:
            in_window |= k_chunk == (q_chunk - 1) % n_chunks
        counts = in_window.to(torch.int32) if counts is None else counts + in_window
    if counts is None:
        raise ValueError(f"rank_rows must hold at least one round, got shape {tuple(rank_rows.shape)}")
    return counts


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics are kept in float32 (float64 for float64 inputs)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
