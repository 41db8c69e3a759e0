"""Results files that do not fit the parameter and metric tables: `show`, `report` and `gate` say so in one
line and exit 2 (or give the gate's verdict), never a traceback; a seeded fuzz of hand-edited and cut-short
files keeps it so."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from harness.cli import main
from tests.test_report import scaling_rows, write_results_dir


def _rows() -> list[dict]:
    """Synthetic rows with every kind of field: a model table, an RSS trace, a task row."""
    rows = scaling_rows(lengths=(1024, 2048, 4096), hashes=(1,))
    rows[0].update(rss_trace=[[0.0, 1.0e6], [0.01, 2.0e6]], rss_peak_bytes=2.0e6, compilations=0)
    rows[1].update(workload="model", model={"layers": 2, "d_model": 64, "heads": 4})
    rows.append(dict(rows[2], case_id="task-train", workload="task", mode="train", task="duplication",
                     train_n_hashes=1, train_curve=[[1, 2.0, 0.5], [2, 1.5, None]], task_accuracy=0.5))
    return rows


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _one_line_error(code: int, err: str, allowed=(0, 2)) -> None:
    assert code in allowed
    if code == 2:
        assert err.strip() and "\n" not in err.strip() and "Traceback" not in err


@pytest.mark.parametrize("key, value, command", [("model", -1, "show"), ("seq_len", None, "report")])
def test_the_two_files_of_the_issue(tmp_path, capsys, key, value, command):
    """`"model": -1` once ended `show` in a TypeError, `"seq_len": null` `report` in a ValueError."""
    rows = _rows()
    rows[0][key] = value
    run = write_results_dir(tmp_path / "run", rows)
    argv = [command, str(run)] + (["-o", str(tmp_path / "r.html"), "--plotly-js", "cdn"] if command == "report"
                                  else [])
    code, err = _cli(capsys, *argv)
    assert code == 2
    assert f"results.jsonl:1: {key}={value!r}" in err and "\n" not in err.strip()


BAD_VALUES = (-1, -2.5, "x", None, True, [], {}, [[1]], 1.5, 1e308, "", {"a": [1]})


def _mutate(line: str, rng: random.Random) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:  # cut short already
        return line[:rng.randrange(1, len(line))]
    action = rng.choice(("retype", "retype", "drop", "cut"))
    if action == "cut":
        return line[:rng.randrange(1, len(line))]
    key = rng.choice(sorted(row))
    if action == "drop":
        row.pop(key)
    else:
        row[key] = rng.choice(BAD_VALUES)
    return json.dumps(row)


def test_fuzzed_results_files_end_in_one_line_or_a_verdict(tmp_path, capsys):
    measured = [r for r in _rows() if r["status"] == "ok" and r.get("mem_peak_bytes")]  # a baseline needs them
    clean = write_results_dir(tmp_path / "clean", measured)
    baseline = tmp_path / "baseline.json"
    assert main(["gate", str(clean), "--baseline", str(baseline), "--update"]) == 0
    capsys.readouterr()
    rng = random.Random(20)
    lines = (clean / "results.jsonl").read_text().splitlines()
    outcomes = set()
    for trial in range(24):
        mutated = list(lines)
        for _ in range(rng.choice((1, 1, 2))):
            index = rng.randrange(len(mutated))
            mutated[index] = _mutate(mutated[index], rng)
        run = write_results_dir(tmp_path / f"fuzz{trial}", [])
        (run / "results.jsonl").write_text("\n".join(mutated) + "\n")
        for argv, allowed in ((["show", str(run)], (0, 2)),
                              (["report", str(run), "-o", str(tmp_path / "r.html"), "--plotly-js", "cdn"], (0, 2)),
                              (["gate", str(run), "--baseline", str(baseline)], (0, 1, 2))):
            code, err = _cli(capsys, *argv)
            _one_line_error(code, err, allowed)
            outcomes.add((argv[0], code))
    # The fuzz reaches both ends: files read fine and files refused, for every command.
    assert {("show", 0), ("show", 2), ("report", 0), ("report", 2), ("gate", 2)} <= outcomes


def test_a_row_that_fits_reads_whatever_keys_it_lacks(tmp_path, capsys):
    run = write_results_dir(tmp_path / "run", [{"case_id": "a", "status": "ok", "backend": "eager"}], suite="s")
    assert main(["show", str(run)]) == 0
    assert main(["report", str(run), "-o", str(Path(tmp_path) / "r.html"), "--plotly-js", "cdn"]) == 0
