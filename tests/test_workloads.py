"""Workloads beyond one attention call: a layer with its projections and a whole language model, for our
backends and the peers alike; model keys swept like case parameters; buckets replayed; the summary view."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UserError
from harness.run.worker import run_case
from harness.suite import load_suite
from harness.views.summary import comparisons, growth, summary_text

SUITE = """
[suite]
threads = 1
count_flops = {count_flops}
fidelity = false

[defaults]
chunk_len = 16
n_hashes = 2
heads = 2
d_head = 16
repeats = 1
warmup = 0
{defaults}
{seq_len}

[sweep]
{sweep}

[model]
vocab = 32
d_model = 32
heads = 2
d_ff = 64
layers = 2
"""


def _suite(tmp_path: Path, defaults: str = "", sweep: str = "", count_flops: str = "false"):
    path = tmp_path / "workloads.toml"
    seq_len = "" if "seq_len" in defaults else "seq_len = 128"
    path.write_text(SUITE.format(defaults=defaults, sweep=sweep, count_flops=count_flops, seq_len=seq_len))
    return load_suite(path)


@pytest.mark.parametrize("backend", ["eager", "hf_lsh", "reformer_pytorch"])
def test_layer_workload_runs_for_ours_and_the_peers(tmp_path, backend):
    pytest.importorskip({"eager": "torch", "hf_lsh": "transformers", "reformer_pytorch": "reformer_pytorch"}[backend])
    suite = _suite(tmp_path, 'workload = "layer"\nmode = "forward_backward"', f'backend = ["{backend}"]')
    row = run_case(suite.cases[0])
    assert row["status"] == "ok", row["reason"]
    assert row["workload"] == "layer" and row["mem_peak_bytes"] > 0 and row["time_median_s"] > 0
    assert row["flops_analytic"] is None  # projections: no formula of ours covers a peer's layer
    if backend != "eager":
        assert row["peer"].split()[0] in ("transformers", "reformer-pytorch")


@pytest.mark.parametrize("backend", ["eager", "hf_lsh", "reformer_pytorch"])
def test_model_workload_is_each_backends_own_language_model(tmp_path, backend):
    pytest.importorskip({"eager": "torch", "hf_lsh": "transformers", "reformer_pytorch": "reformer_pytorch"}[backend])
    suite = _suite(tmp_path, 'workload = "model"\nmode = "forward_backward"\ncausal = true', f'backend = ["{backend}"]')
    case = suite.cases[0]
    assert (case.heads, case.d_head) == (2, 16)  # from [model]
    row = run_case(case)
    assert row["status"] == "ok", row["reason"]
    # forward_backward of a model: loss.backward(), no optimizer state in what lived before the call
    assert row["mem_peak_bytes"] > 0


def test_model_keys_are_swept_and_named_in_rows(tmp_path):
    suite = _suite(tmp_path, 'workload = "model"\nmode = "forward_backward"\nbackend = "eager"',
                   "model.layers = [1, 2]\nmodel.reversible = [true, false]")
    models = sorted((c.model["layers"], c.model["reversible"]) for c in suite.cases)
    assert models == [(1, False), (1, True), (2, False), (2, True)]
    assert len({c.case_id for c in suite.cases}) == 4


def test_flops_of_a_compiled_model_are_counted_on_the_eager_path(tmp_path):
    # Without compiling anything: the measurement's counting workload is the same case on flops_via.
    import impls
    from harness.measure.stages import Context, measure_flops
    from harness.measure.workload import build_workload

    suite = _suite(tmp_path, 'workload = "model"\nmode = "forward_backward"', 'backend = ["compiled", "eager"]',
                   count_flops="true")
    cases = {c.backend: c for c in suite.cases}
    counted = {}
    for name, case in cases.items():
        ctx = Context(case=case, workload=build_workload(case) if name == "eager" else None, device="cpu",
                      info=impls.backend_info(name), row={"time_median_s": 1.0})
        if name == "compiled":
            assert ctx.counting_workload().backend_name == "eager"
            ctx.workload = ctx.counting_workload()
        counted[name] = measure_flops(ctx)["flops_counted"]
    assert counted["compiled"] == counted["eager"] > 0


def test_replayed_buckets_time_the_attention_alone(tmp_path):
    suite = _suite(tmp_path, 'mode = "forward"\nbackend = "eager"\nseq_len = 512', "replay_buckets = [true, false]")
    rows = {c.replay_buckets: run_case(c) for c in suite.cases}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows[True]["replay_buckets"] is True and rows[False]["replay_buckets"] is False
    # A replayed call hashes nothing: its analytic count is the attention's alone.
    case = suite.cases[0]
    hashing = 2 * case.batch * case.heads * case.seq_len * case.d_head * case.n_hashes * (case.n_buckets // 2)
    assert rows[False]["flops_analytic"] - rows[True]["flops_analytic"] == hashing > 0


@pytest.mark.parametrize("defaults, sweep, message", [
    ('replay_buckets = true', 'backend = ["dense"]', "replay_buckets = true needs an LSH backend"),
    ('workload = "layer"\nmode = "train_step"', 'backend = ["eager"]', "workload"),
    ('workload = "layer"', 'model.layers = [1, 2]', "model.* keys apply to workload"),
    ('workload = "model"', 'model.layrs = [1, 2]', "unknown key 'layrs'"),
    ('workload = "model"', 'model.reversible = ["yes"]', "reversible must be true or false"),
])
def test_bad_workload_settings_are_one_line(tmp_path, defaults, sweep, message):
    with pytest.raises(UserError, match=message):
        _suite(tmp_path, defaults, sweep)


def _row(backend, kind, time_s, mem, **extra):
    return {"case_id": f"{backend}-{extra}", "backend": backend, "backend_kind": kind, "status": "ok",
            "workload": "attention", "mode": "forward", "seq_len": 1024, "batch": 1, "heads": 4, "d_head": 64,
            "n_hashes": 4, "chunk_len": 64, "time_median_s": time_s, "mem_peak_bytes": mem,
            "rss_peak_bytes": None, **extra}


def test_summary_ratios_against_the_baselines_and_growth_per_unit():
    rows = [_row("eager", "lsh", 1.0, 100), _row("peer_a", "peer", 4.0, 400), _row("compiled", "lsh", 0.5, None)]
    entries = {(e["backend"], e["baseline"]): e for e in comparisons(rows)}
    assert set(entries) == {("eager", "peer_a"), ("compiled", "peer_a")}
    assert entries["eager", "peer_a"]["time_ratio"] == 0.25 and entries["eager", "peer_a"]["speed_up"] == 4.0
    assert entries["eager", "peer_a"]["mem_ratio"] == 0.25 and entries["compiled", "peer_a"]["mem_ratio"] is None
    chosen = {(e["backend"], e["baseline"]) for e in comparisons(rows, compare_against=["eager"])}
    assert chosen == {("peer_a", "eager"), ("compiled", "eager")}
    # A dense baseline has no LSH settings (null in its rows): it is matched to every LSH setting of its shape.
    dense = _row("sdpa", "dense", 2.0, 200, n_hashes=None, chunk_len=None)
    lsh = [_row("eager", "lsh", 1.0, 100, n_hashes=n) for n in (1, 4)]
    pairs = {(e["backend"], e["setting"]): e["speed_up"] for e in comparisons([dense, *lsh])}
    assert sorted(pairs.values()) == [2.0, 2.0] and len(pairs) == 2

    depth = [_row("eager", "lsh", 1.0 * n, 2 ** 20 * (10 + n), model={"layers": n, "reversible": True})
             for n in (2, 4, 12)]
    (entry,) = growth(depth)
    assert entry["key"] == "layers" and entry["bytes_per_unit"] == 2 ** 20
    assert entry["mem_ratio"] == pytest.approx(22 / 12)
    text = summary_text(depth)
    assert "1.00 MiB per added layer" in text and "1.83x" in text
