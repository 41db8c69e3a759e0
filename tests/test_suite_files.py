"""harness.suite: suites expand into the right cases with stable ids; bad suites get one clear line."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UserError
from harness.suite import load_suite

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


def write(tmp_path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def suite_of(tmp_path, text: str, **filters):
    return load_suite(write(tmp_path, text), **filters)


def error_of(tmp_path, text: str, **filters) -> str:
    with pytest.raises(UserError) as info:
        suite_of(tmp_path, text, **filters)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_sweep_is_the_product_of_its_axes(tmp_path):
    suite = suite_of(tmp_path, """
[sweep]
backend = ["eager", "compiled"]
seq_len = [256, 512, 1024]
n_hashes = [1, 2]
""")
    assert suite.name == "s"
    assert len(suite.cases) == 12
    assert {(c.backend, c.seq_len, c.n_hashes) for c in suite.cases} == {
        (b, n, r) for b in ("eager", "compiled") for n in (256, 512, 1024) for r in (1, 2)}


def test_defaults_and_auto_buckets(tmp_path):
    suite = suite_of(tmp_path, """
[defaults]
seq_len = 2048
chunk_len = 64
[sweep]
n_buckets = ["auto", 16]
""")
    auto, sixteen = suite.cases
    assert (auto.n_buckets, auto.chunk_len) == (64, 64)  # 2 * 2048 / 64
    assert (sixteen.n_buckets, sixteen.chunk_len) == (16, 64)
    chunk_auto = suite_of(tmp_path, '[defaults]\nseq_len = 2048\nn_buckets = 32\nchunk_len = "auto"\n').cases[0]
    assert chunk_auto.chunk_len == 128  # 2 * 2048 / 32


def test_dense_cases_drop_lsh_settings_and_deduplicate(tmp_path):
    suite = suite_of(tmp_path, """
[sweep]
backend = ["eager", "dense"]
n_hashes = [1, 2, 4]
""")
    dense = [c for c in suite.cases if c.backend == "dense"]
    assert len(dense) == 1 and len(suite.cases) == 4
    assert (dense[0].n_buckets, dense[0].n_hashes, dense[0].chunk_len, dense[0].dedup) == (None,) * 4
    assert dense[0].backend_kind == "dense" and not dense[0].fidelity


def test_include_and_exclude_rules(tmp_path):
    suite = suite_of(tmp_path, """
[sweep]
backend = ["eager", "dense"]
seq_len = [1024, 4096, 16384]
[[exclude]]
backend = "dense"
seq_len = {min = 4096}
[[include]]
backend = "sdpa"
seq_len = [512, 768]
causal = true
""")
    got = sorted((c.backend, c.seq_len, c.causal) for c in suite.cases)
    assert got == [("dense", 1024, False), ("eager", 1024, False), ("eager", 4096, False),
                   ("eager", 16384, False), ("sdpa", 512, True), ("sdpa", 768, True)]


def test_fixed_token_budget_sets_batch(tmp_path):
    suite = suite_of(tmp_path, """
[suite]
fixed_tokens = 32768
[sweep]
seq_len = [1024, 8192, 32768]
""")
    assert [(c.seq_len, c.batch) for c in suite.cases] == [(1024, 32), (8192, 4), (32768, 1)]


def test_case_ids_are_stable_and_tell_cases_apart(tmp_path):
    text = "[sweep]\nseq_len = [256, 512]\ncausal = [false, true]\n"
    first = [c.case_id for c in suite_of(tmp_path, text).cases]
    again = [c.case_id for c in suite_of(tmp_path, text).cases]
    assert first == again
    assert len(set(first)) == 4
    assert first[0].startswith("eager-forward-n256-")
    changed = suite_of(tmp_path, "[defaults]\nd_head = 32\n[sweep]\nseq_len = [256, 512]\n"
                       "causal = [false, true]\n").cases
    assert not set(first) & {c.case_id for c in changed}


def test_fidelity_only_where_dense_fits(tmp_path):
    suite = suite_of(tmp_path, """
[suite]
fidelity_max_seq_len = 1024
[sweep]
seq_len = [1024, 2048]
""")
    assert [c.fidelity for c in suite.cases] == [True, False]


def test_cli_filters(tmp_path):
    text = "[sweep]\nbackend = [\"eager\", \"dense\"]\nseq_len = [256, 512]\n"
    assert {c.backend for c in suite_of(tmp_path, text, backends=["dense"]).cases} == {"dense"}
    assert {c.seq_len for c in suite_of(tmp_path, text, max_seq_len=300).cases} == {256}
    assert "--max-seq-len 100" in error_of(tmp_path, text, max_seq_len=100)
    assert "did you mean 'dense'" in error_of(tmp_path, text, backends=["dens"])


def test_train_step_takes_heads_from_the_model(tmp_path):
    suite = suite_of(tmp_path, """
[defaults]
mode = "train_step"
[model]
d_model = 64
heads = 4
layers = 1
""")
    case = suite.cases[0]
    assert (case.heads, case.d_head, case.model["layers"]) == (4, 16, 1)
    assert not case.fidelity


def test_shipped_suites_load():
    for path in sorted(SUITES_DIR.glob("*.toml")):
        suite = load_suite(path)
        assert suite.cases, path
        assert len({c.case_id for c in suite.cases}) == len(suite.cases)


def test_smoke_covers_every_local_backend():
    backends = {c.backend for c in load_suite(SUITES_DIR / "smoke.toml").cases}
    assert backends == {"eager", "compiled", "triton", "dense", "sdpa"}


def test_paper_speed_holds_tokens_fixed():
    cases = load_suite(SUITES_DIR / "paper_speed.toml").cases
    assert {c.batch * c.seq_len for c in cases} == {32768}
    assert {c.n_hashes for c in cases if c.backend == "eager"} == {1, 2, 4, 8}


# --- bad suites: one line naming the problem --------------------------------------------------------

def test_toml_syntax_error_names_the_line(tmp_path):
    message = error_of(tmp_path, '[suite]\nname = "x"\n[sweep]\nseq_len = 25 6\nbackend = ["eager"]\n')
    assert "TOML syntax error" in message and "line 4" in message
    message = error_of(tmp_path, '[suite]\nname = "x"\n[sweep]\nseq_len = [256, 512\n')
    assert "TOML syntax error" in message and "line 4" in message


@pytest.mark.parametrize("text, words", [
    ("[defaults]\nseq_lem = 10\n", ["unknown key 'seq_lem'", "[defaults]", "did you mean 'seq_len'"]),
    ("[suite]\nrepeat = 3\n", ["unknown key 'repeat'", "[suite]"]),
    ("[sweep]\nn_hash = [1]\n", ["unknown key 'n_hash'", "did you mean 'n_hashes'"]),
    ("[sweeps]\nseq_len = [1]\n", ["unknown key 'sweeps'", "did you mean 'sweep'"]),
])
def test_unknown_key_suggests_the_right_one(tmp_path, text, words):
    message = error_of(tmp_path, text)
    for word in words:
        assert word in message


@pytest.mark.parametrize("text, words", [
    ('[defaults]\nseq_len = "long"\n', ["seq_len", "'long'"]),
    ("[defaults]\nn_hashes = 0\n", ["n_hashes", "n_hashes=0"]),
    ('[defaults]\nmode = "fwd"\n', ["mode", "'fwd'", "forward"]),
    ('[defaults]\ndtype = "float8"\n', ["dtype", "'float8'"]),
    ("[defaults]\ncausal = 1\n", ["causal", "causal=1"]),
    ('[defaults]\nmem_limit = "lots"\n', ["mem_limit", "'lots'"]),
    ("[defaults]\nn_buckets = 7\nchunk_len = \"auto\"\n", ["n_buckets", "even"]),
    ("[defaults]\nseq_len = 100\nchunk_len = 64\n", ["seq_len=100", "chunk_len=64"]),
    ('[defaults]\nn_buckets = "auto"\nchunk_len = "auto"\n', ["n_buckets", "chunk_len", "auto"]),
    ("[sweep]\nseq_len = 256\n", ["[sweep] seq_len", "list"]),
    ("[suite]\nfixed_tokens = 1000\n[sweep]\nseq_len = [256]\n", ["fixed_tokens=1000", "seq_len=256"]),
    ("[suite]\nthreads = -1\n", ["threads", "-1"]),
    ('[defaults]\nmode = "train_step"\n', ["train_step", "[model]"]),
])
def test_wrong_type_or_value_names_key_and_value(tmp_path, text, words):
    message = error_of(tmp_path, text)
    for word in words:
        assert word in message, (word, message)


def test_empty_sweep(tmp_path):
    message = error_of(tmp_path, "[sweep]\nseq_len = [256]\n[[exclude]]\nbackend = \"eager\"\n")
    assert "sweep is empty" in message


def test_unknown_backend_suggests_the_right_one(tmp_path):
    message = error_of(tmp_path, '[sweep]\nbackend = ["eager", "tritn"]\n')
    assert "unknown backend 'tritn'" in message and "did you mean 'triton'" in message


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="cannot read suite file"):
        load_suite(tmp_path / "nope.toml")


def test_model_table_is_checked(tmp_path):
    base = '[defaults]\nmode = "train_step"\n[model]\nd_model = 64\nheads = 4\n'
    assert "did you mean 'layers'" in error_of(tmp_path, base + "layer = 2\n")
    assert "[model] n_hashes is a case parameter" in error_of(tmp_path, base + "n_hashes = 2\n")
    assert "dropout" in error_of(tmp_path, base + "dropout = 2.0\n")


# --- series (skip_larger_after_failure) ------------------------------------------------------------

def test_a_series_is_one_configuration_across_lengths(tmp_path):
    # "auto" n_buckets / chunk_len, fidelity (off above fidelity_max_seq_len) and batch under a token
    # budget all change with seq_len: none of them splits a series.
    suite = suite_of(tmp_path, """
[suite]
fixed_tokens = 4096
fidelity_max_seq_len = 1024
[defaults]
chunk_len = "auto"
n_buckets = 16
[sweep]
backend = ["eager", "hf_lsh", "dense"]
seq_len = [512, 1024, 2048, 4096]
[[include]]
backend = "eager"
seq_len = [512, 1024, 2048, 4096]
n_buckets = "auto"
chunk_len = 32
""")
    assert len({c.fidelity for c in suite.cases if c.backend != "dense"}) == 2
    by_series: dict[str, list] = {}
    for case in suite.cases:
        by_series.setdefault(case.series_key(), []).append(case)
    assert len(by_series) == 4  # eager auto chunk_len, eager auto n_buckets, hf_lsh, dense
    for members in by_series.values():
        assert sorted(c.seq_len for c in members) == [512, 1024, 2048, 4096]
        assert len({(c.backend, c.n_buckets == 16) for c in members}) == 1


def test_fixed_lsh_settings_stay_separate_series(tmp_path):
    suite = suite_of(tmp_path, "[sweep]\nn_buckets = [16, 32]\nseq_len = [1024, 2048]\n")
    keys = {c.series_key() for c in suite.cases}
    assert len(keys) == 2


def test_series_survives_the_worker_round_trip(tmp_path):
    from harness.suite import Case

    case = suite_of(tmp_path, "[defaults]\nseq_len = 512\n").cases[0]
    assert case.from_seq_len == ("n_buckets",)
    again = Case.from_json(case.to_json())
    assert again == case and again.series_key() == case.series_key()


def test_case_ids_do_not_depend_on_how_values_were_chosen(tmp_path):
    # n_buckets "auto" at 512 / 64 is 16: the same case as n_buckets = 16, with the same id.
    auto = suite_of(tmp_path, "[defaults]\nseq_len = 512\n").cases[0]
    fixed = suite_of(tmp_path, "[defaults]\nseq_len = 512\nn_buckets = 16\n").cases[0]
    assert auto.n_buckets == fixed.n_buckets == 16
    assert auto.case_id == fixed.case_id


@pytest.mark.parametrize("rule, words", [
    ('seq_len = {min = "a"}', ["[[exclude]] #1 seq_len.min", "number", "'a'"]),
    ("seq_len = {max = true}", ["seq_len.max", "True"]),
    ('backend = {min = "x"}', ["backend.min", "'x'"]),
    ("seq_len = {least = 4}", ["unknown key 'least'", "[[exclude]] #1 seq_len"]),
])
def test_bad_exclude_range_names_key_and_value(tmp_path, rule, words):
    message = error_of(tmp_path, f"[sweep]\nseq_len = [256, 512]\n[[exclude]]\n{rule}\n")
    for word in words:
        assert word in message, (word, message)


def test_plugin_that_fails_to_import_is_a_suite_error(tmp_path):
    (tmp_path / "broken_plugin_rt.py").write_text("raise RuntimeError('no GPU driver\\nsecond line')\n")
    message = error_of(tmp_path, '[suite]\nplugins = ["broken_plugin_rt"]\n')
    assert "broken_plugin_rt" in message and "RuntimeError: no GPU driver second line" in message
    assert str(tmp_path / "s.toml") in message
    (tmp_path / "broken_plugin_syntax.py").write_text("def f(:\n")
    message = error_of(tmp_path, '[suite]\nplugins = ["broken_plugin_syntax"]\n')
    assert "broken_plugin_syntax" in message and "SyntaxError" in message
