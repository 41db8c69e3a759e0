"""impls.lsh's rotation cache and hashing block plan: cached rotations are the seeded draw, bounded,
safe to modify; the CUDA plan bounds the projection matmuls of a call and hashes like the CPU plan."""
from __future__ import annotations

import pytest
import torch

import impls.lsh as lsh
from impls import LSHConfig
from impls.lsh import hash_block_plan, hash_buckets, random_rotations


def _fresh(cfg: LSHConfig, heads: int, d_head: int) -> torch.Tensor:
    """The contract's draw, written out: float32 normals from a CPU generator seeded by cfg.seed."""
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    return torch.randn((heads, d_head, cfg.n_hashes, cfg.n_buckets // 2), generator=gen, dtype=torch.float32)


@pytest.fixture(autouse=True)
def empty_cache():
    lsh._ROTATION_CACHE.clear()
    yield
    lsh._ROTATION_CACHE.clear()


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("device", _devices())
def test_cached_rotations_are_the_seeded_cpu_draw_on_every_device(device, dtype):
    cfg = LSHConfig(n_buckets=12, n_hashes=3, seed=17)
    want = _fresh(cfg, heads=2, d_head=8).to(dtype)
    first = random_rotations(cfg, heads=2, d_head=8, device=device, dtype=dtype)
    cached = random_rotations(cfg, heads=2, d_head=8, device=device, dtype=dtype)
    assert len(lsh._ROTATION_CACHE) == 1
    assert first.dtype == dtype and first.device.type == device
    assert torch.equal(first.cpu(), want) and torch.equal(cached.cpu(), want)


def test_cache_key_separates_seed_shape_and_dtype():
    cfg = LSHConfig(n_buckets=8, n_hashes=2, seed=1)
    base = random_rotations(cfg, heads=2, d_head=4)
    assert not torch.equal(random_rotations(LSHConfig(n_buckets=8, n_hashes=2, seed=2), heads=2, d_head=4), base)
    assert random_rotations(cfg, heads=3, d_head=4).shape == (3, 4, 2, 4)
    assert random_rotations(LSHConfig(n_buckets=10, n_hashes=2, seed=1), heads=2, d_head=4).shape == (2, 4, 2, 5)
    assert random_rotations(cfg, heads=2, d_head=4, dtype=torch.float64).dtype == torch.float64
    assert len(lsh._ROTATION_CACHE) == 5


def test_cache_is_a_bounded_lru(monkeypatch):
    monkeypatch.setattr(lsh, "ROTATION_CACHE_SIZE", 3)
    cfgs = [LSHConfig(n_buckets=4, n_hashes=1, seed=s) for s in range(5)]
    for cfg in cfgs[:3]:
        random_rotations(cfg, heads=1, d_head=4)
    random_rotations(cfgs[0], heads=1, d_head=4)  # seed 0 is now the most recently used
    for cfg in cfgs[3:]:
        random_rotations(cfg, heads=1, d_head=4)
    assert sorted(key[0] for key in lsh._ROTATION_CACHE) == [0, 3, 4]


def test_a_caller_may_modify_its_rotations():
    cfg = LSHConfig(n_buckets=8, n_hashes=2, seed=3)
    mine = random_rotations(cfg, heads=2, d_head=4)
    mine.mul_(0)
    assert torch.equal(random_rotations(cfg, heads=2, d_head=4), _fresh(cfg, 2, 4))


def test_a_write_to_the_shared_tensor_is_noticed_and_redrawn():
    qk = torch.randn(1, 2, 64, 8, generator=torch.Generator().manual_seed(0))
    cfg = LSHConfig(n_buckets=8, n_hashes=2, seed=4)
    buckets = hash_buckets(qk, cfg)
    lsh._shared_rotations(cfg, heads=2, d_head=8).neg_()  # against the rule: the cache must notice
    assert torch.equal(lsh._shared_rotations(cfg, heads=2, d_head=8), _fresh(cfg, 2, 8))
    assert torch.equal(hash_buckets(qk, cfg), buckets)


def test_hashing_again_draws_no_normals(monkeypatch):
    qk = torch.randn(2, 2, 64, 8, generator=torch.Generator().manual_seed(0))
    cfg = LSHConfig(n_buckets=8, n_hashes=2, seed=5)
    first = hash_buckets(qk, cfg)
    draws = []
    real_randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: draws.append(a) or real_randn(*a, **k))
    assert torch.equal(hash_buckets(qk, cfg), first)
    assert draws == []


# --- hashing block plan -------------------------------------------------------------------------

def test_cpu_plan_is_blocks_of_hash_block_elements():
    """The CPU plan as before the CUDA plan existed: as many positions as fit HASH_BLOCK_ELEMENTS."""
    for batch, heads, seq, rounds, buckets in ((1, 4, 4096, 4, 128), (2, 8, 65536, 4, 2048), (1, 1, 64, 1, 2)):
        per_position = batch * heads * rounds * (buckets // 2)
        positions = min(seq, max(1, lsh.HASH_BLOCK_ELEMENTS["cpu"] // per_position))
        assert hash_block_plan(batch, heads, seq, rounds, buckets, "cpu") == (positions, -(-seq // positions))


@pytest.mark.parametrize("name", ["batch", "heads", "seq_len", "n_hashes", "n_buckets"])
def test_plan_rejects_sizes_below_one(name):
    sizes = {"batch": 1, "heads": 1, "seq_len": 64, "n_hashes": 1, "n_buckets": 2, name: 0}
    with pytest.raises(ValueError, match=f"{name}=0"):
        hash_block_plan(**sizes, device_type="cuda")


def _profiled_bmm_calls(monkeypatch, batch: int, heads: int, seq: int, rounds: int, buckets: int) -> int:
    """aten::bmm calls of hash_buckets under the CUDA plan, on meta tensors (no data, any size)."""
    real_plan = lsh.hash_block_plan
    monkeypatch.setattr(lsh, "hash_block_plan", lambda *args: real_plan(*args[:-1], "cuda"))
    qk = torch.empty(batch, heads, seq, 64, device="meta")
    cfg = LSHConfig(n_buckets=buckets, n_hashes=rounds)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        hash_buckets(qk, cfg)
    return sum(1 for event in prof.events() if event.name == "aten::bmm")


@pytest.mark.slow
@pytest.mark.parametrize("seq", [65536, 1 << 20])
def test_cuda_plan_bounds_the_projection_matmuls(monkeypatch, seq):
    """4 heads, 4 rounds, chunk_len 64 (n_buckets = 2 seq / 64, the scaling suite): at 64K tokens the
    call makes HASH_MAX_BLOCKS matmuls (64 blocks of HASH_BLOCK_ELEMENTS before); at 1M tokens the
    block limit binds and the count is the projection over HASH_BLOCK_LIMIT (16384 before)."""
    heads, rounds, buckets = 4, 4, 2 * seq // 64
    total = seq * heads * rounds * (buckets // 2)
    positions, n_blocks = hash_block_plan(1, heads, seq, rounds, buckets, "cuda")
    assert _profiled_bmm_calls(monkeypatch, 1, heads, seq, rounds, buckets) == n_blocks
    assert positions * heads * rounds * (buckets // 2) <= lsh.HASH_BLOCK_LIMIT["cuda"]
    if seq == 65536:
        assert n_blocks == lsh.HASH_MAX_BLOCKS["cuda"]
    else:
        assert n_blocks == -(-total // lsh.HASH_BLOCK_LIMIT["cuda"])
        assert n_blocks < total // lsh.HASH_BLOCK_ELEMENTS["cuda"]


@pytest.mark.parametrize("limit_positions, plan", [(1000, (13, 16)), (10, (10, 20))])
def test_cuda_plan_hashes_like_the_cpu_plan(monkeypatch, limit_positions, plan):
    """The CUDA plan, shrunk so that a small call has several blocks (bounded by HASH_MAX_BLOCKS,
    then by HASH_BLOCK_LIMIT), run on CPU tensors, gives the CPU plan's buckets: blocks change
    launches, never buckets."""
    qk = torch.randn(2, 3, 200, 16, generator=torch.Generator().manual_seed(0))
    cfg = LSHConfig(n_buckets=16, n_hashes=3, seed=9)
    want = hash_buckets(qk, cfg)
    real_plan = lsh.hash_block_plan
    monkeypatch.setattr(lsh, "hash_block_plan", lambda *args: real_plan(*args[:-1], "cuda"))
    monkeypatch.setitem(lsh.HASH_BLOCK_ELEMENTS, "cuda", 1)
    monkeypatch.setitem(lsh.HASH_BLOCK_LIMIT, "cuda", 2 * 3 * 3 * 8 * limit_positions)
    assert real_plan(2, 3, 200, 3, 16, "cuda") == plan
    assert torch.equal(hash_buckets(qk, cfg), want)


def test_cache_is_bounded_by_bytes_and_keeps_the_newest(monkeypatch):
    monkeypatch.setattr(lsh, "ROTATION_CACHE_BYTES", 3 * 1 * 4 * 1 * 2 * 4)  # three entries of 32 bytes
    for seed in range(5):
        random_rotations(LSHConfig(n_buckets=4, n_hashes=1, seed=seed), heads=1, d_head=4)
    assert sorted(key[0] for key in lsh._ROTATION_CACHE) == [2, 3, 4]
    monkeypatch.setattr(lsh, "ROTATION_CACHE_BYTES", 1)  # smaller than any entry: the newest still stays
    random_rotations(LSHConfig(n_buckets=4, n_hashes=1, seed=9), heads=1, d_head=4)
    assert [key[0] for key in lsh._ROTATION_CACHE] == [9]
