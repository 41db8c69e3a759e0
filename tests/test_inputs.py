"""harness.inputs: the registry of attention inputs, and clustered inputs (deterministic, shaped as asked,
and peaked where randn is not)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.inputs import INPUTS, get_inputs, register_inputs
from harness.inputs.clustered import clustered_inputs
from harness.measure.fidelity import attention_mass_recall, relative_error
from impls import LSHConfig, get_backend

# The suite's 64 keys per centre at CI size: 1,024 tokens around 16 centres.
SHAPE = {"batch": 1, "heads": 2, "seq_len": 1024, "d_head": 64}
CENTRES = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def clustered(seed=0, **kwargs):
    return clustered_inputs(**SHAPE, generator=torch.Generator().manual_seed(seed),
                            **{"n_centres": CENTRES, **kwargs})


def randn(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(SHAPE.values())
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


def test_shapes_dtype_norm_and_determinism():
    qk, v = clustered()
    assert qk.shape == v.shape == tuple(SHAPE.values()) and qk.dtype == v.dtype == torch.float32
    torch.testing.assert_close(qk.norm(dim=-1), torch.full(qk.shape[:-1], 12.0))  # the default norm
    again = clustered()
    assert torch.equal(qk, again[0]) and torch.equal(v, again[1])
    assert not torch.equal(qk, clustered(seed=1)[0])
    assert clustered_inputs(1, 1, 8, 4, torch.Generator(), dtype=torch.float64)[0].dtype == torch.float64


def test_tokens_gather_around_few_directions():
    qk, _ = clustered()
    unit = F.normalize(qk[0, 0].double(), dim=-1)
    cos = unit @ unit.T
    # Each token's nearest other token is a centre-mate (cos ~ 1 / (1 + spread^2)); on randn the
    # nearest of 1,023 random directions in 64 dimensions is far less aligned.
    nearest = cos.fill_diagonal_(-1).max(dim=-1).values
    r_unit = F.normalize(randn()[0][0, 0].double(), dim=-1)
    r_nearest = (r_unit @ r_unit.T).fill_diagonal_(-1).max(dim=-1).values
    assert nearest.min() > 0.8 > 0.6 > r_nearest.max()


def test_dense_attention_is_peaked():
    qk, _ = clustered()
    r_qk, _ = randn()

    def effective_keys(x):  # exp(entropy) of the dense attention of the first 256 queries of head 0
        keys = F.normalize(x[0, 0].double(), dim=-1)
        scores = x[0, 0, :256].double() @ keys.T
        scores[torch.arange(256), torch.arange(256)] = -1e5
        p = scores.softmax(dim=-1)
        return float((-(p * p.clamp_min(1e-300).log()).sum(dim=-1)).exp().median())

    assert effective_keys(qk) < 2 * SHAPE["seq_len"] / CENTRES  # about one centre's keys
    assert effective_keys(r_qk) > SHAPE["seq_len"] / 2  # nearly uniform


def test_lsh_recalls_more_and_errs_less_than_on_randn():
    cfg = LSHConfig(n_buckets=32, n_hashes=2, chunk_len=64, seed=0)  # 16 chunks per round
    eager, dense = get_backend("eager"), get_backend("dense")
    results = {}
    for name, (qk, v) in (("clustered", clustered()), ("randn", randn())):
        out = eager.attend(qk, v, cfg)
        results[name] = (attention_mass_recall(qk, cfg), relative_error(out, dense.attend(qk, v, cfg)))
    assert results["clustered"][0] > 2 * results["randn"][0]
    assert results["clustered"][1] < 1.0 < results["randn"][1]


def test_more_rounds_recall_more_and_err_less():
    qk, v = clustered()
    dense = get_backend("dense").attend(qk, v, LSHConfig())
    figures = []
    for n_hashes in (1, 2, 4):
        cfg = LSHConfig(n_buckets=32, n_hashes=n_hashes, chunk_len=64, seed=0)
        out = get_backend("eager").attend(qk, v, cfg)
        figures.append((attention_mass_recall(qk, cfg), relative_error(out, dense)))
    recalls, errors = zip(*figures)
    assert recalls[0] < recalls[1] < recalls[2] and errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("kwargs, key", [
    ({"n_centres": 0}, "n_centres"), ({"seq_len": 2.0}, "seq_len"), ({"spread": -0.1}, "spread"),
    ({"norm": "12"}, "norm"), ({"generator": None}, "generator"),
])
def test_bad_arguments_are_one_line_value_errors(kwargs, key):
    args = {**SHAPE, "generator": torch.Generator(), **kwargs}
    with pytest.raises(ValueError, match=key) as err:
        clustered_inputs(**args)
    assert "\n" not in str(err.value)


def test_the_registry_holds_the_built_in_inputs_and_draws_them_as_the_workload_did():
    assert list(INPUTS)[:2] == ["randn", "clustered"]
    shape = (1, 2, 16, 8)
    generator = torch.Generator().manual_seed(3)
    qk, v = get_inputs("randn")(shape, seed=3, dtype=torch.float32, device="cpu", generator=generator)
    again = torch.Generator().manual_seed(3)
    assert torch.equal(qk, torch.randn(shape, generator=again)) and torch.equal(v, torch.randn(shape, generator=again))
    qk, _ = get_inputs("clustered")(shape, seed=3, dtype=torch.float64, device="cpu", generator=generator)
    assert torch.equal(qk, clustered_inputs(*shape, torch.Generator().manual_seed(3), dtype=torch.float64)[0])
    with pytest.raises(ValueError, match="unknown inputs 'nope'"):
        get_inputs("nope")
    with pytest.raises(ValueError, match="identifier"):
        register_inputs("no name", lambda *a, **k: None)


def test_registered_inputs_reach_the_attention_workload_and_the_suite_check(tmp_path):
    from harness.measure.workload import AttentionWorkload
    from harness.suite import load_suite

    def ones(shape, *, seed, dtype, device, generator):
        return torch.ones(shape, dtype=dtype, device=device), torch.full(shape, 2.0, dtype=dtype, device=device)

    path = tmp_path / "s.toml"
    path.write_text('[defaults]\nbackend = "dense"\nseq_len = 16\ninputs = "ones_for_test"\n')
    with pytest.raises(Exception, match="inputs must be"):
        load_suite(path)
    register_inputs("ones_for_test", ones)
    try:
        (case,) = load_suite(path).cases
        workload = AttentionWorkload(case)
        assert torch.equal(workload.qk, torch.ones_like(workload.qk)) and float(workload.v[0, 0, 0, 0]) == 2.0
    finally:
        del INPUTS["ones_for_test"]
