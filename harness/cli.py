"""`reformer-bench`: run a suite, list backends, show results.

    reformer-bench run SUITE [--out DIR] [--resume] [--backend NAME ...] [--max-seq-len N] [--no-report]
    reformer-bench list
    reformer-bench show RESULTS

Exit codes: 0 done (failed cases are rows, not errors), 2 bad input (one line on stderr, no
traceback), 130 interrupted (finished rows kept; rerun with --resume). `run` refuses an --out that
already holds rows unless --resume is given (a second run appended there would repeat case ids).
Other modules add subcommands through a `register(subparsers)` function (_SUBCOMMAND_MODULES).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path

PROG = "reformer-bench"
DEFAULT_OUT_BASE = Path("reports")
_SUBCOMMAND_MODULES = ["harness.report", "harness.gate"]


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    from .results import ResultsFileError
    from .spec import SuiteError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, SuiteError, ResultsFileError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `reformer-bench show ... | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Benchmark and profile Reformer LSH-attention backends.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a suite: one isolated worker per case, rows appended to results.jsonl")
    run.add_argument("suite", type=Path, help="suite file, e.g. suites/smoke.toml")
    run.add_argument("--out", type=Path, default=None,
                     help="run directory (default reports/<suite>-<UTC timestamp>)")
    run.add_argument("--resume", action="store_true",
                     help="skip cases that already have a row in the run directory (--out, or the newest "
                          "reports/<suite>-* run)")
    run.add_argument("--backend", nargs="+", default=None, metavar="NAME",
                     help="only these backends")
    run.add_argument("--max-seq-len", type=int, default=None, metavar="N", help="only cases with seq_len <= N")
    run.add_argument("--no-report", action="store_true", help="do not write report.html")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="backends and whether each is available here (and why not)")
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="print a results.jsonl (or a run directory) as a table")
    show.add_argument("results", type=Path, help="results.jsonl or a run directory")
    show.set_defaults(func=cmd_show)

    for module_name in _SUBCOMMAND_MODULES:
        if importlib.util.find_spec(module_name) is not None:
            # A module that exists but fails to import is a bug to see, not a subcommand to hide.
            importlib.import_module(module_name).register(sub)
    return parser


def cmd_run(args) -> int:
    from .progress import Progress, results_table, status_summary
    from .results import RESULTS_FILE, RUN_FILE, ResultsFileError, latest_run_dir, new_run_dir, read_rows, read_run_json
    from .runner import SweepInterrupted, run_suite
    from .spec import load_suite

    if args.max_seq_len is not None and args.max_seq_len < 1:
        raise UsageError(f"--max-seq-len must be a positive integer, got {args.max_seq_len}")
    suite = load_suite(args.suite, backends=args.backend, max_seq_len=args.max_seq_len)
    if args.out is not None:
        run_dir = args.out
    elif args.resume:
        run_dir = latest_run_dir(DEFAULT_OUT_BASE, suite.name)
        if run_dir is None:
            raise UsageError(f"--resume: no earlier run of suite {suite.name!r} under {DEFAULT_OUT_BASE}/; "
                             f"pass --out DIR")
    else:
        run_dir = new_run_dir(DEFAULT_OUT_BASE, suite.name)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir}: exists and is not a directory")
    if args.resume and (run_dir / RUN_FILE).exists():
        try:
            earlier = read_run_json(run_dir).get("suite")
        except (OSError, ResultsFileError) as exc:
            raise UsageError(f"--resume: cannot continue the run in {run_dir}: {_why(exc)}") from None
        if earlier != suite.name:
            raise UsageError(f"--resume: {run_dir} holds a run of suite {earlier!r}, not {suite.name!r}")
    results_file = run_dir / RESULTS_FILE
    try:
        earlier_rows = read_rows(results_file) if results_file.exists() else []
    except (OSError, ResultsFileError) as exc:
        raise UsageError(f"cannot use run directory {run_dir}: {_why(exc)}") from None
    if earlier_rows and not args.resume:
        raise UsageError(f"{run_dir} already holds {len(earlier_rows)} result rows of an earlier run: pass "
                         f"--resume to continue that run, or another --out for a new one")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create run directory {run_dir}: {_why(exc)}") from None
    print(f"{PROG}: suite {suite.name}: {len(suite.cases)} cases -> {run_dir}", file=sys.stderr)
    try:
        result = run_suite(suite, run_dir, resume=args.resume, progress=Progress())
    except SweepInterrupted as exc:
        print(f"\n{PROG}: {exc}; rerun with --resume --out {exc.run_dir}", file=sys.stderr)
        return 130
    rows = read_rows(run_dir)
    print(results_table(rows))
    print(status_summary(rows))
    if result.skipped:
        print(f"({result.skipped} cases skipped: already in {run_dir})")
    print(f"results: {run_dir / 'results.jsonl'}")
    if not args.no_report:
        from .report import write_report

        try:
            report = write_report([Path(run_dir)], Path(run_dir) / "report.html")
        except (ValueError, OSError) as exc:  # the results are saved; say why the report is not
            print(f"{PROG}: report not written: {exc}", file=sys.stderr)
            return 1
        print(f"report: {report}")
    return 0


def cmd_list(args) -> int:
    from .worker import backend_availability, backend_kinds

    kinds = backend_kinds()
    width = max(len(n) for n in kinds)
    for name, kind in kinds.items():
        ok, reason = backend_availability(name)
        state = "available" if ok else f"unavailable: {reason}"
        print(f"{name.ljust(width)}  {kind.ljust(5)}  {state}")
        if name == "triton" and not ok:
            print(f"{''.ljust(width)}         (on the CPU, `run` starts triton workers with TRITON_INTERPRET=1 "
                  f"when the suite sets triton_interpret = true, the default)")
    return 0


def cmd_show(args) -> int:
    from .progress import results_table, status_summary
    from .results import read_rows, results_path

    path = results_path(args.results)
    if not path.exists():
        raise UsageError(f"show: no results at {args.results} (expected results.jsonl or a run directory)")
    try:
        rows = read_rows(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"show: {_why(exc)}") from None
    if not rows:
        raise UsageError(f"show: {path} holds no result rows")
    print(results_table(rows))
    print(status_summary(rows))
    return 0


def _why(exc: Exception) -> str:
    """One line for an OSError (its file and strerror) or a ResultsFileError (which names its file)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
