"""The HTML report: one self-contained file (plotly.js inlined once, data as compact JSON) that opens
offline. `write_report` is what `reformer-bench run` calls after a run (harness.report.command adds
`reformer-bench report`).

Sections: summary (environment, suites, counts by status, headline findings), each task's own sections
(harness.tasks: Task.report_sections), scaling plots, grids,
the paper's reference figures, the comparison with a baseline, failures, every case, FLOP formulas.
Everything that comes from a results file is escaped (html.escape in the page, pandas' escaping in
tables, harness.report.figures.text in chart strings).
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
from pathlib import Path

import pandas as pd
from plotly.offline import get_plotlyjs

from ..errors import UserError
from ..measure.metrics import metrics
from ..results.store import ResultSet
from ..suite.parameters import parameters
from .analysis import (
    compare,
    headline_findings,
    match_keys,
    scaling_groups,
    speedups,
    status_counts,
    tolerance,
)
from .data import load_frame
from .figures import (
    Figure,
    accuracy_time_figure,
    comparison_figure,
    fidelity_figures,
    grid_figures,
    rss_trace_figure,
    scaling_figure,
    speedup_figures,
    template_layout,
    to_dict,
)

MAX_SETTINGS_SHOWN = 4
REASON_CHARS_IN_CASES = 80

#: Report columns that are not parameters: where a row came from.
CASE_CONTEXT_EXTRA = (("run", "results dir", None),)
#: Metrics folded into the sentence above the cases table when every row has the same value.
FOLDED_METRICS = ("mem_method", "repeats", "interpreted", "peer")


def case_parameter_columns() -> list[tuple[str, str, str | None]]:
    """(row key, column title, format) of what a case is: the parameter table's "parameter" columns."""
    return [(p.name, p.title or p.name, p.fmt) for p in parameters(lambda p: p.in_row and p.column == "parameter")]


def case_context_columns() -> list[tuple[str, str, str | None]]:
    """Where and how it ran: the parameter table's "context" columns, the case id last, then the run."""
    context = parameters(lambda p: p.in_row and p.column == "context")
    context = [p for p in context if p.name != "case_id"] + [p for p in context if p.name == "case_id"]
    return [(p.name, p.title or p.name, p.fmt) for p in context] + list(CASE_CONTEXT_EXTRA)


def case_columns() -> list[tuple[str, str, object]]:
    """(row key, column title with unit, formatter of one value): parameters, metrics, context.
    Columns with no value in any row are left out, and parameter columns with one value for every row
    become a sentence above the table."""
    def plain(fmt):
        return lambda v: f"{int(v):,}" if fmt == "int" else _plain(v)
    columns = [(key, title, plain(fmt)) for key, title, fmt in case_parameter_columns()]
    columns += [(m.name, m.column, m.format) for m in metrics(lambda m: m.kind != "trace")]
    columns += [("peak_share", "achieved / matmul peak", lambda v: f"{v:.1%}"),
                ("noise", "timing noisy because", lambda v: v or None)]
    columns += [(key, title, plain(fmt)) for key, title, fmt in case_context_columns()]
    return columns


def folded_keys() -> tuple[str, ...]:
    """Columns folded into the sentence above the cases table when every row has the same value."""
    return (tuple(key for key, _, _ in case_parameter_columns() + case_context_columns() if key != "case_id")
            + FOLDED_METRICS)


# --- the public entry points ---------------------------------------------------------------------------

def write_report(result_dirs: list[Path], out_path: Path, baseline_dirs: list[Path] | None = None,
                 plotly_js: str = "inline") -> Path:
    """Render the report of result_dirs (compared against baseline_dirs if given) to out_path.

    Raises harness.errors.UserError (one line naming file and line) on bad input.
    """
    sets, frame = load_frame([Path(p) for p in result_dirs])
    baseline = load_frame([Path(p) for p in baseline_dirs])[1] if baseline_dirs else None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_html(sets, frame, baseline, plotly_js), encoding="utf-8")
    return out_path


# --- the page ----------------------------------------------------------------------------------------

def render_html(sets: list[ResultSet], frame: pd.DataFrame, baseline: pd.DataFrame | None = None,
                plotly_js: str = "inline") -> str:
    """The whole report page as one string. plotly_js: "inline" (the page opens offline) or "cdn" (a
    script tag for plotly's CDN: a small page that needs the network)."""
    if plotly_js not in PLOTLY_JS_MODES:
        raise UserError(f"--plotly-js must be one of {', '.join(PLOTLY_JS_MODES)}, got {plotly_js!r}")
    groups = scaling_groups(frame)
    figures: list[Figure] = []
    scaling_html = []
    for index, group in enumerate(groups):
        for metric in ("time", "memory"):
            figure = scaling_figure(group, metric, f"scaling-{metric}-{index}")
            if figure:
                figures.append(figure)
                scaling_html.append(_figure_html(figure))
    grid_list = grid_figures(frame) + fidelity_figures(frame)
    accuracy = accuracy_time_figure(frame)
    if accuracy:
        grid_list.append(accuracy)
    figures.extend(grid_list)
    speedup_table = speedups(groups)
    speedup_list = speedup_figures(speedup_table)
    figures.extend(speedup_list)
    rss = rss_trace_figure(frame)
    if rss:
        figures.append(rss)

    compared = compare(baseline, frame) if baseline is not None else None
    comparison_fig = comparison_figure(compared) if compared is not None else None
    if comparison_fig:
        figures.append(comparison_fig)

    suites = sorted({s.suite for s in sets})
    title = f"reformer-bench report — {', '.join(suites)}"
    sections = [
        ("summary", "Summary", _summary_html(sets, frame, groups)),
        ("scaling", "Scaling", "".join(scaling_html) or _empty(
            "No scaling plot: no setting has successful cases at two or more sequence lengths.")),
        ("versus", "Against the dense baselines", _speedups_html(speedup_table, speedup_list)),
        ("grids", "Buckets, hash rounds and fidelity", "".join(_figure_html(f) for f in grid_list) or _empty(
            "No suite here sweeps n_hashes (with measured fidelity) or n_buckets x n_hashes at one length.")),
        ("memory", "Memory as the OS sees it", _memory_html(frame, rss)),
    ]
    # A task suite's sections are what its reader came for: first after the summary.
    sections[1:1] = _task_sections(frame, figures, {key for key, _, _ in sections})
    if compared is not None:
        sections.append(("comparison", "Candidate vs baseline",
                         (_figure_html(comparison_fig) if comparison_fig else "") + _comparison_html(compared)))
    sections += [
        ("failures", "Failures", _failures_html(frame)),
        ("cases", "All cases", _cases_html(frame)),
        ("figures", "How every figure is obtained", _metrics_html()),
        ("flops", "How FLOPs are counted", _flops_html()),
    ]
    nav = " · ".join(f'<a href="#{key}">{html.escape(name)}</a>' for key, name, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{html.escape(name)}</h2>{content}</section>'
                   for key, name, content in sections)
    payload = {"template": template_layout(),
               "figures": [{"id": "fig-" + f.key, "data": f.figure.get("data", []),
                            "layout": f.figure.get("layout", {})} for f in figures]}
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style>{_plotly_script(plotly_js)}</head><body>"
        f"<header><h1>{html.escape(title)}</h1><p class=\"meta\">{len(frame)} cases from "
        f"{len(sets)} results director{'y' if len(sets) == 1 else 'ies'} · generated {generated}</p>"
        f"<nav>{nav}</nav></header><main>{body}</main>"
        f"<script type=\"application/json\" id=\"report-data\">{_json_for_script(payload)}</script>"
        f"<script>{PAGE_JS}</script></body></html>\n"
    )


PLOTLY_JS_MODES = ("inline", "cdn")


def _plotly_script(mode: str) -> str:
    if mode == "cdn":
        import plotly

        return f'<script src="https://cdn.plot.ly/plotly-{plotly.__version__.split("+")[0]}.min.js"></script>'
    return f"<script>{get_plotlyjs()}</script>"


def _json_for_script(payload) -> str:
    """Compact JSON that cannot end its <script> element early: every "<" is written as \\u003c."""
    return json.dumps(_finite(payload), separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _figure_html(figure: Figure) -> str:
    return (f'<figure><figcaption class="title">{html.escape(figure.title)}</figcaption>'
            f'<div class="chart" id="fig-{html.escape(figure.key)}"></div>'
            f'<figcaption>{html.escape(figure.caption)}</figcaption></figure>')


def _empty(message: str) -> str:
    return f'<p class="empty">{html.escape(message)}</p>'


def _table(frame: pd.DataFrame, sortable: bool = True, index: bool = False, box: str = "table-box",
           wrap: bool = False) -> str:
    """pandas' HTML (which escapes cell text), inside a scrolling box; wrap: long cells break lines."""
    table = frame.to_html(index=index, escape=True, na_rep="—", border=0,
                          classes=["data"] + (["sortable"] if sortable else []) + (["wrap"] if wrap else []))
    return f'<div class="{box}">{table}</div>'


# --- sections ----------------------------------------------------------------------------------------

def _summary_html(sets: list[ResultSet], frame: pd.DataFrame, groups) -> str:
    findings = headline_findings(frame, groups)
    parts = ["<h3>Headline findings</h3>"]
    if not findings:
        parts.append(_empty("Nothing to compare yet: findings need a sweep over the sequence length with "
                            "a dense baseline, or a sweep over n_hashes with measured fidelity."))
    by_setting: dict[str, list[str]] = {}
    for setting, sentence in findings:
        by_setting.setdefault(setting, []).append(sentence)
    for number, (setting, sentences) in enumerate(by_setting.items()):
        items = "".join(f"<li>{html.escape(s)}</li>" for s in sentences)
        block = f'<p class="setting">{html.escape(setting)}</p><ul class="findings">{items}</ul>'
        # Past the first few settings the list folds away, so the summary stays one screen.
        parts.append(block if number < MAX_SETTINGS_SHOWN else f"<details><summary>{html.escape(setting)}"
                     f"</summary><ul class=\"findings\">{items}</ul></details>")
    parts.append("<h3>Cases by status</h3>")
    if frame.empty:
        parts.append(_empty("The results files hold no cases yet."))
    else:
        parts.append(_table(status_counts(frame).rename_axis(columns=None).reset_index(), sortable=False))
    parts.append(_peaks_html(sets))
    cut_short = [where for s in sets for where in s.cut_short]
    if cut_short:
        parts.append(f'<p class="warn">Skipped {len(cut_short)} line(s) whose write was cut short '
                     f'(a killed sweep): {html.escape(", ".join(cut_short))}</p>')
    parts.append("<h3>Runs and environment</h3>")
    parts.append(_table(_environment_frame(sets), sortable=False, index=True, box="table-box tall env"))
    return "".join(parts)


def _environment_frame(sets: list[ResultSet]) -> pd.DataFrame:
    """One column per results directory: run.json's own values, its environment's, then any other
    table (the suite settings) as one "key=value, ..." line."""
    columns = {}
    for result_set in sets:
        values = {"results dir": str(result_set.path), "cases": len(result_set.rows)}
        tables = {}
        for key, value in result_set.run.items():
            if key == "matmul_peak":  # shown on its own above
                continue
            if isinstance(value, dict):
                tables[key] = value
            else:
                values[key] = value
        values.update(tables.pop("environment", None) or tables.pop("env", None) or {})
        for key, table in tables.items():
            values[key] = ", ".join(f"{k}={_plain(v)}" for k, v in table.items())
        columns[result_set.path.name] = {k: _plain(v) for k, v in values.items()}
    names = list(columns)
    if len(set(names)) < len(names):  # same directory names from different parents
        columns = {f"{i + 1}: {name}": col for i, (name, col) in enumerate(columns.items())}
    return pd.DataFrame(columns)


def _plain(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _format_column(values: pd.Series, divisor, fmt) -> pd.Series:
    def one(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if fmt == "int":
            return f"{int(v):,}"
        if fmt == "g":
            return f"{v / divisor:.4g}"
        return str(v)
    return values.map(one)


def _cases_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """(table, titles of columns with no value, {title: value} of parameters the same in every row)."""
    shown, empty, constant = {}, [], {}
    folded = folded_keys()
    for key, title, one in case_columns():
        if key not in frame.columns or frame[key].isna().all() or (frame[key].astype(str) == "").all():
            empty.append(title)
            continue
        column = frame[key]
        if key == "reason":
            column = column.map(lambda r: None if not isinstance(r, str) or not r else (
                r if len(r) <= REASON_CHARS_IN_CASES else r[:REASON_CHARS_IN_CASES - 1] + "…"))
        formatted = column.map(lambda v, one=one: None if _missing(v) else one(v))
        if key in folded and len(frame) > 1 and formatted.nunique(dropna=False) == 1:
            constant[title] = formatted.iloc[0] if formatted.iloc[0] is not None else "—"
            continue
        shown[title] = formatted
    return pd.DataFrame(shown), empty, constant


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cases_html(frame: pd.DataFrame) -> str:
    if frame.empty:
        return _empty("No cases.")
    table, empty, constant = _cases_frame(frame)
    notes = ["Click a column title to sort."]
    if constant:
        notes.append("Every case has " + ", ".join(f"{k} = {v}" for k, v in constant.items()) + ".")
    if empty:
        notes.append(f"Left out (no value in any case): {', '.join(empty)}.")
    return f'<p class="note">{html.escape(" ".join(notes))}</p>' + _table(table)


def _failures_html(frame: pd.DataFrame) -> str:
    failed = frame[frame["status"] != "ok"]
    if failed.empty:
        return _empty("Every case succeeded.")
    columns = ["case_id", "suite", "backend", "mode", "seq_len", "batch", "n_buckets", "n_hashes", "status"]
    table = failed[columns + (["stage"] if "stage" in failed.columns else []) + ["reason"]].copy()
    for key in ("seq_len", "batch", "n_buckets", "n_hashes"):
        table[key] = _format_column(table[key], 1, "int")
    return _table(table.rename(columns={"case_id": "case", "seq_len": "L (tokens)"}), wrap=True)


def _comparison_html(compared: pd.DataFrame) -> str:
    show = compared.copy()
    keys = match_keys()
    for key in [p.name for p in parameters(lambda p: p.type == "int" and p.name in keys)]:
        show[key] = _format_column(show[key], 1, "int")
    formats = {"time_median_s_base": 1e-3, "time_median_s_cand": 1e-3, "mem_peak_bytes_base": 2 ** 20,
               "mem_peak_bytes_cand": 2 ** 20, "rel_error_base": 1, "rel_error_cand": 1,
               "time_ratio": 1, "mem_ratio": 1, "error_ratio": 1}
    for key, divisor in formats.items():
        show[key] = _format_column(show[key], divisor, "g")
    names = {"status_base": "status (base)", "status_cand": "status (cand)",
             "time_median_s_base": "time base (ms)", "time_median_s_cand": "time cand (ms)",
             "time_ratio": "time ×", "mem_peak_bytes_base": "memory base (MiB)",
             "mem_peak_bytes_cand": "memory cand (MiB)", "mem_ratio": "memory ×",
             "rel_error_base": "rel. error base", "rel_error_cand": "rel. error cand", "error_ratio": "rel. error ×",
             "present": "in"}
    # Keys with one value for every case go into a sentence instead of a column of repeats.
    constant = {k: show[k].iloc[0] for k in keys if show[k].nunique(dropna=False) == 1}
    keys = [k for k in keys if k not in constant]
    table = show[["verdict"] + keys + list(names)].rename(
        columns=names | {"seq_len": "L (tokens)", "verdict": "regression"})
    regressions = table[show["verdict"] != ""]
    rule = (f"A case regresses when it failed where the baseline succeeded, its median time grew by more than "
            f"{tolerance('time_median_s'):.0%} and by more than the two runs' IQRs together, its peak memory grew "
            f"by more than {tolerance('mem_peak_bytes'):.0%} (the memory gate's rule), or its relative error grew "
            f"by more than {tolerance('rel_error'):.0%}. Ratios are candidate / baseline.")
    same = ", ".join(f"{k}={v if v not in (None, '') else '—'}" for k, v in constant.items())
    parts = [f'<p class="note">{html.escape(rule)}' + (f" Every case has {html.escape(same)}." if same else "")
             + "</p>", f"<h3>Regressions ({len(regressions)})</h3>"]
    parts.append(_table(regressions) if len(regressions) else _empty("No regressions."))
    parts.append(f"<h3>Every case, with ratios ({len(table)})</h3>")
    parts.append(_table(table))
    return "".join(parts)


def _task_sections(frame: pd.DataFrame, figures: list[Figure], taken: set[str]) -> list[tuple[str, str, str]]:
    """(key, title, html) of each section the tasks in the rows give for their rows (Task.report_sections:
    tables, charts and text); a chart joins `figures`. A task no longer registered (its plugin gone)
    gives none."""
    from ..tasks import Chart, Table, Text, get_task, list_tasks

    if "task" not in frame.columns:
        return []
    out = []
    for name in sorted(frame["task"].dropna().unique()):
        if name not in list_tasks():
            continue
        for section in get_task(name).report_sections(frame[frame["task"] == name]):
            parts = []
            for part in section.parts:
                if isinstance(part, Table):
                    parts.append(f"<h3>{html.escape(part.title, quote=False)}</h3>"
                                 + (f'<p class="note">{html.escape(part.note, quote=False)}</p>' if part.note else "")
                                 + _table(part.frame, sortable=False, index=part.index))
                elif isinstance(part, Chart):
                    figure = part.figure if isinstance(part.figure, dict) else to_dict(part.figure)
                    chart = Figure(_unique(part.key, {f.key for f in figures}), part.title, part.caption, figure)
                    figures.append(chart)
                    parts.append(_figure_html(chart))
                elif isinstance(part, Text):
                    parts.append(f"<p>{html.escape(part.text, quote=False)}</p>")
                else:
                    raise TypeError(f"task {name!r}: a report part must be a Table, Chart or Text, got {part!r}")
            key = _unique(section.key, taken)
            taken.add(key)
            out.append((key, section.title, "".join(parts)))
    return out


def _unique(key: str, taken: set[str]) -> str:
    number, unique = 2, key
    while unique in taken:
        unique, number = f"{key}-{number}", number + 1
    return unique


def _peaks_html(sets: list[ResultSet]) -> str:
    peaks = [p for s in sets for p in (s.run.get("matmul_peak") or [])]
    if not peaks:
        return _empty("No matmul peak was measured for these runs (achieved / peak is not shown).")
    items = "".join(
        f"<li>{html.escape(str(p.get('device')))} {html.escape(str(p.get('dtype')))}: "
        + (f"{p['flops_per_s'] / 1e9:,.1f} GFLOP/s" if p.get("flops_per_s") else "not measured")
        + f" <span class=\"note\">({html.escape(str(p.get('how', '')))}"
        + (f", {p['threads']} threads" if p.get("threads") else "") + ")</span></li>" for p in peaks)
    return ("<h3>The machine's matmul peak</h3><p class=\"note\">Measured once per run, device and dtype, in a "
            "process of its own; every case's achieved FLOP/s is shown against it in the cases table.</p>"
            f"<ul>{items}</ul>")


def _speedups_html(table: pd.DataFrame, figures: list[Figure]) -> str:
    if table.empty:
        return _empty("No comparison: no setting here has a dense baseline and another backend at one length.")
    shown = pd.DataFrame({
        "setting": table["setting"], "series": table["series"], "baseline": table["baseline"],
        "L (tokens)": table["seq_len"].map(lambda v: f"{int(v):,}"),
        "speed-up (×)": table["speed_up"].map(lambda v: None if v is None or pd.isna(v) else f"{v:.3g}"),
        "memory saving (×)": [None if v is None or pd.isna(v) else f"{v:.3g}" + ("*" if low else "")
                              for v, low in zip(table["memory_saving"], table["memory_lower_bound"])],
        "tokens/s": table["tokens_per_s"].map(lambda v: None if v is None or pd.isna(v) else f"{v:,.0f}"),
        "noisy": table["noisy"].map(lambda v: "yes" if v else ""),
    })
    note = ('<p class="note">* one of the two memory figures is a lower bound (mem_bound): the saving is '
            "approximate.</p>" if table["memory_lower_bound"].any() else "")
    return "".join(_figure_html(f) for f in figures) + _table(shown) + note


def _memory_html(frame: pd.DataFrame, rss: Figure | None) -> str:
    from ..measure.metrics import METRICS

    parts = [f'<p class="note">{html.escape(text)}</p>' for text in (
        "mem_peak_bytes is the figure every table and plot uses: " + METRICS["mem_peak_bytes"].how + ". "
        "mem_bound says whether it is exact or a lower bound; on the CPU the allocator's own peak "
        "(mem_alloc_peak_bytes, every allocation through PyTorch's CPU allocator) is measured in the same call.",
        "Peak RSS (rss_peak_bytes) is " + METRICS["rss_peak_bytes"].how + ": glibc's dynamic mmap threshold "
        "keeps freed large blocks in the heap, so it can grow where live tensors do not. The RSS rise over the "
        "measured call (rss_call_rise_bytes) is sampled with the threshold fixed, so freed blocks are returned "
        "and it follows what the call holds.")]
    if rss:
        parts.append(_figure_html(rss))
    return "".join(parts)


def _metrics_html() -> str:
    rows = pd.DataFrame([{"row key": m.name, "unit": m.unit or "—", "how it is obtained": m.how,
                          "gated": m.gate or ""} for m in metrics()])
    return ('<p class="note">The metric table of harness/measure/metrics.py: every figure a row carries. Unknown '
            "is null (shown —), never 0.</p>" + _table(rows, sortable=False, wrap=True))


def _flops_html() -> str:
    from ..measure import flops

    return f"<pre class=\"formulas\">{html.escape((flops.__doc__ or '').strip())}</pre>"


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;margin:0;background:#fff}
header{padding:18px 28px 10px;border-bottom:1px solid #ddd;background:#fafafa}
h1{font-size:22px;margin:0 0 4px;overflow-wrap:anywhere}
h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #eee;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 8px}
.meta{color:#555;margin:0 0 6px}
nav a{color:#0b5cad;text-decoration:none}
main{padding:0 28px 40px;max-width:1400px}
figure{margin:14px 0 26px}
figcaption{color:#444;font-size:13px;max-width:1100px}
figcaption.title{font-weight:600;color:#1d1d1f;font-size:14px}
.chart{width:100%;min-height:360px}
.findings li{margin:3px 0}
.setting{font-weight:600;margin:10px 0 2px}
details summary{cursor:pointer;color:#0b5cad;margin:6px 0}
.empty{color:#666;font-style:italic}
.note{color:#555;font-size:13px}
.warn{color:#8a4b00}
.table-box{max-height:560px;overflow:auto;border:1px solid #e3e3e3;margin:6px 0 14px;width:fit-content;max-width:100%}
.table-box.tall{max-height:none}
.env table.data td{text-align:left;white-space:normal;min-width:200px;max-width:640px;overflow-wrap:anywhere}
table.wrap td{white-space:normal;min-width:60px}
table.wrap td:last-child{min-width:320px;text-align:left}
table.data{border-collapse:collapse;font-size:12.5px;white-space:nowrap}
table.data th,table.data td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}
table.data td:first-child,table.data th:first-child{text-align:left}
table.data thead th{position:sticky;top:0;background:#f3f3f3;z-index:1}
table.sortable thead th{cursor:pointer}
table.sortable thead th[data-dir=asc]::after{content:" ▲"}
table.sortable thead th[data-dir=desc]::after{content:" ▼"}
pre.formulas{background:#f7f7f7;padding:10px;overflow:auto;font-size:12.5px}
"""

# Renders every figure from the JSON payload and records what a browser test checks in
# window.__reportChecks: figures, rendered, withData, empty (ids), errors, done, renderMs.
PAGE_JS = r"""
(function () {
  var payload = JSON.parse(document.getElementById('report-data').textContent);
  var checks = {figures: payload.figures.length, rendered: 0, withData: 0, empty: [], errors: [], done: false};
  window.__reportChecks = checks;
  function points(trace) {
    var values = trace.type === 'heatmap'
      ? [].concat.apply([], (trace.z || []).map(function (r) { return Array.from(r); }))
      : Array.from(trace.y || []);
    return values.filter(function (v) { return v !== null && v !== undefined && isFinite(v); }).length;
  }
  var config = {responsive: true, displaylogo: false, modeBarButtonsToRemove: ['select2d', 'lasso2d']};
  var jobs = payload.figures.map(function (f) {
    var div = document.getElementById(f.id);
    var layout = Object.assign({}, f.layout, {template: payload.template});
    return Plotly.newPlot(div, f.data, layout, config).then(function (gd) {
      checks.rendered += 1;
      var n = gd.data.reduce(function (s, t) { return s + points(t); }, 0);
      if (n > 0 && gd.querySelector('.main-svg')) { checks.withData += 1; } else { checks.empty.push(f.id); }
    }).catch(function (e) { checks.errors.push(f.id + ': ' + e); });
  });
  Promise.all(jobs).then(function () { checks.renderMs = performance.now(); checks.done = true; });

  function key(cell) {
    var t = cell.textContent.trim();
    if (t === '\u2014' || t === '') return null;
    var n = Number(t.replace(/,/g, ''));
    return isNaN(n) ? t.toLowerCase() : n;
  }
  document.querySelectorAll('table.sortable thead th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var table = th.closest('table'), body = table.tBodies[0];
      var dir = th.getAttribute('data-dir') === 'asc' ? 'desc' : 'asc';
      table.querySelectorAll('thead th').forEach(function (h) { h.removeAttribute('data-dir'); });
      th.setAttribute('data-dir', dir);
      var index = Array.prototype.indexOf.call(th.parentNode.children, th);
      var rows = Array.from(body.rows).map(function (r) { return [key(r.cells[index]), r]; });
      rows.sort(function (a, b) {
        if (a[0] === null) return b[0] === null ? 0 : 1;
        if (b[0] === null) return -1;
        var c = (typeof a[0] === typeof b[0]) ? (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)
                                              : (typeof a[0] === 'number' ? -1 : 1);
        return dir === 'asc' ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r[1]); });
    });
  });
})();
"""
