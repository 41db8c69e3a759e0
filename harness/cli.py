"""`reformer-bench`: run a suite, list backends, show results; `report` and `gate` come from their modules.

    reformer-bench run SUITE [--out DIR] [--resume] [--backend NAME ...] [--max-seq-len N] [--no-report]
                             [--dry-run] [--summary] [--plotly-js inline|cdn] [--launch fork|spawn]
                             [--ray ADDRESS [--ray-cpus-per-case N]] [--phases] [--peak-live] [--profile]
    reformer-bench list [SUITE]
    reformer-bench show RESULTS [--summary]
    reformer-bench report RESULTS... -o report.html [--baseline RESULTS...] [--plotly-js inline|cdn]
    reformer-bench gate RESULTS [--baseline FILE] [--tolerance PCT] [--time-tolerance PCT] [--update]

Exit codes: 0 done (failed cases are rows, not errors), 2 bad input (one line on stderr, no
traceback: harness.errors.UserError), 130 interrupted (finished rows kept; rerun with --resume).
`run` refuses an --out that already holds rows unless --resume is given (a second run appended there
would repeat case ids).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from .run.ray import RayExecutor
    from .run.runner import LocalExecutor

PROG = "reformer-bench"
DEFAULT_OUT_BASE = Path("reports")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"{PROG}{' ' + args.command if args.command in ('report', 'gate') else ''}: error: "
              f"{' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `reformer-bench show ... | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def build_parser() -> argparse.ArgumentParser:
    from . import gate
    from .report import command as report_command

    parser = argparse.ArgumentParser(prog=PROG, description="Benchmark and profile Reformer LSH-attention backends.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a suite: one isolated worker per case, rows appended to results.jsonl")
    run.add_argument("suite", type=Path, help="suite file, e.g. suites/smoke.toml")
    run.add_argument("--out", type=Path, default=None,
                     help="run directory (default reports/<suite>-<UTC timestamp>)")
    run.add_argument("--resume", action="store_true",
                     help="skip cases that already have a row in the run directory (--out, or the newest "
                          "reports/<suite>-* run)")
    run.add_argument("--backend", nargs="+", default=None, metavar="NAME", help="only these backends")
    run.add_argument("--max-seq-len", type=int, default=None, metavar="N", help="only cases with seq_len <= N")
    run.add_argument("--no-report", action="store_true", help="do not write report.html")
    run.add_argument("--dry-run", action="store_true", help="print the cases it would run, one a line, and their count")
    run.add_argument("--summary", action="store_true", help="also print the summary (see show --summary) at the end")
    run.add_argument("--plotly-js", choices=("inline", "cdn"), default="inline",
                     help="the report's plotly.js: inline (default: opens offline) or from plotly's CDN")
    run.add_argument("--launch", choices=("fork", "spawn"), default=None,
                     help="how each case's worker process starts: fork (from a server that imported torch and the "
                          "harness once; the default on Linux) or spawn (a new interpreter per case)")
    run.add_argument("--ray", default=None, metavar="ADDRESS",
                     help="run each case as a task on a Ray cluster: auto (the cluster this machine is part of), "
                          "HOST:PORT (its head node), or local (a Ray instance started for this run); needs the "
                          "ray extra")
    run.add_argument("--ray-cpus-per-case", type=int, default=None, metavar="N",
                     help="with --ray: CPUs each CPU case reserves on its node (default: the suite's threads, or "
                          "a whole node where the suite leaves threads unset)")
    run.add_argument("--phases", action="store_true",
                     help="as [suite] phases = true: an untimed profiled call per case, its time by named phase "
                          "(phase_times, phase_shares)")
    run.add_argument("--peak-live", action="store_true",
                     help="as [suite] peak_live = true: the memory pass records the live set at the peak, by op "
                          "and module (peak_live_top; the whole breakdown under <run dir>/profiles/<case id>/)")
    run.add_argument("--profile", action="store_true",
                     help="as [suite] profile = true: a Chrome trace and an op table per case under "
                          "<run dir>/profiles/<case id>/")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="backends, their kind and whether each is available here (and why not)")
    lst.add_argument("suite", type=Path, nargs="?", default=None,
                     help="a suite file: also the backends its plugins register")
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="print a results.jsonl (or a run directory) as a table")
    show.add_argument("results", type=Path, help="results.jsonl or a run directory")
    show.add_argument("--summary", action="store_true",
                      help="ratios against the baseline backends and growth along model keys, instead of the table")
    show.set_defaults(func=cmd_show)

    report_command.register(sub)
    gate.register(sub)
    return parser


def cmd_run(args) -> int:
    from .results.store import latest_run_dir, new_run_dir, read_results
    from .run.runner import SweepInterrupted, harness_overhead, prepare_run_dir, run_suite
    from .suite import load_suite
    from .views.progress import Progress
    from .views.table import results_table, status_summary

    if args.max_seq_len is not None and args.max_seq_len < 1:
        raise UserError(f"--max-seq-len must be a positive integer, got {args.max_seq_len}")
    if args.ray_cpus_per_case is not None and args.ray is None:
        raise UserError(f"--ray-cpus-per-case {args.ray_cpus_per_case}: only with --ray ADDRESS")
    suite = load_suite(args.suite, backends=args.backend, max_seq_len=args.max_seq_len)
    suite = with_profiles(suite, [key for key in ("phases", "peak_live", "profile") if getattr(args, key)])
    if args.dry_run:
        for case in suite.cases:
            print(case.case_id)
        print(f"{len(suite.cases)} cases in suite {suite.name} ({args.suite})")
        return 0
    ray_executor: RayExecutor | None = None
    if args.launch == "fork" and args.ray is not None:
        raise UserError("--launch fork: a Ray task spawns its worker (--ray runs every case with --launch spawn)")
    if args.ray is not None:
        from .run.ray import RayExecutor

        ray_executor = RayExecutor(args.ray, cpus_per_case=args.ray_cpus_per_case)
        ray_executor.check_cases(suite.cases)
    if args.out is not None:
        run_dir = args.out
    elif args.resume:
        run_dir = latest_run_dir(DEFAULT_OUT_BASE, suite.name)
        if run_dir is None:
            raise UserError(f"--resume: no earlier run of suite {suite.name!r} under {DEFAULT_OUT_BASE}/; "
                            f"pass --out DIR")
    else:
        run_dir = new_run_dir(DEFAULT_OUT_BASE, suite.name)
    prepare_run_dir(run_dir, suite, args.resume)
    if ray_executor is not None:
        ray_executor.connect()
    print(f"{PROG}: suite {suite.name}: {len(suite.cases)} cases -> {run_dir}"
          f"{f' on {ray_executor.name}' if ray_executor is not None else ''}", file=sys.stderr)
    executor: RayExecutor | LocalExecutor
    if ray_executor is not None:
        executor = ray_executor
    else:
        from .run.runner import LocalExecutor

        executor = LocalExecutor(args.launch)
    try:
        result = run_suite(suite, run_dir, resume=args.resume, progress=Progress(), executor=executor)
    except SweepInterrupted as exc:
        print(f"\n{PROG}: {exc}; rerun with --resume --out {exc.run_dir}", file=sys.stderr)
        return 130
    finally:
        executor.close()  # also where run_suite failed before it got to close it
    rows = read_results(run_dir).rows
    print(results_table(rows))
    print(status_summary(rows))
    overhead = harness_overhead(rows)
    if overhead is not None:
        print(f"harness overhead: {overhead['sum_s']:.1f} s of {overhead['wall_sum_s']:.1f} s wall over "
              f"{overhead['cases']} cases (median {overhead['median_s']:.2f} s per case)")
    if result.skipped:
        print(f"({result.skipped} cases skipped: already in {run_dir})")
    if args.summary:
        from .views.summary import summary_text

        print(summary_text(rows, suite.settings["compare_against"]))
    print(f"results: {run_dir / 'results.jsonl'}")
    if not args.no_report:
        from .report import write_report

        try:
            report = write_report([Path(run_dir)], Path(run_dir) / "report.html", plotly_js=args.plotly_js)
        except (UserError, OSError) as exc:  # the results are saved; say why the report is not
            print(f"{PROG}: report not written: {exc}", file=sys.stderr)
            return 1
        print(f"report: {report}")
    return 0


def with_profiles(suite, asked: list[str]):
    """The suite with the profile settings `asked` (run's flags) turned on in its settings and cases."""
    import dataclasses

    if not asked:
        return suite
    on = dict.fromkeys(asked, True)
    cases = [dataclasses.replace(case, **on) if case.workload != "task" else case for case in suite.cases]
    return dataclasses.replace(suite, cases=cases, settings={**suite.settings, **on})


def cmd_list(args) -> int:
    import impls

    if args.suite is not None:
        from .suite import load_suite

        load_suite(args.suite)  # imports its plugins

    names = impls.list_backends()
    width = max(len(n) for n in names)
    for name in names:
        info = impls.backend_info(name)
        ok, reason = impls.backend_availability(name)
        state = "available" if ok else f"unavailable: {reason}"
        print(f"{name.ljust(width)}  {info.kind.ljust(5)}  {state}")
        if info.cpu_interpreter_env and not ok:
            env = " ".join(f"{k}={v}" for k, v in info.cpu_interpreter_env.items())
            print(f"{''.ljust(width)}         (on the CPU, `run` starts {name} workers with {env} "
                  f"when the suite sets interpret = true, the default)")
    return 0


def cmd_show(args) -> int:
    from .results.store import read_results, results_path
    from .views.table import results_table, status_summary

    path = results_path(args.results)
    if not path.exists():
        raise UserError(f"show: no results at {args.results} (expected results.jsonl or a run directory)")
    try:
        result = read_results(args.results)
    except UserError as exc:
        raise UserError(f"show: {exc}") from None
    if not result.rows:
        raise UserError(f"show: {path} holds no result rows")
    if args.summary:
        from .views.summary import summary_text

        print(summary_text(result.rows, (result.run.get("settings") or {}).get("compare_against") or ()))
        return 0
    print(results_table(result.rows))
    print(status_summary(result.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
