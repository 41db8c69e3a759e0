"""The HTML report from synthetic results directories (README "Results format"): reading and its errors,
fitted exponents, findings, figures, escaping, size, comparison with a baseline, the CLI.

The synthetic metrics follow known power laws (dense time ~ L^2, LSH time ~ L), so every figure the
report computes is checked against the value implied by the constants below, not against a copy of
the report's output. The browser checks are in test_report_browser.py.
"""
from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

from harness.cli import main
from harness.errors import UserError
from harness.measure.metrics import METRICS
from harness.report import render_html, write_report
from harness.report.analysis import compare, crossover, fit_exponent, headline_findings, scaling_groups
from harness.report.data import load_frame
from harness.report.figures import PAPER_FIGURE5_FULL, grid_figures, scaling_figure
from harness.results.store import read_results, row_keys

ENV = {"git_commit": "0123abc", "python": "3.11.2", "torch": "2.13.0", "triton": "3.9.0",
       "device_name": "synthetic CPU", "driver": None, "cpu_model": "synthetic CPU", "torch_threads": 2}

#: Power-law constants: time_s = coef * L**exp, memory = coef * L**exp.
DENSE_TIME = (2e-9, 2.0)
LSH_TIME_PER_HASH = (4e-6, 1.0)
DENSE_MEM = (16.0, 2.0)
LSH_MEM_PER_HASH = (2048.0, 1.0)


def row(**values) -> dict:
    """A results row with every README key; unspecified metrics null."""
    base = {key: None for key in row_keys()}
    base.update(suite="synthetic", backend_kind="lsh", mode="forward", batch=1, heads=4, d_head=64,
                causal=False, dedup=False, dtype="float32", device="cpu", status="ok", reason="")
    base.update(values)
    base.setdefault("case_id", "")
    if not base["case_id"]:
        base["case_id"] = "-".join(str(base[k]) for k in ("backend", "seq_len", "batch", "n_buckets", "n_hashes"))
    if base["backend_kind"] == "dense":
        base.update(n_buckets=None, n_hashes=None, chunk_len=None, dedup=None)
    return base


def scaling_rows(suite="synthetic", lengths=(1024, 2048, 4096, 8192, 16384), hashes=(1, 4),
                 dense_oom_from=16384, time_scale=1.0) -> list[dict]:
    """Dense vs eager LSH over lengths; dense runs out of memory from dense_oom_from tokens."""
    rows = []
    for L in lengths:
        if dense_oom_from is not None and L >= dense_oom_from:
            rows.append(row(suite=suite, backend="dense", backend_kind="dense", seq_len=L, status="oom",
                            reason="CPU tensor memory 4.0 GiB over mem_limit 2 GiB"))
        else:
            rows.append(row(suite=suite, backend="dense", backend_kind="dense", seq_len=L,
                            time_median_s=time_scale * DENSE_TIME[0] * L ** DENSE_TIME[1],
                            time_iqr_s=time_scale * DENSE_TIME[0] * L ** DENSE_TIME[1] * 0.02,
                            mem_peak_bytes=DENSE_MEM[0] * L ** DENSE_MEM[1], flops_analytic=4.0 * L * L * 64))
        for n in hashes:
            rows.append(row(suite=suite, backend="eager", seq_len=L, n_hashes=n, chunk_len=64,
                            n_buckets=2 * L // 64,
                            time_median_s=time_scale * n * LSH_TIME_PER_HASH[0] * L ** LSH_TIME_PER_HASH[1],
                            time_iqr_s=time_scale * n * LSH_TIME_PER_HASH[0] * L * 0.02,
                            mem_peak_bytes=n * LSH_MEM_PER_HASH[0] * L ** LSH_MEM_PER_HASH[1],
                            rel_error=0.4 / n ** 0.5, attn_mass_recall=1 - 0.3 / n,
                            flops_analytic=4.0 * n * L * 128 * 64))
    rows.append(row(suite=suite, backend="triton", seq_len=lengths[0], n_hashes=hashes[0], chunk_len=64,
                    n_buckets=2 * lengths[0] // 64, status="unavailable", reason="triton needs a GPU"))
    return rows


def grid_rows(suite="synthetic-grid", seq_len=2048) -> list[dict]:
    """n_buckets x n_hashes at one length; one cell times out."""
    rows = []
    for buckets in (16, 32, 64):
        for n in (1, 2, 4, 8):
            if buckets == 64 and n == 8:
                rows.append(row(suite=suite, backend="eager", seq_len=seq_len, n_buckets=buckets, n_hashes=n,
                                chunk_len=None, status="timeout", reason="timed out after 300 s"))
                continue
            rows.append(row(suite=suite, backend="eager", seq_len=seq_len, n_buckets=buckets, n_hashes=n,
                            chunk_len=2 * seq_len // buckets, time_median_s=1e-4 * n * (1 + 64 / buckets),
                            mem_peak_bytes=1e6 * n, rel_error=0.5 / n ** 0.5 * (buckets / 64) ** 0.3,
                            attn_mass_recall=1 - 0.4 / n))
    return rows


def paper_speed_rows(suite="paper_speed") -> list[dict]:
    """The fixed 32,768-token budget of the paper's Figure 5: batch = 32768 / seq_len."""
    rows = []
    for L in (1024, 2048, 4096, 8192, 16384, 32768):
        batch = 32768 // L
        rows.append(row(suite=suite, backend="dense", backend_kind="dense", mode="forward_backward",
                        seq_len=L, batch=batch, time_median_s=0.1 * L / 1024,
                        mem_peak_bytes=batch * 16.0 * L * L))
        for n in (1, 2, 4, 8):
            rows.append(row(suite=suite, backend="eager", mode="forward_backward", seq_len=L, batch=batch,
                            n_hashes=n, chunk_len=64, n_buckets=2 * L // 64, time_median_s=0.05 * n,
                            mem_peak_bytes=batch * n * 2048.0 * L))
    return rows


def write_results_dir(path: Path, rows: list[dict], suite: str | None = None, run: dict | None = None) -> Path:
    """A results directory as `reformer-bench run` writes it: run.json and results.jsonl."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    suite = suite or (rows[0]["suite"] if rows else "synthetic")
    run = run or {"suite": suite, "suite_file": f"suites/{suite}.toml", "environment": ENV,
                  "started_at": "2026-01-01T00:00:00Z"}
    (path / "run.json").write_text(json.dumps(run), encoding="utf-8")
    with open(path / "results.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


# --- reading results directories -------------------------------------------------------------------------

def test_reads_rows_with_every_key_and_nulls_as_nan(tmp_path):
    path = write_results_dir(tmp_path / "run", scaling_rows())
    sets, frame = load_frame([path])
    assert len(frame) == len(scaling_rows())
    assert set(row_keys()) <= set(frame.columns)
    dense_oom = frame[(frame["backend"] == "dense") & (frame["status"] == "oom")]
    assert dense_oom["time_median_s"].isna().all()
    assert sets[0].suite == "synthetic"


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "run.json").unlink(), r"run\.json: missing"),
    (lambda d: (d / "run.json").write_text("{nope"), r"run\.json: not valid JSON"),
    (lambda d: (d / "results.jsonl").unlink(), r"results\.jsonl: missing"),
])
def test_broken_directory_names_the_file(tmp_path, damage, message):
    path = write_results_dir(tmp_path / "run", scaling_rows())
    damage(path)
    with pytest.raises(UserError, match=message):
        read_results(path, require_run=True)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "absent"))):
        read_results(tmp_path / "absent", require_run=True)


@pytest.mark.parametrize("line, message", [
    ('not json at all', "not valid JSON"),
    ('{"case_id": "x", "backend": "eager", "seq_len": 1, "status": "exploded"}', "status='exploded'"),
    ('{"case_id": "x", "backend": "eager", "seq_len": "long", "status": "ok"}', "seq_len='long'"),
    ('{"backend": "eager", "seq_len": 1, "status": "ok"}', "missing key 'case_id'"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_row_names_file_and_line(tmp_path, line, message):
    path = write_results_dir(tmp_path / "run", scaling_rows()[:2])
    with open(path / "results.jsonl", "a") as f:
        f.write(line + "\n")
    with pytest.raises(UserError) as info:
        read_results(path, require_run=True)
    assert "results.jsonl:3: " in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_write_cut_short_by_a_kill_is_skipped_and_reported(tmp_path):
    rows = scaling_rows()[:3]
    path = write_results_dir(tmp_path / "run", rows)
    lines = (path / "results.jsonl").read_text().splitlines()
    # What the runner leaves after a kill mid-write and a --resume: a partial line, then fresh rows.
    lines.insert(1, lines[1][: len(lines[1]) // 2])
    (path / "results.jsonl").write_text("\n".join(lines) + "\n")
    result_set = read_results(path, require_run=True)
    assert [r["case_id"] for r in result_set.rows] == [r["case_id"] for r in rows]
    assert result_set.cut_short == [f"{path / 'results.jsonl'}:2"]
    assert "cut short" in render_html([result_set], load_frame([path])[1])


def test_empty_results_file_still_renders(tmp_path):
    path = write_results_dir(tmp_path / "run", [], suite="nothing-yet")
    out = write_report([path], tmp_path / "r.html")
    assert "The results files hold no cases yet." in out.read_text()


# --- fits and findings ---------------------------------------------------------------------------------

def test_fit_exponent_recovers_power_laws_and_needs_two_lengths():
    lengths = [512, 1024, 2048, 4096, 8192]
    for exponent in (1.0, 2.0, 1.5):
        assert fit_exponent(lengths, [3.0 * L ** exponent for L in lengths]) == pytest.approx(exponent)
    # Only the largest FIT_POINTS lengths count: a flat start (fixed overhead) does not bend the slope.
    values = [1.0, 1.0] + [L ** 2 / 1e6 for L in lengths[2:]]
    assert fit_exponent(lengths, values, points=3) == pytest.approx(2.0)
    assert fit_exponent([1024, 2048], [1.0, 4.0]) is None  # two points: a ratio, not a fit
    assert fit_exponent([1024, 2048], [1.0, 4.0], min_lengths=2) == pytest.approx(2.0)
    assert fit_exponent([1024, 2048, 4096], [1.0, 4.0, float("nan")]) is None


def test_crossover_is_where_the_power_laws_cross(tmp_path):
    lengths = (1024, 2048, 4096, 8192, 16384)
    _, frame = load_frame([write_results_dir(tmp_path / "run", scaling_rows(lengths=lengths, hashes=(1, 4)))])
    (group,) = scaling_groups(frame)
    series = {s.name: s for s in group.series}
    for n_hashes in (1, 4):
        # n * a * L < b * L^2  <=>  L > n * a / b; dense OOMs at 16,384, which counts as LSH faster.
        threshold = n_hashes * LSH_TIME_PER_HASH[0] / DENSE_TIME[0]
        expected = min(L for L in lengths if L > threshold)
        sentence = crossover(series[f"eager LSH-{n_hashes}"], series["dense"])
        assert f"from {expected:,} tokens" in sentence, sentence


def test_findings_state_exponents_failures_and_fidelity(tmp_path):
    _, frame = load_frame([write_results_dir(tmp_path / "run", scaling_rows())])
    text = " ".join(sentence for _, sentence in headline_findings(frame))
    assert f"dense {DENSE_MEM[1]:.2f}" in text and f"eager LSH-1 {LSH_MEM_PER_HASH[1]:.2f}" in text
    assert "dense fails from 16,384 tokens (oom)" in text
    assert "triton LSH-1 did not run: triton needs a GPU" in text
    # rel_error = 0.4 / sqrt(n) in the fixture: 1 hash -> 0.4, 4 hashes -> 0.2.
    assert "from 0.4 (1 hash) to 0.2 (4 hashes) at 16,384 tokens" in text


def test_noisy_timings_are_flagged(tmp_path):
    rows = scaling_rows()
    quiet = load_frame([write_results_dir(tmp_path / "q", rows)])[1]
    assert not any(setting == "Measurement quality" for setting, _ in headline_findings(quiet))
    for r in rows[:3]:
        r["time_iqr_s"] = r["time_median_s"] and r["time_median_s"] * 2
    noisy = load_frame([write_results_dir(tmp_path / "n", rows)])[1]
    timed = sum(1 for r in rows if r["time_median_s"])
    (sentence,) = [s for setting, s in headline_findings(noisy) if setting == "Measurement quality"]
    assert sentence.startswith(f"{sum(1 for r in rows[:3] if r['time_median_s'])} of {timed} timed cases")


def test_token_budget_group_is_one_plot_with_the_paper_overlay(tmp_path):
    _, frame = load_frame([write_results_dir(tmp_path / "p", paper_speed_rows()),
                           write_results_dir(tmp_path / "s", scaling_rows())])
    groups = {g.context["suite"]: g for g in scaling_groups(frame)}
    assert groups["paper_speed"].token_budget == 32768 and groups["synthetic"].token_budget is None
    paper = scaling_figure(groups["paper_speed"], "time", "t").figure
    names = [t["name"] for t in paper["data"]]
    assert "paper: full attention" in names
    full = next(t for t in paper["data"] if t["name"] == "paper: full attention")
    assert dict(zip(full["x"], full["y"])) == pytest.approx(PAPER_FIGURE5_FULL)  # seconds: unit is s here
    assert paper["layout"]["yaxis"]["title"]["text"].endswith("(s)")
    # Every measured length labelled, compactly enough that none is hidden: 1K×32 ... 32K×1.
    assert paper["layout"]["xaxis"]["ticktext"] == ["1K×32", "2K×16", "4K×8", "8K×4", "16K×2", "32K×1"]
    memory = scaling_figure(groups["paper_speed"], "memory", "m").figure
    assert memory["layout"]["xaxis"]["range"] == paper["layout"]["xaxis"]["range"]  # same x range
    other = scaling_figure(groups["synthetic"], "time", "t").figure
    assert not any(str(t.get("name", "")).startswith("paper") for t in other["data"])


def test_scaling_figure_marks_failures_and_puts_exponents_in_the_legend(tmp_path):
    _, frame = load_frame([write_results_dir(tmp_path / "run", scaling_rows())])
    (group,) = scaling_groups(frame)
    time_fig = scaling_figure(group, "time", "t").figure
    memory_fig = scaling_figure(group, "memory", "m").figure
    names = [t["name"] for t in time_fig["data"]]
    assert f"dense (k={DENSE_TIME[1]:.2f})" in names and f"eager LSH-4 (k={LSH_TIME_PER_HASH[1]:.2f})" in names
    failed = next(t for t in time_fig["data"] if t["name"] == "dense: failed")
    assert failed["x"] == [16384] and failed["text"] == ["OOM"]
    assert not any("triton" in n for n in names)  # never ran here: named in the findings instead
    assert time_fig["layout"]["xaxis"]["type"] == "log" and time_fig["layout"]["yaxis"]["type"] == "log"
    assert re.search(r"\((s|ms|µs)\)$", time_fig["layout"]["yaxis"]["title"]["text"])
    assert re.search(r"\((GiB|MiB|KiB|bytes)\)$", memory_fig["layout"]["yaxis"]["title"]["text"])


def test_grid_heatmap_has_a_cell_per_setting_and_names_the_failed_one(tmp_path):
    _, frame = load_frame([write_results_dir(tmp_path / "run", grid_rows())])
    figures = {f.key.split("-")[1]: f.figure for f in grid_figures(frame)}
    heat = figures["time"]["data"][0]
    assert heat["x"] == ["16", "32", "64"] and heat["y"] == ["1", "2", "4", "8"]
    assert heat["z"][3][2] is None and heat["text"][3][2] == "TIMEOUT"
    # time_median_s = 1e-4 * n * (1 + 64 / buckets) in the fixture, shown in ms.
    assert heat["z"][0][0] == pytest.approx(1e-4 * 1 * (1 + 64 / 16) / 1e-3)


# --- the page ----------------------------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script>"


def test_user_strings_are_escaped_everywhere(tmp_path):
    rows = scaling_rows(suite=HOSTILE)
    rows[0]["reason"] = '<img src=x onerror="alert(2)">'
    rows[0]["status"] = "error"
    out = write_report([write_results_dir(tmp_path / "run", rows, suite=HOSTILE)], tmp_path / "r.html")
    page = out.read_text().replace(get_plotlyjs(), "")
    assert HOSTILE not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    payload = page.split('<script type="application/json" id="report-data">')[1].split("</script>")[0]
    assert "<" not in payload  # "<" inside the JSON is written \u003c, so nothing can end the element
    json.loads(payload)


def test_plotly_js_is_inlined_once_and_the_rest_stays_small(tmp_path):
    dirs = [write_results_dir(tmp_path / "s", scaling_rows(hashes=(1, 2, 4, 8))),
            write_results_dir(tmp_path / "g", grid_rows()), write_results_dir(tmp_path / "p", paper_speed_rows())]
    base = write_results_dir(tmp_path / "b", scaling_rows(hashes=(1, 2, 4, 8), time_scale=0.8))
    page = write_report(dirs, tmp_path / "r.html", baseline_dirs=[base]).read_text()
    plotly_js = get_plotlyjs()
    assert page.count(plotly_js) == 1
    assert page.count("<script") == 3  # plotly.js, the JSON payload, the page script
    assert len(page.encode()) - len(plotly_js.encode()) < 1_000_000
    assert "http://" not in page.replace(plotly_js, "") and "https://" not in page.replace(plotly_js, "")


def test_failures_columns_and_the_folded_sentence_come_from_the_parameter_and_metric_tables(tmp_path, monkeypatch):
    from dataclasses import replace

    from harness.measure import metrics
    from harness.suite import parameters

    rows = [row(backend="eager", seq_len=L, n_hashes=2, chunk_len=32, status="oom", reason=f"oom at {L}",
                rss_note="sampled every tick")
            for L in (256, 512)]

    def sections(name: str) -> tuple[str, str]:
        page = write_report([write_results_dir(tmp_path / name, rows)], tmp_path / f"{name}.html").read_text()
        failures = page.split('<section id="failures">')[1].split("</section>")[0]
        cases = page.split('<section id="cases">')[1].split("</section>")[0]
        return failures, cases

    failures, cases = sections("as-declared")
    assert "<th>L (tokens)</th>" in failures and "<th>n_hashes</th>" in failures
    assert "<th>chunk_len</th>" not in failures
    assert "rss_note = sampled every tick" not in cases
    # A parameter the table marks for the failures table is a column there, under its title; a metric
    # it marks as a run setting is folded into the sentence above the cases table.
    monkeypatch.setitem(parameters.PARAMETERS_TABLE, "chunk_len",
                        replace(parameters.PARAMETERS_TABLE["chunk_len"], in_failures=True, title="chunk"))
    monkeypatch.setitem(metrics.METRICS, "rss_note", replace(metrics.METRICS["rss_note"], run_setting=True))
    failures, cases = sections("marked")
    assert "<th>chunk</th>" in failures and "<td>32</td>" in failures
    assert "rss_note = sampled every tick" in cases


def test_comparison_flags_slower_failed_and_larger_cases(tmp_path):
    baseline_rows = scaling_rows()
    candidate_rows = scaling_rows(time_scale=1.25)
    candidate_rows[1]["mem_peak_bytes"] *= 1.5
    candidate_rows[2]["status"], candidate_rows[2]["time_median_s"] = "oom", None
    _, base = load_frame([write_results_dir(tmp_path / "b", baseline_rows)])
    _, cand = load_frame([write_results_dir(tmp_path / "c", candidate_rows)])
    compared = compare(base, cand)
    verdict = {(r["backend"], int(r["seq_len"]), None if r["n_hashes"] != r["n_hashes"] else int(r["n_hashes"])):
               r["verdict"] for r in compared.to_dict("records")}
    assert compared["time_ratio"].dropna().round(6).unique().tolist() == [1.25]
    assert "now oom" in verdict[("eager", 1024, 4)]
    assert "memory x1.50" in verdict[("eager", 1024, 1)]
    assert verdict[("dense", 1024, None)] == "time x1.25"
    same = compare(base, base)
    assert (same["verdict"] == "").all() and (same["present"] == "both").all()


def test_timing_noise_within_the_iqr_is_not_a_regression(tmp_path):
    baseline_rows = scaling_rows()
    candidate_rows = scaling_rows(time_scale=1.2)
    for r in baseline_rows + candidate_rows:
        if r["time_median_s"]:
            r["time_iqr_s"] = r["time_median_s"]  # noisy: the 20% shift is inside the spread
    _, base = load_frame([write_results_dir(tmp_path / "b", baseline_rows)])
    _, cand = load_frame([write_results_dir(tmp_path / "c", candidate_rows)])
    assert (compare(base, cand)["verdict"] == "").all()


def test_report_with_baseline_has_regression_table(tmp_path):
    base = write_results_dir(tmp_path / "b", scaling_rows())
    cand = write_results_dir(tmp_path / "c", scaling_rows(time_scale=1.5))
    page = write_report([cand], tmp_path / "r.html", baseline_dirs=[base]).read_text()
    regressions = len([r for r in scaling_rows() if r["time_median_s"]])
    assert f"Regressions ({regressions})" in page and "time x1.50" in page


# --- the command line --------------------------------------------------------------------------------

def test_cli_writes_the_report(tmp_path, capsys):
    path = write_results_dir(tmp_path / "run", scaling_rows())
    assert main(["report", str(path), "-o", str(tmp_path / "out.html")]) == 0
    assert (tmp_path / "out.html").exists() and "wrote" in capsys.readouterr().out


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    path = write_results_dir(tmp_path / "run", scaling_rows()[:1])
    with open(path / "results.jsonl", "a") as f:
        f.write("{broken\n")
    assert main(["report", str(path), "-o", str(tmp_path / "out.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results.jsonl:2" in err and "Traceback" not in err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_reformer_bench_cli_has_the_report_subcommand(tmp_path):
    from harness import cli

    path = write_results_dir(tmp_path / "run", scaling_rows())
    assert cli.main(["report", str(path), "-o", str(tmp_path / "out.html")]) == 0
    assert cli.main(["report", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.html")]) == 2


def test_task_suite_gets_the_papers_table2_next_to_the_measured_one(tmp_path):
    rows = []
    for train in (0, 1, 4):
        for evaluate in (0, 1, 4, 8):
            accuracy = 1.0 if train == evaluate else 0.5 + 0.01 * (train + evaluate)
            rows.append(row(suite="duplication", backend="eager", mode="train_step", seq_len=1024,
                            case_id=f"dup-{train}-{evaluate}", task="duplication", train_n_hashes=train,
                            eval_n_hashes=evaluate, task_accuracy=accuracy))
    page = write_report([write_results_dir(tmp_path / "run", rows)], tmp_path / "r.html").read_text()
    section = page.split('<section id="paper">')[1].split("</section>")[0]
    measured, paper = section.split("The paper's numbers")
    assert "trained with" in measured and "LSH-4" in measured and "full attention" in measured
    assert f"{(0.5 + 0.01 * (4 + 8)) * 100:.1f}%" in measured
    assert "94.8%" in paper and "Kitaev et al. 2020, Table 2" in paper
    for table in (measured, paper):  # the paper's layout: full attention first, then LSH-4, -2, -1
        body = table.split("<tbody>")[1]
        rows_at = [body.index(f"<th>{name}</th>") for name in ("full attention", "LSH-4", "LSH-1")]
        assert rows_at == sorted(rows_at)
    plain = write_report([write_results_dir(tmp_path / "plain", scaling_rows())], tmp_path / "p.html").read_text()
    assert '<section id="paper">' not in plain


def test_the_duplication_section_shows_a_table_per_full_attention_beside_the_published_ones(tmp_path):
    # The suite's layout: a full training under each full attention, LSH trainings shared by both.
    def accuracy(train, evaluate, full):
        return 0.3 + 0.01 * train + 0.001 * evaluate + (0.2 if full == "sdpa" else 0.0)

    rows = []
    for train in (0, 4, 1):
        for full in ("dense", "sdpa") if train == 0 else (None,):
            rows.append(row(suite="duplication", backend=full or "eager", mode="train", seq_len=512,
                            case_id=f"train-{train}-{full}", task="duplication", train_n_hashes=train,
                            full_attention=full, train_step_s=0.1 + 0.01 * train))
        for evaluate in (0, 8, 1):
            fulls = ("dense", "sdpa") if 0 in (train, evaluate) else (None,)
            for full in fulls:
                rows.append(row(suite="duplication", backend=full or "eager", mode="evaluate", seq_len=512,
                                case_id=f"dup-{train}-{evaluate}-{full}", task="duplication",
                                train_n_hashes=train, eval_n_hashes=evaluate, full_attention=full,
                                task_accuracy=accuracy(train, evaluate, full), chance_accuracy=1 / 126))
    page = write_report([write_results_dir(tmp_path / "run", rows)], tmp_path / "r.html").read_text()
    section = page.split('<section id="paper">')[1].split("</section>")[0]
    assert "Chance (a uniform guess among the symbols of w): 1/126 = 0.79%." in section
    measured, published = section.split("The paper's numbers")
    dense, sdpa = measured.split("full attention = sdpa")
    assert "full attention = dense (scores unscaled, unit-length keys, own key masked), the paper's text" in dense
    assert "The paper's text" in dense and "transformer_copy.gin" not in dense
    assert sdpa.startswith(" (scores / sqrt(d), keys not normalised, own key visible), the authors' code")
    assert "transformer_copy.gin" in sdpa
    assert "MemoryEfficientCausalAttention.share_qk" in sdpa
    for table, full in ((dense, "dense"), (sdpa, "sdpa")):
        head, body = table.split("<table")[1].split("<tbody>")
        assert f"<th>full attention ({full})</th>" in head
        cells = re.findall(r"<td>([^<]*)</td>", body)
        # rows full, LSH-4, LSH-1; columns full, LSH-8, LSH-1
        want = [accuracy(t, e, full if 0 in (t, e) else None) for t in (0, 4, 1) for e in (0, 8, 1)]
        assert cells == [f"{v * 100:.1f}%" for v in want]
    # An LSH-trained model evaluated with LSH is one cell, shown in both tables.
    assert f"{accuracy(4, 8, None) * 100:.1f}%" in dense and f"{accuracy(4, 8, None) * 100:.1f}%" in sdpa
    # The paper's Table 2 as printed (LSH-2 / LSH-2 is 98.1) and the fast.ai reproduction's.
    paper, fastai = published.split("fast.ai reproduction")
    assert "98.1%" in paper and "97.1%" not in paper and "paper_table2.png" in paper
    assert "<th>full attention (authors' code)</th>" in paper
    assert "1.37%" in fastai and "46.5%" in fastai and "93.05%" in fastai and "10c_experiment" in fastai


def test_a_run_where_everything_failed_still_renders_its_failures(tmp_path):
    rows = [row(backend="eager", seq_len=L, n_hashes=2, status=status, reason=f"{status} at {L}")
            for L, status in ((256, "crashed"), (512, "nonfinite"), (1024, "timeout"))]
    page = write_report([write_results_dir(tmp_path / "run", rows)], tmp_path / "r.html").read_text()
    failures = page.split('<section id="failures">')[1].split("</section>")[0]
    for r in rows:
        assert r["reason"] in failures and r["status"] in failures
    assert '"figures":[]' in page.replace(get_plotlyjs(), "")


def test_comparison_matches_by_case_id_and_keeps_one_sided_cases(tmp_path):
    baseline_rows = scaling_rows()
    # Two cases whose listed parameters agree but whose ids differ (e.g. a task suite's extra keys).
    twins = [row(backend="eager", seq_len=512, n_hashes=2, case_id=f"twin-{i}", time_median_s=1.0 + i)
             for i in range(2)]
    candidate_rows = scaling_rows()[1:] + twins
    _, base = load_frame([write_results_dir(tmp_path / "b", baseline_rows)])
    _, cand = load_frame([write_results_dir(tmp_path / "c", candidate_rows)])
    present = dict(zip(*compare(base, cand)[["case_id", "present"]].T.values))
    assert present["twin-0"] == present["twin-1"] == "candidate only"
    assert present[baseline_rows[0]["case_id"]] == "baseline only"
    assert sum(p == "both" for p in present.values()) == len(baseline_rows) - 1


def test_series_styles_tell_backends_and_hash_counts_apart(tmp_path):
    rows = []
    for L in (1024, 2048, 4096):
        rows.append(row(backend="dense", backend_kind="dense", seq_len=L, time_median_s=1e-9 * L * L))
        for backend, kind in (("eager", "lsh"), ("compiled", "lsh"), ("hf_lsh", "peer")):
            for n in (1, 4):
                rows.append(row(backend=backend, backend_kind=kind, seq_len=L, n_hashes=n, time_median_s=1e-6 * L))
    _, frame = load_frame([write_results_dir(tmp_path / "run", rows)])
    (group,) = scaling_groups(frame)
    traces = {t["name"].split(" (k=")[0]: t for t in scaling_figure(group, "time", "t").figure["data"]}
    style = {name: (t["line"]["color"], t["line"]["dash"], t["marker"]["symbol"]) for name, t in traces.items()}
    assert style["eager LSH-4"][0] == style["compiled LSH-4"][0]  # same hash count, same colour...
    assert style["eager LSH-4"][1:] != style["compiled LSH-4"][1:]  # ...told apart by dash and marker
    assert style["eager LSH-1"][0] != style["eager LSH-4"][0]
    assert style["hf_lsh LSH-4"][0] not in {style["eager LSH-4"][0], style["eager LSH-1"][0], style["dense"][0]}


# --- figures a reader can trust at a glance -------------------------------------------------------------

def test_noise_is_flagged_by_spread_and_by_more_work_in_less_time(tmp_path):
    rows = [row(backend="eager", seq_len=4096, n_buckets=16, n_hashes=8, time_median_s=5.0, time_iqr_s=0.1,
                flops_analytic=1e9),
            row(backend="eager", seq_len=4096, n_buckets=8, n_hashes=8, time_median_s=4.0, time_iqr_s=0.1,
                flops_analytic=2e9),
            row(backend="eager", seq_len=4096, n_buckets=32, n_hashes=8, time_median_s=1.0, time_iqr_s=0.9,
                flops_analytic=5e8)]
    _, frame = load_frame([write_results_dir(tmp_path / "run", rows)])
    noise = dict(zip(frame["n_buckets"], frame["noise"]))
    assert "slower than" in noise[16] and "2.0x its FLOPs" in noise[16]  # more FLOPs, less time
    assert noise[8] == ""
    assert noise[32].startswith("IQR 90% of the median")
    assert any("flagged noisy" in s for _, s in headline_findings(frame))


@pytest.mark.slow
def test_interpreted_rows_are_labelled_and_kept_out_of_fits_and_comparisons(tmp_path):
    rows = scaling_rows(dense_oom_from=None)
    for L in (1024, 2048, 4096):
        rows.append(row(backend="triton", seq_len=L, n_hashes=1, chunk_len=64, n_buckets=2 * L // 64,
                        time_median_s=0.2 * L, interpreted=True))
    _, frame = load_frame([write_results_dir(tmp_path / "run", rows)])
    (group,) = [g for g in scaling_groups(frame) if g.context["suite"] == "synthetic"]
    triton = next(s for s in group.series if s.name.startswith("triton"))
    assert triton.name == "triton LSH-1 (interpreted)" and triton.interpreted and triton.time_exponent is None
    findings = " ".join(s for _, s in headline_findings(frame))
    assert "triton" not in findings.replace("triton LSH-1 did not run", "")
    from harness.report.analysis import speedups

    table = speedups([group])
    assert not table.empty and not table["series"].str.startswith("triton").any()
    eager = table[(table["series"] == "eager LSH-1") & (table["seq_len"] == 4096)].iloc[0]
    assert eager["speed_up"] == pytest.approx(DENSE_TIME[0] * 4096 ** 2 / (LSH_TIME_PER_HASH[0] * 4096))
    assert eager["tokens_per_s"] == pytest.approx(4096 / (LSH_TIME_PER_HASH[0] * 4096))


def test_time_bars_span_q1_to_q3_and_the_fastest_call_is_marked(tmp_path):
    rows = [row(backend="eager", seq_len=L, n_hashes=1, chunk_len=64, n_buckets=2 * L // 64, time_median_s=1.0,
                time_q1_s=0.9, time_q3_s=1.5, time_iqr_s=0.6, time_min_s=0.8) for L in (1024, 2048)]
    _, frame = load_frame([write_results_dir(tmp_path / "run", rows)])
    (group,) = scaling_groups(frame)
    data = scaling_figure(group, "time", "t").figure["data"]
    line = next(t for t in data if t.get("mode") == "lines+markers")
    assert line["error_y"]["symmetric"] is False
    assert line["error_y"]["array"] == pytest.approx([0.5, 0.5])
    assert line["error_y"]["arrayminus"] == pytest.approx([0.1, 0.1])
    fastest = next(t for t in data if "fastest call" in t["name"])
    assert fastest["y"] == pytest.approx([0.8, 0.8])
    # A spread of 60% of the median is noisy: hollow markers.
    assert all(symbol.endswith("-open") for symbol in line["marker"]["symbol"])


def test_the_page_shows_the_new_panels_and_plotly_can_come_from_the_cdn(tmp_path):
    run = {"suite": "synthetic", "environment": ENV,
           "matmul_peak": [{"device": "cpu", "dtype": "float32", "flops_per_s": 1e11, "how": "best of 5"}]}
    rows = scaling_rows(dense_oom_from=None) + grid_rows()
    for r in rows:
        if r["time_median_s"] and r["flops_analytic"]:
            r["achieved_flops_per_s"] = r["flops_analytic"] / r["time_median_s"]
        r["rss_trace"] = [[0.0, 100], [0.01, 300]] if r["backend"] == "eager" else None
    path = write_results_dir(tmp_path / "run", rows, run=run)
    sets, frame = load_frame([path])
    assert frame["peak_share"].notna().any()
    page = render_html(sets, frame)
    for needle in ("Against the dense baselines", "fig-speedup-0", "fig-accuracy-time", "fig-rss-trace",
                   "fig-grid-memory-", "The machine's matmul peak", "100.0 GFLOP/s", "achieved / matmul peak",
                   "How every figure is obtained", "<th>suite</th>"):
        assert needle in page, needle
    cdn = render_html(sets, frame, plotly_js="cdn")
    assert "cdn.plot.ly/plotly-" in cdn and len(cdn) < len(page) - 1_000_000
    with pytest.raises(UserError, match="--plotly-js"):
        render_html(sets, frame, plotly_js="somewhere")


# --- profiles: phases, the live set at the peak, trace links -------------------------------------------

def html_text(value: str) -> str:
    """value as the page's autoescaping writes it."""
    return html.escape(value, quote=True).replace("&#x27;", "&#39;").replace("&quot;", "&#34;")


def page_figures(page: str) -> dict:
    payload = page.split('<script type="application/json" id="report-data">')[1].split("</script>")[0]
    return {f["id"]: f for f in json.loads(payload)["figures"]}


def hash_share(length: int) -> float:
    """The synthetic eager rows' hashing share: grows with the length (1K: 0.1, 16K: 0.5)."""
    return 0.1 * (1 + math.log2(length // 1024))


def profiled_rows() -> list[dict]:
    """scaling_rows with phases on every ok row (dense: `other` whole), a live set and profile files on
    the eager LSH-1 rows."""
    rows = scaling_rows(hashes=(1,))
    for r in rows:
        if r["status"] != "ok":
            continue
        if r["backend"] == "dense":
            r["phase_shares"] = {"other": 1.0}
        else:
            h = hash_share(r["seq_len"])
            r["phase_shares"] = {"other": 0.1, "lsh.attend": 0.9 - h - 0.05, "lsh.hash": h, "lsh.sort": 0.05}
            r["peak_live_top"] = [{"op": "aten::bmm", "where": "(no module) | lsh.attend",
                                   "bytes": 0.5 * r["mem_peak_bytes"], "count": 2},
                                  {"op": "(before the call)", "where": "inputs, parameters, optimizer state",
                                   "bytes": 0.25 * r["mem_peak_bytes"], "count": None}]
            r["trace_file"] = f"profiles/{r['case_id']}/trace.json"
            r["op_table_file"] = f"profiles/{r['case_id']}/ops.json"
        r["phase_total_s"] = 1.25 * r["time_median_s"]
        r["phase_times"] = {k: v * r["phase_total_s"] for k, v in r["phase_shares"].items()}
    return rows


def test_profiled_rows_get_phase_bars_the_live_set_and_trace_links(tmp_path):
    rows = profiled_rows()
    path = write_results_dir(tmp_path / "run", rows)
    page = write_report([path], tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'id="profiles"' in page
    figures = page_figures(page)
    phases = figures["fig-phases-0"]
    # One trace per phase, stacked in call order with `other` on top; each bar a (series, length) pair.
    assert [t["name"] for t in phases["data"]] == ["lsh.hash", "lsh.sort", "lsh.attend", "other"]
    assert phases["layout"]["barmode"] == "stack"
    hashing = phases["data"][0]
    bars = list(zip(*hashing["x"]))
    eager = [(series, length) for series, length in bars if series.startswith("eager")]
    assert eager == [("eager LSH-1", label) for label in ("1K", "2K", "4K", "8K", "16K")]
    shares = dict(zip(bars, hashing["y"]))
    for length, label in zip((1024, 2048, 4096, 8192, 16384), ("1K", "2K", "4K", "8K", "16K")):
        assert shares[("eager LSH-1", label)] == pytest.approx(100 * hash_share(length))
    # dense (which OOMs at 16K) is `other` whole at the lengths it ran.
    other = dict(zip(bars, phases["data"][-1]["y"]))
    assert [other[b] for b in bars if b[0] == "dense"] == [100.0] * 4
    assert sum(t["y"][bars.index(("eager LSH-1", "4K"))] for t in phases["data"]) == pytest.approx(100)

    live = figures["fig-peak-live"]
    eager_rows = [r for r in rows if r["backend"] == "eager" and r["status"] == "ok"]
    buttons = live["layout"]["updatemenus"][0]["buttons"]
    assert len(buttons) == len(eager_rows)
    first = live["data"][0]
    assert first["orientation"] == "h"
    assert first["y"] == ["aten::bmm<br>lsh.attend", "(before the call)<br>inputs, parameters, optimizer state",
                          "other (outside the top groups)"]
    # The top groups and the rest add up to the case's peak: 50%, 25%, 25%.
    assert first["text"] == ["50.0%", "25.0%", "25.0%"]
    assert first["x"][0] == pytest.approx(2 * first["x"][1]) and first["x"][1] == pytest.approx(first["x"][2])

    # Links relative to the report's folder; the table lists only cases with files.
    case = eager_rows[0]["case_id"]
    assert f'href="../run/profiles/{case}/trace.json"' in page
    assert f'href="../run/profiles/{case}/ops.json"' in page
    assert page.count(">trace</a>") == len(eager_rows)
    # Each figure says how it is obtained: its caption quotes the metric table's `how`, and the table of
    # how every figure is obtained has the file metrics too.
    section = page.split('<section id="profiles">')[1].split("<section")[0]
    for name in ("phase_shares", "phase_times", "peak_live_top"):
        assert html_text(METRICS[name].how) in section, name
    for name in ("trace_file", "op_table_file", "peak_live_file"):
        # (pandas' table, which escapes &, < and > only)
        assert html.escape(METRICS[name].how, quote=False) in page.split('<section id="figures">')[1], name


def test_profile_links_are_file_uris_without_an_output_folder(tmp_path):
    path = write_results_dir(tmp_path / "run", profiled_rows())
    page = render_html(*load_frame([path]))
    case = next(r["case_id"] for r in profiled_rows() if r.get("trace_file"))
    assert f'href="{(path / "profiles" / case / "trace.json").resolve().as_uri()}"' in page


def test_a_single_profiled_length_still_gets_its_phase_bars(tmp_path):
    rows = [r for r in profiled_rows() if r["seq_len"] == 2048]
    sets, frame = load_frame([write_results_dir(tmp_path / "run", rows)])
    assert scaling_groups(frame) == []
    figures = page_figures(render_html(sets, frame))
    assert [list(zip(*t["x"])) for t in figures["fig-phases-0"]["data"]][0] == [("dense", "2K"), ("eager LSH-1", "2K")]


def test_a_run_without_profiles_has_no_profiles_section(tmp_path):
    page = render_html(*load_frame([write_results_dir(tmp_path / "run", scaling_rows())]))
    assert 'id="profiles"' not in page and "Profiles: where" not in page
    assert not [key for key in page_figures(page) if key.startswith(("fig-phases", "fig-peak-live"))]
    # Its metrics are still declared in the table of how every figure is obtained.
    assert "phase_shares" in page and "peak_live_top" in page
