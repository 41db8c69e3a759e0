"""The lm task (harness.tasks.lm) at CI size on the test corpora of tests/suites/lm_corpora.py: a tiny
model learns a repeating pattern, its weights are evaluated under swapped attention, a killed training
resumes to the same weights and curve, an uninstalled corpus gives unavailable rows with its install
command, and every row carries the corpus's checksum."""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import pytest
import torch

from harness.results.store import read_rows
from harness.run.runner import run_suite
from harness.suite import load_suite
from harness.tasks import TaskRun, get_task

REPO = Path(__file__).resolve().parents[1]
SUITES = REPO / "tests" / "suites"

TABLE = {"corpus": "pattern", "seq_len": 32, "d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "steps": 30,
         "batch": 8, "lr": 1e-2, "warmup_steps": 5, "log_every": 10, "checkpoint_every": 10, "curve_every": 10,
         "curve_windows": 4, "eval_windows": 8}


@pytest.fixture(autouse=True)
def test_corpora(tmp_path, monkeypatch):
    """The plugin's corpora registered for one test, and the registry as it was afterwards (other tests
    see only the real corpora); the extracted corpora cached under tmp_path."""
    from harness import corpora

    saved = dict(corpora.CORPORA)
    monkeypatch.syspath_prepend(str(SUITES))
    module = importlib.import_module("lm_corpora")
    for corpus in (module.PatternCorpus(), module.MissingCorpus()):
        corpora.CORPORA.setdefault(corpus.name, corpus)
    monkeypatch.setenv("REFORMER_BENCH_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    yield
    corpora.CORPORA.clear()
    corpora.CORPORA.update(saved)


def _pattern_sha() -> str:
    return hashlib.sha256(importlib.import_module("lm_corpora").PATTERN * 512).hexdigest()


def _run(n_hashes: int, seed: int = 0) -> TaskRun:
    return TaskRun(n_hashes=n_hashes, lsh_backend="eager" if n_hashes else None, chunk_len=8 if n_hashes else 32,
                   n_buckets=None, seed=seed, device="cpu")


def test_a_tiny_model_learns_the_pattern_and_reports_the_checksum(tmp_path):
    task = get_task("lm")
    config = task.resolve_table(TABLE)
    result = task.train(config, _run(0), str(tmp_path / "ckpt.pt"))
    curve = result.metrics["heldout_curve"]
    assert [p[0] for p in curve] == [0, 10, 20, 30]
    assert curve[0][1] > 7.0 and curve[-1][1] < 1.0  # from ~8 bits (uniform over 256) to the pattern
    assert all(p[2] is not None and p[2] >= 0 for p in curve) and result.wall_s > 0 and result.tokens_per_s > 0
    assert result.metrics["heldout_unigram_bits"] == pytest.approx(3.0)  # eight letters, equally often
    evaluation = task.evaluate(config, _run(0), str(tmp_path / "ckpt.pt"))
    assert evaluation.metrics["bits_per_dim"] < 1.0 and evaluation.train_steps == 30
    assert evaluation.metrics["eval_tokens"] == 8 * 31
    sha = _pattern_sha()
    assert evaluation.metrics["corpus_sha256"] == result.metrics["corpus_sha256"] == sha
    assert evaluation.metrics["corpus_licence"] == "CC0" and evaluation.metrics["corpus"] == "pattern"


def test_the_same_seed_gives_the_same_initial_weights_for_every_attention():
    from harness.tasks.lm import build_model

    config = get_task("lm").resolve_table(TABLE)
    states = []
    for n_hashes in (0, 1, 4):
        torch.manual_seed(3)
        states.append(build_model(config, _run(n_hashes, seed=3), n_hashes).state_dict())
    assert all(torch.equal(states[0][k], s[k]) for s in states[1:] for k in states[0])


def test_evaluation_swaps_the_attention_on_the_same_weights(tmp_path):
    task = get_task("lm")
    config = task.resolve_table(TABLE)
    checkpoint = str(tmp_path / "ckpt.pt")
    task.train(config, _run(2), checkpoint)
    before = torch.load(checkpoint, weights_only=False)["model"]
    bits = {n: task.evaluate(config, _run(n), checkpoint).metrics["bits_per_dim"] for n in (0, 1, 2, 4)}
    assert all(0 < b < 8 for b in bits.values()) and len(set(bits.values())) > 1  # the attention changed
    assert task.evaluate(config, _run(1), checkpoint).metrics["bits_per_dim"] == bits[1]  # and is seeded
    after = torch.load(checkpoint, weights_only=False)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_killed_training_resumes_to_the_same_weights_and_curve(tmp_path):
    task = get_task("lm")
    config = task.resolve_table(TABLE)
    whole = task.train(config, _run(1), str(tmp_path / "whole.pt"))

    def kill(step, loss, accuracy):
        if step == 25:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        task.train(config, _run(1), str(tmp_path / "killed.pt"), on_step=kill)
    resumed = task.train(config, _run(1), str(tmp_path / "killed.pt"))
    assert resumed.resumed_from == 20
    a = torch.load(tmp_path / "whole.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "killed.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p[:2] for p in resumed.metrics["heldout_curve"]] == [p[:2] for p in whole.metrics["heldout_curve"]]


def test_figure3_settings_build_and_refuse_lsh(tmp_path):
    from harness.tasks.lm import build_model

    task = get_task("lm")
    separate = task.resolve_table({**TABLE, "share_qk": False, "steps": 5})
    model = build_model(separate, _run(0), 0)
    assert model.blocks[0].attn.to_k is not None
    with pytest.raises(ValueError, match="share_qk=false is full attention only"):
        build_model(separate, _run(2), 2)
    plain = task.resolve_table({**TABLE, "residual": "plain"})
    assert type(build_model(plain, _run(0), 0)).__name__ == "TransformerLM"
    with pytest.raises(ValueError, match="reversible=true needs residual='two_stream'"):
        task.resolve_table({**TABLE, "residual": "plain", "reversible": True})
    with pytest.raises(ValueError, match="unknown corpus 'nope'"):
        task.resolve_table({**TABLE, "corpus": "nope"})
    result = task.train(separate, _run(0), str(tmp_path / "sep.pt"))
    assert result.metrics["lm_setting"] == "separate Q and K, two streams"


def test_a_suite_runs_and_an_uninstalled_corpus_is_unavailable_with_its_command(tmp_path):
    suite = load_suite(SUITES / "lm_tiny.toml")
    corpora = sorted({c.task_config["corpus"] for c in suite.cases})
    assert corpora == ["missing", "pattern"] and len(suite.cases) == 5
    run_suite(suite, tmp_path / "run")
    rows = read_rows(tmp_path / "run")
    missing = [r for r in rows if r["status"] != "ok"]
    assert len(missing) == 2 and all(r["status"] == "unavailable" for r in missing)
    assert all("apt-get install -y no-such-corpus" in r["reason"] and "\n" not in r["reason"] for r in missing)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 3 and {r["corpus_sha256"] for r in ok} == {_pattern_sha()}
    evaluated = {r["eval_n_hashes"]: r["bits_per_dim"] for r in ok if r["mode"] == "evaluate"}
    assert set(evaluated) == {0, 2} and evaluated[2] < 3.0  # below the unigram entropy

    from harness.report.page import write_report

    page = write_report([tmp_path / "run"], tmp_path / "r.html").read_text()
    section = page.split('<section id="lm-pattern-n32-b8-h2-d16-s30">')[1].split("</section>")[0]
    assert "trained x evaluated" in section and f"{evaluated[2]:.3f}" in section
    assert "unigram entropy 3.000" in section and ok[0]["corpus_sha256"] in section
    assert all(f'id="fig-lm-pattern-n32-b8-h2-d16-s30-curve-{x}"' in section for x in ("step", "seconds"))
    assert "Language modelling on pattern, 32 tokens, batch 8, 30 steps (lm_tiny)" in section


def test_impls_model_separate_query_and_key_projections():
    from impls.model import ModelConfig, ReformerLM

    cfg = ModelConfig(vocab=16, d_model=16, heads=2, d_ff=16, layers=1, max_seq_len=16, share_qk=False)
    torch.manual_seed(0)
    model = ReformerLM(cfg, backend="dense", reversible=False)
    tokens = torch.randint(0, 16, (2, 16))
    out = model(tokens)
    assert out.shape == (2, 16, 16) and torch.isfinite(out).all()
    # causal: the first positions do not see later tokens
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 16
    assert torch.allclose(model(changed)[:, :8], out[:, :8], atol=1e-6)
    with pytest.raises(ValueError, match="share_qk=False needs full attention"):
        ReformerLM(cfg, backend="eager")
    with pytest.raises(ValueError, match="share_qk must be a bool"):
        ModelConfig(share_qk="no")


def test_the_report_states_the_ordering_and_gaps_in_seed_spreads():
    import pandas as pd

    from harness.tasks.lm_report import BASELINE, ablation_table, ordering_text, seed_spread

    bits = {0: 2.0, 8: 2.1, 4: 2.05, 2: 2.3, 1: 2.4}  # LSH-4 beats LSH-8: the ordering does not hold
    rows = [{"mode": "evaluate", "train_n_hashes": t, "eval_n_hashes": t, "seed": 0, "lm_setting": BASELINE,
             "bits_per_dim": b} for t, b in bits.items()]
    rows += [{"mode": "evaluate", "train_n_hashes": 0, "eval_n_hashes": 0, "seed": 1, "lm_setting": BASELINE,
              "bits_per_dim": 2.05},
             {"mode": "evaluate", "train_n_hashes": 0, "eval_n_hashes": 0, "seed": 0,
              "lm_setting": "separate Q and K, two streams", "bits_per_dim": 2.1}]
    frame = pd.DataFrame(rows)
    spread = seed_spread(frame)
    assert spread == pytest.approx(0.05)
    table = frame[(frame["seed"] == 0) & (frame["lm_setting"] == BASELINE)].pivot_table(
        index="train_n_hashes", columns="eval_n_hashes", values="bits_per_dim")
    text = ordering_text(table, spread)
    assert "does not hold" in text and "LSH-8 - full attention = +0.100 (+2.0 seed spreads)" in text
    assert "LSH-4 - LSH-8 = -0.050 (-1.0 seed spreads)" in text
    ablation = ablation_table(frame, spread).set_index(["setting", "seed"])
    assert ablation.loc[("separate Q and K, two streams", 0), "gap"] == "+0.100 (+2.0 seed spreads)"
    assert seed_spread(frame[frame["seed"] == 0]) is None


def test_the_cost_table_shows_counts_as_integers_even_when_pandas_read_them_as_floats():
    import pandas as pd

    from harness.tasks.lm_report import BASELINE, cost_table

    trained = pd.DataFrame([{"train_n_hashes": 0, "lm_setting": BASELINE, "seed": 1.0, "train_steps": 150.0,
                             "train_s": 264.2, "tokens_per_s": 4651.0, "heldout_curve": [[150, 3.3, 260.0]]},
                            {"train_n_hashes": 8, "lm_setting": BASELINE, "seed": float("nan"),
                             "train_steps": None, "train_s": None, "tokens_per_s": None, "heldout_curve": None}])
    shown = cost_table(trained).to_dict("records")
    assert shown[0]["seed"] == 1 and type(shown[0]["seed"]) is int and shown[0]["steps"] == 150
    assert shown[0]["final held-out bits (training attention)"] == "3.300"
    assert shown[1]["seed"] is None and shown[1]["steps"] is None


def test_report_sections_join_runs_of_one_recipe_and_keep_recipes_apart():
    """A second seed run by another suite gives its spread to the suite it repeats; a shorter training of
    the same corpus (an ablation suite's) is a section of its own."""
    import pandas as pd

    from harness.tasks.lm_report import BASELINE, report_sections

    def row(suite, steps, seed, bits):
        return {"suite": suite, "status": "ok", "mode": "evaluate", "corpus": "kjv", "seq_len": 1024.0, "batch": 8,
                "heads": 4, "d_head": 32, "train_steps": float(steps), "seed": float(seed), "lm_setting": BASELINE,
                "train_n_hashes": 0, "eval_n_hashes": 0, "bits_per_dim": bits, "eval_tokens": 100}

    frame = pd.DataFrame([row("lm_text", 300, 0, 3.20), row("lm_seeds", 300, 1, 3.25), row("lm_abl", 150, 0, 3.30),
                          row("lm_abl", 150, 1, 3.31)])
    sections = {section.title: section for section in report_sections(frame)}
    title = "Language modelling on kjv, 1024 tokens, batch 8, {} steps ({}): bits per dim"
    assert set(sections) == {title.format(300, "lm_seeds, lm_text"), title.format(150, "lm_abl")}
    texts = [" ".join(getattr(part, "text", "") for part in section.parts) for section in sections.values()]
    assert any("differs by 0.0500 bits per dim" in text for text in texts)
    assert any("differs by 0.0100 bits per dim" in text for text in texts)
