"""The memory regression gate: `reformer-bench gate RESULTS --baseline FILE [--tolerance 5%]`.

Compares every case of a results directory (written by `reformer-bench run`) with a committed
baseline of the same device class and exits 1 when a case regressed, so CI can block the change.
The rule is harness.results.compare's (noise 0):

    regression:   measured > baseline * (1 + tolerance)
    improvement:  measured < baseline * (1 - tolerance)
    change:       (measured - baseline) / baseline

The gated figures are the metrics the table marks (harness.measure.metrics, listed under the
options below): those with `gate = "always"` (the peak memory: exact tensor bytes on CPU, CUDA
allocator peak on GPU) with --tolerance (default: the metric's own), those with `gate = "on request"`
(the median time) only with their flag (--<first word of the metric>-tolerance). A baseline case that
is missing from the results, failed, or has no figure for an always-gated metric also fails the
gate. Cases not in the baseline are listed and pass.

Baseline file (reports/baselines/<device class>.json):
    {"device_class": "cpu", "created": "<UTC ISO time>", "commit": "<git sha>", "suite": "gate",
     "tolerance": {"<metric>": ...}, "cases": {"<case_id>": {"<gated metric>": number or null, ...}}}
Device class: "cpu" (the CPU figures do not depend on the CPU model), or "cuda-<GPU name slug>",
e.g. "cuda-nvidia-h200": allocator peaks differ between GPU models and are compared within one.

Exit status: 0 pass (or baseline written), 1 regression / missing / failed case, 2 unusable input.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .env import cuda_gpu_name, recorded_commit, recorded_gpu_name, row_gpu_name
from .errors import UserError
from .measure.metrics import METRICS, Metric, metrics
from .results.compare import change, verdict

BASELINE_DIR = Path("reports/baselines")


def gated_metrics() -> list[Metric]:
    """The metrics a baseline holds: those the metric table gates, always or on request."""
    return metrics(lambda m: m.gate is not None)


def required_metrics() -> list[Metric]:
    """The metrics every baseline case and every row of a baseline run must have: the always-gated ones."""
    return [m for m in gated_metrics() if m.gate == "always"]


def flag_of(metric: Metric) -> str:
    """The option that asks for an on-request metric: --<first word of its name>-tolerance."""
    return f"--{metric.name.split('_')[0]}-tolerance"


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
        raise UserError(f"device={device!r}: the gate knows device classes for 'cpu' and 'cuda' only")
    if gpu_name is None:
        gpu_name = cuda_gpu_name(device)
        if gpu_name is None:
            raise UserError(f"device={device!r} but no GPU name was recorded and CUDA is not available here")
    return f"cuda-{slug(gpu_name)}"


def results_device_class(run: dict, rows: list[dict], where: str) -> str:
    """The single device class of a results directory's rows."""
    if not rows:
        raise UserError(f"{where}: no result rows to gate")
    classes = sorted({device_class(str(row.get("device") or "cpu"),
                                   (row_gpu_name(row) or recorded_gpu_name(run))
                                   if str(row.get("device") or "cpu").startswith("cuda") else None)
                      for row in rows})
    if len(classes) > 1:
        raise UserError(f"{where}: rows ran on several device classes ({', '.join(classes)}); "
                        f"gate one device class per results directory")
    return classes[0]


# --- baselines ----------------------------------------------------------------------------------

def load_baseline(path: Path) -> dict:
    """Read and check a baseline file; UserError names the file and the key at fault."""
    if not path.is_file():
        raise UserError(f"baseline {str(path)!r} does not exist; create it from a trusted run with "
                        f"`reformer-bench gate RESULTS --baseline {path} --update`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"baseline {str(path)!r} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"baseline {str(path)!r}: expected a JSON object, got {type(data).__name__}")
    if not isinstance(data.get("device_class"), str):
        raise UserError(f"baseline {str(path)!r}: device_class={data.get('device_class')!r} is not a string")
    cases = data.get("cases")
    if not isinstance(cases, dict) or not cases:
        raise UserError(f"baseline {str(path)!r}: 'cases' must be a non-empty object of case_id -> figures")
    for case_id, figures in cases.items():
        if not isinstance(figures, dict):
            raise UserError(f"baseline {str(path)!r}: cases[{case_id!r}] is not an object")
        for metric in (m.name for m in gated_metrics()):
            value = figures.get(metric)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or value < 0):
                raise UserError(f"baseline {str(path)!r}: cases[{case_id!r}].{metric}={value!r} "
                                f"is not a non-negative number or null")
        for name in (m.name for m in required_metrics()):
            if figures.get(name) is None:
                raise UserError(f"baseline {str(path)!r}: cases[{case_id!r}].{name} is missing")
    return data


def make_baseline(run: dict, rows: list[dict], dev_class: str, tolerances: dict[str, float]) -> dict:
    """A baseline from a results directory whose every case succeeded with every always-gated figure;
    tolerances: those the baseline was written with (recorded, not read back)."""
    required = [m.name for m in required_metrics()]
    bad = [f"{row['case_id']} ({_failure(row)})" for row in rows
           if row.get("status") != "ok" or any(row.get(name) is None for name in required)]
    if bad:
        raise UserError(f"refusing to write a baseline from a run with failed or unmeasured cases: "
                        f"{'; '.join(bad)}")
    if not rows:
        raise UserError("refusing to write a baseline from a results directory with no cases")
    cases = {row["case_id"]: {m.name: row.get(m.name) for m in gated_metrics()}
             for row in sorted(rows, key=lambda r: r["case_id"])}
    return {
        "device_class": dev_class,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "commit": recorded_commit(run),
        "suite": run.get("suite"),
        "tolerance": tolerances,
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
        return change(self.baseline, self.measured)

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


def compare(baseline_cases: dict, rows: list[dict], tolerances: dict[str, float]) -> GateReport:
    """Every baseline case against its results row; tolerances: gated metric -> tolerance (a metric
    left out is not compared)."""
    by_id = {row["case_id"]: row for row in rows}
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
            if base is None:
                continue
            measured = row.get(metric)
            if measured is None:
                findings.append(Finding(case_id, metric, "missing", base, None, detail="not measured"))
                continue
            found = verdict(base, measured, tolerance)
            if found is not None:
                findings.append(Finding(case_id, metric, found, base, measured))
    new_cases = sorted(set(by_id) - set(baseline_cases))
    return GateReport(compared, findings, new_cases)


def _failure(row: dict) -> str:
    status = row.get("status")
    reason = str(row.get("reason") or "").strip().splitlines()
    return f"status {status}" + (f": {reason[0][:120]}" if reason else "")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 or word in ("missing", "failed") else "s")


def _format_value(metric: str, value: float | None) -> str:
    """As the metric table shows the metric, with its unit; bytes also in full (an exact CPU figure)."""
    if value is None:
        return "-"
    declared = METRICS[metric]
    shown = declared.shown_unit if declared.shown_unit is not None else declared.unit
    exact = f" ({int(value)} B)" if declared.unit == "B" else ""
    return f"{declared.format(value)} {shown}{exact}"


def format_report(report: GateReport, tolerances: dict[str, float]) -> str:
    """The table of regressions, failures and improvements, then one summary line."""
    header = ("case", "metric", "baseline", "measured", "change", "verdict")
    lines = [header]
    for f in sorted(report.findings, key=lambda f: (not f.fails, f.case_id, f.metric)):
        change = "-" if f.change is None else f"{f.change * 100:+.2f}%"
        measured = f.detail if f.verdict in ("missing", "failed") and f.measured is None else \
            _format_value(f.metric, f.measured)
        lines.append((f.case_id, f.metric, _format_value(f.metric, f.baseline),
                      measured, change, f.verdict.upper() if f.fails else f.verdict))
    out = []
    if len(lines) > 1:
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    counts = [_plural(sum(f.verdict == v for f in report.findings), v)
              for v in ("regression", "improvement", "missing", "failed")]
    tol = ", ".join(f"{metric} tolerance {value * 100:g}%" for metric, value in tolerances.items())
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
    always = [m for m in gated_metrics() if m.gate == "always"]
    parser.add_argument("--tolerance", type=parse_tolerance, default=None, metavar="PCT",
                        help="allowed relative increase of " + ", ".join(
                            f"{m.name} (default {m.tolerance:.0%})".replace("%", "%%") for m in always))
    for metric in gated_metrics():
        if metric.gate == "on request":
            parser.add_argument(flag_of(metric), type=parse_tolerance, default=None, metavar="PCT",
                                dest=f"tolerance_{metric.name}",
                                help=f"also gate {metric.name} with this allowed increase (default: not gated)")
    parser.add_argument("--update", action="store_true",
                        help="write the baseline from RESULTS instead of comparing (all cases must be ok)")


def tolerances_of(args: argparse.Namespace) -> dict[str, float]:
    """gated metric -> tolerance: the always-gated ones (--tolerance, else their own), then the
    on-request ones whose flag was given."""
    chosen: dict[str, float] = {}
    for metric in gated_metrics():
        if metric.gate == "always":
            # A gated metric that declares no tolerance is compared exactly.
            chosen[metric.name] = args.tolerance if args.tolerance is not None else (metric.tolerance or 0.0)
        elif getattr(args, f"tolerance_{metric.name}", None) is not None:
            chosen[metric.name] = getattr(args, f"tolerance_{metric.name}")
    return chosen


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `gate` subcommand to the reformer-bench CLI (harness.cli calls this)."""
    parser = subparsers.add_parser(
        "gate", help="compare a run's peak memory (and optionally time) with a committed baseline",
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_gate)
    return parser


def run_gate(args: argparse.Namespace) -> int:
    """The gate for parsed arguments: 0 pass (or baseline written), 1 regression; UserError otherwise."""
    from .results.store import read_results

    result_set = read_results(args.results, require_run=True)
    dev_class = results_device_class(result_set.run, result_set.rows, str(args.results))
    baseline_path = args.baseline or BASELINE_DIR / f"{dev_class}.json"
    tolerances = tolerances_of(args)

    if args.update:
        if baseline_path.is_file():
            old_class = load_baseline(baseline_path)["device_class"]
            if old_class != dev_class:
                raise UserError(f"baseline {str(baseline_path)!r} is for device class {old_class!r}, "
                                f"the results ran on {dev_class!r}; write reports/baselines/{dev_class}.json")
        baseline = make_baseline(result_set.run, result_set.rows, dev_class, tolerances)
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        baseline_path.write_text(json.dumps(baseline, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote baseline {baseline_path}: {len(baseline['cases'])} cases, device class {dev_class}")
        return 0

    baseline = load_baseline(baseline_path)
    if baseline["device_class"] != dev_class:
        raise UserError(f"baseline {str(baseline_path)!r} is for device class {baseline['device_class']!r} "
                        f"but the results ran on {dev_class!r}; compare with "
                        f"reports/baselines/{dev_class}.json (create it with --update)")
    report = compare(baseline["cases"], result_set.rows, tolerances)
    print(f"gate: {args.results} against {baseline_path} (device class {dev_class}, "
          f"baseline commit {str(baseline.get('commit') or '?')[:12]})")
    print(format_report(report, tolerances))
    return 0 if report.passed else 1
