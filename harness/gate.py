"""The memory regression gate: `reformer-bench gate RESULTS --baseline FILE [--tolerance 5%]`.

Compares every case of a results directory (written by `reformer-bench run`) with a committed
baseline of the same device class and exits 1 when a case regressed, so CI can block the change.

    regression:   measured > baseline * (1 + tolerance)
    improvement:  measured < baseline * (1 - tolerance)
    change:       (measured - baseline) / baseline

Memory (`mem_peak_bytes`: exact tensor bytes on CPU, CUDA allocator peak on GPU) is always gated;
time (`time_median_s`) only with --time-tolerance. A baseline case that is missing from the results,
failed, or has no figure also fails the gate. Cases not in the baseline are listed and pass.

Baseline file (reports/baselines/<device class>.json):
    {"device_class": "cpu", "created": "<UTC ISO time>", "commit": "<git sha>", "suite": "gate",
     "tolerance": ..., "cases": {"<case_id>": {"mem_peak_bytes": int, "time_median_s": float}}}
Device class: "cpu" (the CPU figures do not depend on the CPU model), or "cuda-<GPU name slug>",
e.g. "cuda-nvidia-h200": allocator peaks differ between GPU models and are compared within one.

Exit status: 0 pass (or baseline written), 1 regression / missing / failed case, 2 unusable input.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.memory import format_size

BASELINE_DIR = Path("reports/baselines")
DEFAULT_TOLERANCE = 0.05
GATED_METRICS = {"mem_peak_bytes": "memory", "time_median_s": "time"}


class GateError(ValueError):
    """Input the gate cannot use (no results, no baseline, wrong device class); one line for the user."""


# --- device classes ---------------------------------------------------------------------------

def slug(text: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200': lower case, runs of other characters become one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_class(device: str, gpu_name: str | None = None) -> str:
    """'cpu', or 'cuda-<slug of the GPU name>' (gpu_name defaults to the current CUDA device's)."""
    kind = device.split(":")[0]
    if kind == "cpu":
        return "cpu"
    if kind != "cuda":
        raise GateError(f"device={device!r}: the gate knows device classes for 'cpu' and 'cuda' only")
    if gpu_name is None:
        import torch

        if not torch.cuda.is_available():
            raise GateError(f"device={device!r} but no GPU name was recorded and CUDA is not available here")
        gpu_name = torch.cuda.get_device_name(torch.device(device))
    return f"cuda-{slug(gpu_name)}"


_GPU_NAME_KEYS = ("gpu_name", "device_name", "gpu", "cuda_device_name")


def _recorded_gpu_name(run: dict) -> str | None:
    """The GPU name run.json recorded, wherever the runner put it (top level or its environment)."""
    for table in (run, run.get("environment") or {}, run.get("env") or {}):
        if not isinstance(table, dict):
            continue
        for key in _GPU_NAME_KEYS:
            value = table.get(key)
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, dict):
                value = value.get("name")
            if isinstance(value, str) and value and value.lower() not in ("cpu", "none"):
                return value
    return None


def results_device_class(run: dict, rows: list[dict], where: str) -> str:
    """The single device class of a results directory's rows."""
    devices = sorted({str(row.get("device") or "cpu") for row in rows})
    classes = sorted({device_class(d, _recorded_gpu_name(run) if d.startswith("cuda") else None)
                      for d in devices})
    if len(classes) > 1:
        raise GateError(f"{where}: rows ran on several device classes ({', '.join(classes)}); "
                        f"gate one device class per results directory")
    return classes[0]


def _recorded_commit(run: dict) -> str | None:
    for table in (run, run.get("environment") or {}, run.get("env") or {}):
        if isinstance(table, dict):
            for key in ("commit", "git_commit"):
                if isinstance(table.get(key), str):
                    return table[key]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# --- baselines ----------------------------------------------------------------------------------

def load_baseline(path: Path) -> dict:
    """Read and check a baseline file; GateError names the file and the key at fault."""
    if not path.is_file():
        raise GateError(f"baseline {str(path)!r} does not exist; create it from a trusted run with "
                        f"`reformer-bench gate RESULTS --baseline {path} --update`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GateError(f"baseline {str(path)!r} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise GateError(f"baseline {str(path)!r}: expected a JSON object, got {type(data).__name__}")
    if not isinstance(data.get("device_class"), str):
        raise GateError(f"baseline {str(path)!r}: device_class={data.get('device_class')!r} is not a string")
    cases = data.get("cases")
    if not isinstance(cases, dict) or not cases:
        raise GateError(f"baseline {str(path)!r}: 'cases' must be a non-empty object of case_id -> figures")
    for case_id, figures in cases.items():
        if not isinstance(figures, dict):
            raise GateError(f"baseline {str(path)!r}: cases[{case_id!r}] is not an object")
        for metric in GATED_METRICS:
            value = figures.get(metric)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or value < 0):
                raise GateError(f"baseline {str(path)!r}: cases[{case_id!r}].{metric}={value!r} "
                                f"is not a non-negative number or null")
        if figures.get("mem_peak_bytes") is None:
            raise GateError(f"baseline {str(path)!r}: cases[{case_id!r}].mem_peak_bytes is missing")
    return data


def make_baseline(run: dict, rows: list[dict], dev_class: str, tolerance: float) -> dict:
    """A baseline from a results directory whose every case succeeded with a memory figure."""
    bad = [f"{row['case_id']} ({_failure(row)})" for row in rows
           if row.get("status") != "ok" or row.get("mem_peak_bytes") is None]
    if bad:
        raise GateError(f"refusing to write a baseline from a run with failed or unmeasured cases: "
                        f"{'; '.join(bad)}")
    if not rows:
        raise GateError("refusing to write a baseline from a results directory with no cases")
    cases = {row["case_id"]: {metric: row.get(metric) for metric in GATED_METRICS}
             for row in sorted(rows, key=lambda r: r["case_id"])}
    return {
        "device_class": dev_class,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "commit": _recorded_commit(run),
        "suite": run.get("suite"),
        "tolerance": tolerance,
        "cases": cases,
    }


# --- comparison ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """One line of the gate's table. verdict: regression | improvement | missing | failed."""

    case_id: str
    metric: str
    verdict: str
    baseline: float | None = None
    measured: float | None = None
    detail: str = ""

    @property
    def change(self) -> float | None:
        """(measured - baseline) / baseline; None where either is missing or baseline is 0."""
        if self.baseline in (None, 0) or self.measured is None:
            return None
        return (self.measured - self.baseline) / self.baseline

    @property
    def fails(self) -> bool:
        return self.verdict != "improvement"


@dataclass(frozen=True)
class GateReport:
    compared: int
    findings: list[Finding]
    new_cases: list[str]

    @property
    def passed(self) -> bool:
        return not any(f.fails for f in self.findings)


def compare(baseline_cases: dict, rows: list[dict], mem_tolerance: float,
            time_tolerance: float | None = None) -> GateReport:
    """Every baseline case against its results row (see the module docstring for the rules)."""
    by_id = {row["case_id"]: row for row in rows}
    tolerances = {"mem_peak_bytes": mem_tolerance, "time_median_s": time_tolerance}
    findings: list[Finding] = []
    compared = 0
    for case_id in sorted(baseline_cases):
        row = by_id.get(case_id)
        if row is None:
            findings.append(Finding(case_id, "-", "missing", detail="not in the results"))
            continue
        if row.get("status") != "ok":
            findings.append(Finding(case_id, "-", "failed", detail=_failure(row)))
            continue
        compared += 1
        for metric, tolerance in tolerances.items():
            base = baseline_cases[case_id].get(metric)
            if tolerance is None or base is None:
                continue
            measured = row.get(metric)
            if measured is None:
                findings.append(Finding(case_id, metric, "missing", base, None, detail="not measured"))
            elif measured > base * (1 + tolerance):
                findings.append(Finding(case_id, metric, "regression", base, measured))
            elif measured < base * (1 - tolerance):
                findings.append(Finding(case_id, metric, "improvement", base, measured))
    new_cases = sorted(set(by_id) - set(baseline_cases))
    return GateReport(compared, findings, new_cases)


def _failure(row: dict) -> str:
    status = row.get("status")
    reason = str(row.get("reason") or "").strip().splitlines()
    return f"status {status}" + (f": {reason[0][:120]}" if reason else "")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 or word in ("missing", "failed") else "s")


def _format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "mem_peak_bytes":
        return f"{format_size(value)} ({int(value)} B)"
    return f"{value * 1e3:.3f} ms"


def format_report(report: GateReport, mem_tolerance: float, time_tolerance: float | None) -> str:
    """The table of regressions, failures and improvements, then one summary line."""
    header = ("case", "metric", "baseline", "measured", "change", "verdict")
    lines = [header]
    for f in sorted(report.findings, key=lambda f: (not f.fails, f.case_id, f.metric)):
        change = "-" if f.change is None else f"{f.change * 100:+.2f}%"
        measured = f.detail if f.verdict in ("missing", "failed") and f.measured is None else \
            _format_value(f.metric, f.measured)
        lines.append((f.case_id, GATED_METRICS.get(f.metric, "-"), _format_value(f.metric, f.baseline),
                      measured, change, f.verdict.upper() if f.fails else f.verdict))
    out = []
    if len(lines) > 1:
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    counts = [_plural(sum(f.verdict == v for f in report.findings), v)
              for v in ("regression", "improvement", "missing", "failed")]
    tol = f"memory tolerance {mem_tolerance * 100:g}%"
    if time_tolerance is not None:
        tol += f", time tolerance {time_tolerance * 100:g}%"
    summary = (f"gate {'PASSED' if report.passed else 'FAILED'}: {_plural(report.compared, 'case')} compared "
               f"({tol}); {', '.join(counts)}")
    if report.new_cases:
        summary += f"; {_plural(len(report.new_cases), 'case')} not in the baseline (--update adds them)"
    out.append(summary)
    return "\n".join(out)


# --- command line -------------------------------------------------------------------------------

def parse_tolerance(text: str) -> float:
    """'5%' or '5' -> 0.05 (a percentage, >= 0)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*%?\s*", str(text))
    if match is None:
        raise argparse.ArgumentTypeError(f"tolerance must be a percentage such as '5%', got {text!r}")
    return float(match.group(1)) / 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, help="results directory written by `reformer-bench run`")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="baseline JSON (default: reports/baselines/<device class of RESULTS>.json)")
    parser.add_argument("--tolerance", type=parse_tolerance, default=DEFAULT_TOLERANCE, metavar="PCT",
                        help="allowed relative increase of mem_peak_bytes (default 5%%)")
    parser.add_argument("--time-tolerance", type=parse_tolerance, default=None, metavar="PCT",
                        help="also gate time_median_s with this allowed increase (default: time not gated)")
    parser.add_argument("--update", action="store_true",
                        help="write the baseline from RESULTS instead of comparing (all cases must be ok)")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `gate` subcommand to the reformer-bench CLI (harness.cli calls this)."""
    parser = subparsers.add_parser(
        "gate", help="compare a run's peak memory (and optionally time) with a committed baseline",
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_gate)
    return parser


def run_gate(args: argparse.Namespace) -> int:
    """Run the gate for parsed arguments; returns the exit status (GateError -> one line, 2)."""
    try:
        return _run_gate(args)
    except GateError as exc:
        print(f"reformer-bench gate: error: {exc}", file=sys.stderr)
        return 2


def _run_gate(args: argparse.Namespace) -> int:
    from harness.report_data import ResultsError, load_result_set  # pandas: import only when gating

    try:
        result_set = load_result_set(args.results)
    except ResultsError as exc:
        raise GateError(str(exc)) from None
    dev_class = results_device_class(result_set.run, result_set.rows, str(args.results))
    baseline_path = args.baseline or BASELINE_DIR / f"{dev_class}.json"

    if args.update:
        if baseline_path.is_file():
            old_class = load_baseline(baseline_path)["device_class"]
            if old_class != dev_class:
                raise GateError(f"baseline {str(baseline_path)!r} is for device class {old_class!r}, "
                                f"the results ran on {dev_class!r}; write reports/baselines/{dev_class}.json")
        baseline = make_baseline(result_set.run, result_set.rows, dev_class, args.tolerance)
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        baseline_path.write_text(json.dumps(baseline, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote baseline {baseline_path}: {len(baseline['cases'])} cases, device class {dev_class}")
        return 0

    baseline = load_baseline(baseline_path)
    if baseline["device_class"] != dev_class:
        raise GateError(f"baseline {str(baseline_path)!r} is for device class {baseline['device_class']!r} "
                        f"but the results ran on {dev_class!r}; compare with "
                        f"reports/baselines/{dev_class}.json (create it with --update)")
    report = compare(baseline["cases"], result_set.rows, args.tolerance, args.time_tolerance)
    print(f"gate: {args.results} against {baseline_path} (device class {dev_class}, "
          f"baseline commit {str(baseline.get('commit') or '?')[:12]})")
    print(format_report(report, args.tolerance, args.time_tolerance))
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.gate RESULTS ...`: the gate without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="reformer-bench gate", description=__doc__.split("\n\n")[1])
    add_arguments(parser)
    return run_gate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
