"""The HTML report: one self-contained file (plotly.js inlined once, data as compact JSON) that opens
offline. `write_report` is what `reformer-bench run` calls after a run (harness.report.command adds
`reformer-bench report`).

Sections: summary (environment, suites, counts by status, headline findings), each task's own sections
(harness.tasks: Task.report_sections), scaling plots, grids, the paper's reference figures, memory,
profiles (where rows carry them: harness.report.profiles), the comparison with a baseline, failures,
every case, FLOP formulas.

This module prepares each section's data (frames, figures, sentences' values); the markup is the Jinja2
templates of harness/report/templates (page.html.j2, one template per section under sections/, the
stylesheet and page script inlined from report.css and report.js). Autoescaping escapes everything that
comes from a results file; the only values marked safe are pre-rendered fragments, each where it is made:
pandas' tables (which escape cell text), the JSON payload and plotly.js. Chart strings are escaped for
plotly by harness.report.figures.text.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup, escape
from plotly.offline import get_plotlyjs

from ..errors import UserError
from ..measure.metrics import METRICS, metrics
from ..results.store import ResultSet
from ..suite.parameters import parameters
from .analysis import (
    compare,
    compared_metrics,
    headline_findings,
    match_keys,
    ratio_key,
    scaling_groups,
    speedups,
    status_counts,
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
from .profiles import peak_live_figure, phase_figures, profile_files

TEMPLATES = Path(__file__).with_name("templates")
MAX_SETTINGS_SHOWN = 4
REASON_CHARS_IN_CASES = 80

#: Report columns that are not parameters: where a row came from.
CASE_CONTEXT_EXTRA = (("run", "results dir", None),)


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
            + tuple(m.name for m in metrics(lambda m: m.run_setting)))


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
    out_path.write_text(render_html(sets, frame, baseline, plotly_js, out_dir=out_path.parent), encoding="utf-8")
    return out_path


# --- the page ----------------------------------------------------------------------------------------

@dataclass
class PageSection:
    """One <section> of the page: its anchor, its title, the template that renders it (a name the page's
    loader finds) and that template's `data`."""

    key: str
    title: str
    template: str
    data: dict[str, Any] = field(default_factory=dict)


PLOTLY_JS_MODES = ("inline", "cdn")


def render_html(sets: list[ResultSet], frame: pd.DataFrame, baseline: pd.DataFrame | None = None,
                plotly_js: str = "inline", out_dir: Path | None = None) -> str:
    """The whole report page as one string. plotly_js: "inline" (the page opens offline) or "cdn" (a
    script tag for plotly's CDN: a small page that needs the network). out_dir: the folder the page is
    written to (links to profile files are relative to it; absolute file URIs where it is None)."""
    if plotly_js not in PLOTLY_JS_MODES:
        raise UserError(f"--plotly-js must be one of {', '.join(PLOTLY_JS_MODES)}, got {plotly_js!r}")
    groups = scaling_groups(frame)
    figures: list[Figure] = []
    scaling_list = []
    for index, group in enumerate(groups):
        for metric in ("time", "memory"):
            figure = scaling_figure(group, metric, f"scaling-{metric}-{index}")
            if figure:
                scaling_list.append(figure)
    figures.extend(scaling_list)
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

    profiles = _profiles_data(sets, frame, groups, out_dir)
    figures.extend(profiles["phases"] + ([profiles["peak_live"]] if profiles["peak_live"] else []))

    compared = compare(baseline, frame) if baseline is not None else None
    comparison_fig = comparison_figure(compared) if compared is not None else None
    if comparison_fig:
        figures.append(comparison_fig)

    suites = sorted({s.suite for s in sets})
    sections = [
        PageSection("summary", "Summary", "sections/summary.html.j2", _summary_data(sets, frame, groups)),
        PageSection("scaling", "Scaling", "sections/scaling.html.j2", {"figures": scaling_list}),
        PageSection("versus", "Against the dense baselines", "sections/versus.html.j2",
                    _speedups_data(speedup_table, speedup_list)),
        PageSection("grids", "Buckets, hash rounds and fidelity", "sections/grids.html.j2", {"figures": grid_list}),
        PageSection("memory", "Memory as the OS sees it", "sections/memory.html.j2",
                    {"metrics": METRICS, "rss": rss}),
    ]
    if profiles["phases"] or profiles["peak_live"] or profiles["files"]:
        sections.append(PageSection("profiles", "Profiles: where the time and the memory go",
                                    "sections/profiles.html.j2", profiles))
    # A task suite's sections are what its reader came for: first after the summary.
    sections[1:1] = _task_sections(frame, figures, {section.key for section in sections})
    if compared is not None:
        sections.append(PageSection("comparison", "Candidate vs baseline", "sections/comparison.html.j2",
                                    _comparison_data(compared, comparison_fig)))
    sections += [
        PageSection("failures", "Failures", "sections/failures.html.j2", {"table": _failures_table(frame)}),
        PageSection("cases", "All cases", "sections/cases.html.j2", _cases_data(frame)),
        PageSection("figures", "How every figure is obtained", "sections/metrics.html.j2",
                    {"table": _metrics_table()}),
        PageSection("flops", "How FLOPs are counted", "sections/flops.html.j2", {"formulas": _flop_formulas()}),
    ]
    payload = {"template": template_layout(),
               "figures": [{"id": "fig-" + f.key, "data": f.figure.get("data", []),
                            "layout": f.figure.get("layout", {})} for f in figures]}
    task_dirs = tuple(sorted({str(Path(s.template).parent) for s in sections if Path(s.template).is_absolute()}))
    try:
        page = _render_page(task_dirs, sections, payload, plotly_js, suites, len(frame), len(sets))
    except jinja2.TemplateError as exc:
        # A task's own template (or ours) that does not parse or render: one line naming the file and line.
        where = ":".join(str(v) for v in (getattr(exc, "filename", None) or getattr(exc, "name", None),
                                          getattr(exc, "lineno", None)) if v)
        raise UserError(f"report template {where or '?'}: {exc.message or type(exc).__name__}") from None
    return page + "\n"


def _render_page(task_dirs: tuple[str, ...], sections: list[PageSection], payload: dict, plotly_js: str,
                 suites: list[str], case_count: int, dir_count: int) -> str:
    return _environment(task_dirs).get_template("page.html.j2").render(
        title=f"reformer-bench report — {', '.join(suites)}",
        case_count=case_count, dir_count=dir_count,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        plotly_cdn=_plotly_cdn() if plotly_js == "cdn" else None,
        # plotly's own library code, inlined as it is (escaping would break it).
        plotly_js=Markup(get_plotlyjs()) if plotly_js == "inline" else None,
        # Compact JSON with every "<" written \u003c (it cannot end its <script> element); escaping its
        # quotes would break it: a <script> element does not decode HTML entities.
        payload=Markup(_json_for_script(payload)),
        sections=[_loadable(section, task_dirs) for section in sections],
    )


@lru_cache(maxsize=8)
def _environment(task_dirs: tuple[str, ...] = ()) -> jinja2.Environment:
    """The page's templates, autoescaped. A task's own section template (Section.template, a file path)
    is found under "task<number>/": the folder it is in, by the number of that folder in task_dirs."""
    loader: jinja2.BaseLoader = jinja2.FileSystemLoader(TEMPLATES)
    if task_dirs:
        loader = jinja2.ChoiceLoader([loader, jinja2.PrefixLoader(
            {f"task{number}": jinja2.FileSystemLoader(folder) for number, folder in enumerate(task_dirs)})])
    environment = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True)
    environment.filters["content"] = element_content
    return environment


def element_content(value) -> Markup:
    """The `content` filter: value escaped for an element's content (&, < and >), quotes left as they are,
    as a task's text has always been written (the text between tags needs no quote escaped). Never for
    an attribute's value: there autoescaping's quote escaping is what keeps the value inside it."""
    return Markup(str(escape(value)).replace("&#39;", "'").replace("&#34;", '"'))


def _loadable(section: PageSection, task_dirs: tuple[str, ...]) -> PageSection:
    """section with its template named as _environment finds it (a task's own file: task<number>/name)."""
    path = Path(section.template)
    if not path.is_absolute():
        return section
    return PageSection(section.key, section.title, f"task{task_dirs.index(str(path.parent))}/{path.name}",
                       section.data)


def _plotly_cdn() -> str:
    import plotly

    return f"https://cdn.plot.ly/plotly-{plotly.__version__.split('+')[0]}.min.js"


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


def _table(frame: pd.DataFrame, sortable: bool = True, index: bool = False, box: str = "table-box",
           wrap: bool = False) -> Markup:
    """pandas' HTML inside a scrolling box; wrap: long cells break lines. Marked safe because pandas
    escapes every cell and header (escape=True); the box's class is ours."""
    table = frame.to_html(index=index, escape=True, na_rep="—", border=0,
                          classes=["data"] + (["sortable"] if sortable else []) + (["wrap"] if wrap else []))
    return Markup('<div class="{}">{}</div>').format(box, Markup(table))


# --- each section's data -------------------------------------------------------------------------------

def _summary_data(sets: list[ResultSet], frame: pd.DataFrame, groups) -> dict:
    by_setting: dict[str, list[str]] = {}
    for setting, sentence in headline_findings(frame, groups):
        by_setting.setdefault(setting, []).append(sentence)
    return {
        "findings": list(by_setting.items()),
        "settings_shown": MAX_SETTINGS_SHOWN,
        "status_table": None if frame.empty else _table(
            status_counts(frame).rename_axis(columns=None).reset_index(), sortable=False),
        "peaks": _peaks(sets),
        "cut_short": [where for s in sets for where in s.cut_short],
        "environment_table": _table(_environment_frame(sets), sortable=False, index=True, box="table-box tall env"),
    }


def _peaks(sets: list[ResultSet]) -> list[dict]:
    """The machine's matmul peaks the runs measured: device, dtype, rate (text), how, threads."""
    return [{"device": str(p.get("device")), "dtype": str(p.get("dtype")),
             "rate": f"{p['flops_per_s'] / 1e9:,.1f} GFLOP/s" if p.get("flops_per_s") else "not measured",
             "how": str(p.get("how", "")), "threads": p.get("threads")}
            for s in sets for p in (s.run.get("matmul_peak") or [])]


def _environment_frame(sets: list[ResultSet]) -> pd.DataFrame:
    """One column per results directory: run.json's own values, its environment's, then any other
    table (the suite settings) as one "key=value, ..." line."""
    columns = {}
    for result_set in sets:
        values = {"results dir": str(result_set.path), "cases": len(result_set.rows)}
        tables: dict[str, dict] = {}
        for key, value in result_set.run.items():
            if key == "matmul_peak":  # shown on its own above
                continue
            if isinstance(value, dict):
                tables[key] = value
            else:
                values[key] = value
        values.update(tables.pop("environment", {}) or tables.pop("env", {}))
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


def _cases_data(frame: pd.DataFrame) -> dict:
    if frame.empty:
        return {"table": None}
    table, left_out, constant = _cases_frame(frame)
    return {"table": _table(table), "constant": constant, "left_out": left_out}


def _failures_table(frame: pd.DataFrame) -> Markup | None:
    failed = frame[frame["status"] != "ok"]
    if failed.empty:
        return None
    shown = [p for p in parameters(lambda p: p.in_row and p.in_failures) if p.name in failed.columns]
    # How it failed: the metric table's status, the worker's last stage (where rows have it) and why.
    how = ["status"] + (["stage"] if "stage" in failed.columns else []) + ["reason"]
    table = failed[[p.name for p in shown] + how].copy()
    for p in shown:
        if p.fmt == "int":
            table[p.name] = _format_column(table[p.name], 1, "int")
    return _table(table.rename(columns={p.name: p.title for p in shown if p.title}), wrap=True)


def _comparison_data(compared: pd.DataFrame, figure: Figure | None) -> dict:
    """The comparison's tables and its rule, from the compared metrics' declarations: their tolerance,
    noise, quantity, shown unit and format."""
    show = compared.copy()
    keys = match_keys()
    for key in [p.name for p in parameters(lambda p: p.type == "int" and p.name in keys)]:
        show[key] = _format_column(show[key], 1, "int")
    names = {"status_base": "status (base)", "status_cand": "status (cand)"}
    rules = []
    for metric in compared_metrics():
        for side, label in (("base", "base"), ("cand", "cand")):
            column = f"{metric.name}_{side}"
            show[column] = show[column].map(lambda v, m=metric: None if _missing(v) else m.format(v))
            names[column] = metric.headed(f"{metric.compared_as} {label}")
        show[ratio_key(metric)] = _format_column(show[ratio_key(metric)], 1, "g")
        names[ratio_key(metric)] = f"{metric.compared_as} ×"
        noise = METRICS.get(metric.noise) if metric.noise else None
        rules.append({"quantity": metric.compared_as, "tolerance": f"{metric.tolerance:.0%}",
                      "noise": (noise.title or noise.name) if noise else None,
                      "always_gated": metric.gate == "always"})
    names["present"] = "in"
    # Keys with one value for every case go into a sentence instead of a column of repeats.
    constant = {k: show[k].iloc[0] for k in keys if show[k].nunique(dropna=False) == 1}
    varying = [k for k in keys if k not in constant]
    table = show[["verdict"] + varying + list(names)].rename(
        columns=names | {"seq_len": "L (tokens)", "verdict": "regression"})
    regressions = table[show["verdict"] != ""]
    return {
        "figure": figure,
        "rules": rules,
        "same": {k: v if v not in (None, "") else "—" for k, v in constant.items()},
        "regression_count": len(regressions),
        "regressions": _table(regressions) if len(regressions) else None,
        "case_count": len(table),
        "table": _table(table),
    }


def _task_sections(frame: pd.DataFrame, figures: list[Figure], taken: set[str]) -> list[PageSection]:
    """The sections the tasks in the rows give for their rows (Task.report_sections: tables, charts and
    text), each rendered by the generic task template or by the task's own (Section.template); a chart
    joins `figures`. A task no longer registered (its plugin gone) gives none."""
    from ..tasks import Chart, Table, Text, get_task, list_tasks

    if "task" not in frame.columns:
        return []
    out = []
    for name in sorted(frame["task"].dropna().unique()):
        if name not in list_tasks():
            continue
        for section in get_task(name).report_sections(frame[frame["task"] == name]):
            parts: list[dict] = []
            for part in section.parts:
                if isinstance(part, Table):
                    parts.append({"kind": "table", "title": part.title, "note": part.note,
                                  "html": _table(part.frame, sortable=False, index=part.index), "part": part})
                elif isinstance(part, Chart):
                    figure = part.figure if isinstance(part.figure, dict) else to_dict(part.figure)
                    chart = Figure(_unique(part.key, {f.key for f in figures}), part.title, part.caption, figure)
                    figures.append(chart)
                    parts.append({"kind": "chart", "figure": chart, "part": part})
                elif isinstance(part, Text):
                    parts.append({"kind": "text", "text": part.text, "part": part})
                else:
                    raise TypeError(f"task {name!r}: a report part must be a Table, Chart or Text, got {part!r}")
            key = _unique(section.key, taken)
            taken.add(key)
            template = section.template
            if template and not Path(template).is_file():
                raise UserError(f"task {name!r}: section {section.key!r} names template={str(template)!r}, "
                                f"which is not a file")
            out.append(PageSection(key, section.title, str(Path(template).resolve()) if template
                                   else "sections/task.html.j2", {"section": section, "parts": parts}))
    return out


def _unique(key: str, taken: set[str]) -> str:
    number, unique = 2, key
    while unique in taken:
        unique, number = f"{key}-{number}", number + 1
    return unique


def _speedups_data(table: pd.DataFrame, figures: list[Figure]) -> dict:
    if table.empty:
        return {"table": None}
    shown = pd.DataFrame({
        "setting": table["setting"], "series": table["series"], "baseline": table["baseline"],
        "L (tokens)": table["seq_len"].map(lambda v: f"{int(v):,}"),
        "speed-up (×)": table["speed_up"].map(lambda v: None if v is None or pd.isna(v) else f"{v:.3g}"),
        "memory saving (×)": [None if v is None or pd.isna(v) else f"{v:.3g}" + ("*" if low else "")
                              for v, low in zip(table["memory_saving"], table["memory_lower_bound"])],
        "tokens/s": table["tokens_per_s"].map(lambda v: None if v is None or pd.isna(v) else f"{v:,.0f}"),
        "noisy": table["noisy"].map(lambda v: "yes" if v else ""),
    })
    return {"figures": figures, "table": _table(shown), "lower_bound": bool(table["memory_lower_bound"].any())}


def _profiles_data(sets: list[ResultSet], frame: pd.DataFrame, groups, out_dir: Path | None) -> dict:
    """The profiles section's parts (harness.report.profiles), each empty where no row carries it."""
    if frame.empty:
        return {"phases": [], "peak_live": None, "files": []}
    run_dirs = [s.path for s in sets for _ in s.rows]  # the frame's rows, in load_frame's order
    return {"phases": phase_figures(frame, groups), "peak_live": peak_live_figure(frame),
            "files": profile_files(frame, run_dirs, out_dir)}


def _metrics_table() -> Markup:
    rows = pd.DataFrame([{"row key": m.name, "unit": m.unit or "—", "how it is obtained": m.how,
                          "gated": m.gate or ""} for m in metrics()])
    return _table(rows, sortable=False, wrap=True)


def _flop_formulas() -> str:
    from ..measure import flops

    return (flops.__doc__ or "").strip()
