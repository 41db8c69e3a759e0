"""reformer-bench CLI: bad input is one line and exit code 2; run / list / show print what they say."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli
from harness.results.store import row_keys

SUITES = Path(__file__).parent / "suites"
REPO = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("text, words", [
    ("[sweep]\nseq_len = [256, 512\n", ["TOML syntax error", "line 2"]),
    ("[defaults]\nchunk_lem = 64\n", ["unknown key 'chunk_lem'", "did you mean 'chunk_len'"]),
    ("[defaults]\nbatch = \"big\"\n", ["batch", "'big'"]),
    ("[sweep]\nseq_len = []\n", ["seq_len", "non-empty list"]),
    ("[sweep]\nseq_len = [64]\n[[exclude]]\nseq_len = 64\n", ["sweep is empty"]),
    ("[sweep]\nbackend = [\"eagre\"]\n", ["unknown backend 'eagre'", "did you mean 'eager'"]),
    ("[sweep]\nseq_len = [64]\n[[exclude]]\nseq_len = {min = \"a\"}\n", ["seq_len.min", "'a'"]),
    ("[suite]\nplugins = [\"cli_broken_plugin\"]\n", ["'cli_broken_plugin'", "ZeroDivisionError"]),
])
def test_bad_suite_is_one_line_and_exit_2(tmp_path, capsys, text, words):
    suite = tmp_path / "bad.toml"
    suite.write_text(text)
    (tmp_path / "cli_broken_plugin.py").write_text("1 / 0\n")
    code, _, err = run_cli(capsys, "run", str(suite), "--out", str(tmp_path / "out"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("reformer-bench: error: ")
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bad_suite_from_the_shell_has_no_traceback():
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(SUITES / "bad_syntax.toml")],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "line 5" in done.stderr


def test_bad_flags(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", str(SUITES / "three_cases.toml"), "--max-seq-len", "0")
    assert code == 2 and "--max-seq-len" in err
    code, _, err = run_cli(capsys, "run", str(SUITES / "three_cases.toml"), "--backend", "nope")
    assert code == 2 and "--backend 'nope': unknown backend" in err
    code, _, err = run_cli(capsys, "show", str(tmp_path / "missing"))
    assert code == 2 and "no results" in err


@pytest.mark.slow
def test_list_names_every_backend_and_why_one_is_unavailable(capsys):
    import impls

    impls.register_backend("cli_test_absent", lambda: _Absent(), kind="lsh")
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(impls.list_backends()) <= set(lines)
    assert "available" in lines["eager"] and "unavailable" not in lines["eager"]
    assert "unavailable: needs a machine that is not this one" in lines["cli_test_absent"]
    assert "peer" in lines["hf_lsh"]


class _Absent:
    name = "cli_test_absent"

    def available(self):
        return False, "needs a machine that is not this one"


def test_show_prints_a_table_with_units(tmp_path, capsys):
    row = {key: None for key in row_keys()}
    row.update(case_id="a", backend="eager", mode="forward", seq_len=1024, batch=1, status="ok",
               time_median_s=0.0125, mem_peak_bytes=3 * 2 ** 20, n_buckets=32, n_hashes=4, chunk_len=64)
    failed = dict(row, case_id="b", backend="dense", status="oom", reason="out of memory at 1 TiB",
                  time_median_s=None, mem_peak_bytes=None)
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(failed) + "\n")
    code, out, _ = run_cli(capsys, "show", str(tmp_path))
    assert code == 0
    assert "median (ms)" in out and "peak mem (MiB)" in out
    assert "12.5" in out
    assert "b: oom: out of memory at 1 TiB" in out
    assert "2 cases: 1 ok, 1 oom" in out


@pytest.mark.slow
def test_run_writes_results_and_resume_finds_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = str(SUITES / "three_cases.toml")
    code, out, err = run_cli(capsys, "run", suite, "--max-seq-len", "32", "--no-report")
    assert code == 0, err
    (out_dir,) = (tmp_path / "reports").glob("three-*")
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert [r["seq_len"] for r in rows] == [32]
    assert set(row_keys()) <= set(rows[0])
    assert "1 cases: 1 unavailable" in out
    assert "[1/1]" in err  # the progress line
    assert json.loads((out_dir / "run.json").read_text())["suite"] == "three"
    # --resume without --out continues the newest run of the suite: nothing left to run.
    code, out, err = run_cli(capsys, "run", suite, "--max-seq-len", "32", "--no-report", "--resume")
    assert code == 0, err
    assert "1 cases skipped" in out and len((out_dir / "results.jsonl").read_text().splitlines()) == 1
    # ... and refuses a directory that holds another suite's run.
    other = tmp_path / "other.toml"
    other.write_text((SUITES / "three_cases.toml").read_text().replace('name = "three"', 'name = "other"'))
    code, _, err = run_cli(capsys, "run", str(other), "--out", str(out_dir), "--resume")
    assert code == 2 and "holds a run of suite 'three'" in err


# --- bad run directories and results files: one line, exit 2, nothing written ----------------------

def _assert_one_line_error(code, err, *words):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("reformer-bench: error: "), err
    for word in words:
        assert word in err, (word, err)


def test_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("not a directory")
    code, _, err = run_cli(capsys, "run", str(SUITES / "three_cases.toml"), "--out", str(out), "--no-report")
    _assert_one_line_error(code, err, str(out), "not a directory")
    assert out.read_text() == "not a directory"


def test_out_below_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run"
    code, _, err = run_cli(capsys, "run", str(SUITES / "three_cases.toml"), "--out", str(out), "--no-report")
    _assert_one_line_error(code, err, str(out))


def _earlier_run(run_dir: Path, suite="three") -> Path:
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"suite": suite}))
    row = {key: None for key in row_keys()}
    row.update(case_id="earlier", suite=suite, backend="eager", mode="forward", seq_len=32, batch=1, status="ok")
    (run_dir / "results.jsonl").write_text(json.dumps(row) + "\n")
    return run_dir


def test_out_with_rows_needs_resume(tmp_path, capsys):
    run_dir = _earlier_run(tmp_path / "run")
    before = {p.name: p.read_text() for p in run_dir.iterdir()}
    code, _, err = run_cli(capsys, "run", str(SUITES / "three_cases.toml"), "--out", str(run_dir), "--no-report")
    _assert_one_line_error(code, err, str(run_dir), "already holds 1 result rows", "--resume", "another --out")
    assert {p.name: p.read_text() for p in run_dir.iterdir()} == before


@pytest.mark.parametrize("run_json", ["{\"suite\": \"thr", "[1, 2]", b"\xff\xfe{}"])
def test_resume_with_a_corrupt_run_json(tmp_path, capsys, run_json):
    run_dir = _earlier_run(tmp_path / "run")
    path = run_dir / "run.json"
    path.write_bytes(run_json if isinstance(run_json, bytes) else run_json.encode())
    code, _, err = run_cli(capsys, "run", str(SUITES / "three_cases.toml"), "--out", str(run_dir), "--resume",
                           "--no-report")
    _assert_one_line_error(code, err, "--resume", str(path), "not a run.json")


def test_resume_with_a_results_file_that_is_not_text(tmp_path, capsys):
    run_dir = _earlier_run(tmp_path / "run")
    (run_dir / "results.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xff")
    code, _, err = run_cli(capsys, "run", str(SUITES / "three_cases.toml"), "--out", str(run_dir), "--resume",
                           "--no-report")
    _assert_one_line_error(code, err, str(run_dir / "results.jsonl"), "not UTF-8")


def test_show_of_a_file_that_is_not_text(tmp_path, capsys):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xd8\xff")
    code, _, err = run_cli(capsys, "show", str(path))
    _assert_one_line_error(code, err, "show:", str(path), "not UTF-8")


@pytest.mark.slow
def test_bad_run_directory_from_the_shell_has_no_traceback(tmp_path):
    out = tmp_path / "taken"
    out.write_text("")
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(SUITES / "three_cases.toml"),
                           "--out", str(out)], check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0


def test_dry_run_lists_the_cases_and_runs_nothing(tmp_path, capsys):
    smoke = str(REPO / "suites" / "smoke.toml")
    code, out, _ = run_cli(capsys, "run", smoke, "--dry-run", "--out", str(tmp_path / "o"))
    lines = out.strip().splitlines()
    assert code == 0 and lines[-1].startswith("16 cases in suite smoke")
    assert len(lines) == 17 and all(line.split("-")[0] in ("eager", "dense", "sdpa", "compiled", "triton")
                                    for line in lines[:-1])
    assert not (tmp_path / "o").exists()


def test_show_summary_prints_ratios_against_the_baselines(tmp_path, capsys):
    rows = []
    for backend, kind, seconds in (("eager", "lsh", 0.5), ("dense", "dense", 2.0)):
        row = {key: None for key in row_keys()}
        row.update(case_id=backend, backend=backend, backend_kind=kind, workload="attention", mode="forward",
                   seq_len=4096, batch=1, heads=4, d_head=64, status="ok", time_median_s=seconds,
                   mem_peak_bytes=2 ** 20 * (4 if kind == "dense" else 1))
        rows.append(row)
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = run_cli(capsys, "show", str(tmp_path), "--summary")
    assert code == 0
    line = next(line for line in out.splitlines() if " eager " in line and " dense " in line)
    assert "0.25x" in line and "4.00x" in line  # time ratio and speed-up; memory ratio 0.25x too
