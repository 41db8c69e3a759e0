"""Plotly figures of the report, returned as plain dicts (data + layout, no template) for the page to
embed as JSON: scaling plots, n_buckets x n_hashes heatmaps, fidelity against n_hashes, the paper's
Figure 5 overlay and the comparison of two runs (a task's own charts are its report section's:
harness.tasks).

Every string that comes from a results file goes through `text()` first: plotly renders a subset of
HTML in names and titles, and `&lt;` is how a literal "<" gets through.
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from .analysis import (
    FIT_POINTS,
    MIN_FIT_LENGTHS,
    MIN_FIT_LENGTHS_MEMORY,
    MODE_NAMES,
    ScalingGroup,
    Series,
    compared_metrics,
    context_title,
    fidelity_keys,
    format_exponent,
    grid_keys,
    ratio_key,
)

# Kitaev, Kaiser, Levskaya (2020), Figure 5 (right): seconds per step at a fixed 32,768 tokens per batch
# (seq_len x batch), read off the plot, so about +-10%. On the authors' hardware, not this machine's.
PAPER_FIGURE5_FULL = {1024: 0.17, 2048: 0.3, 4096: 0.5, 8192: 1.0, 16384: 1.9, 32768: 3.5}
PAPER_FIGURE5_LSH = {8: {1024: 0.32, 32768: 0.44}, 1: {1024: 0.10, 32768: 0.075}}
PAPER_FIGURE5_TOKENS = 32768

# Styles follow a backend's place in the registry (impls.list_backends: built-ins first, then plugins),
# so a backend keeps its style in every figure and report, and a new one gets a style of its own.
HASH_COLORS = {1: "#e6550d", 2: "#31a354", 4: "#3182bd", 8: "#756bb1", 16: "#8c564b"}
KIND_COLORS = {"dense": ("#222222", "#8a8a8a", "#5b5b5b", "#b5b5b5"),
               "peer": ("#d62728", "#17becf", "#bcbd22", "#e377c2", "#9467bd")}
OTHER_COLORS = ("#d62728", "#17becf", "#bcbd22", "#e377c2", "#7f7f7f")
LSH_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
# Markers tell backends apart where a series is a single point (no line, so no dash to see).
LSH_MARKERS = ("circle", "diamond", "square", "triangle-up", "star", "hexagon")
FAIL_SYMBOLS = {"oom": "x", "timeout": "hourglass", "error": "triangle-up", "crashed": "triangle-down",
                "unavailable": "circle-open", "nonfinite": "diamond"}
PAPER_COLOR = "#b0b0b0"


@dataclass
class Figure:
    """One chart: a title and caption (plain text; the page escapes them) and the plotly figure dict."""

    key: str
    title: str
    caption: str
    figure: dict


def text(value) -> str:
    """A results-file string made safe for plotly's HTML-ish text rendering (and shown literally)."""
    return html.escape(str(value), quote=True)


def to_dict(fig: go.Figure) -> dict:
    """The figure as JSON-ready dict, without the template (the page applies one shared template)."""
    spec = json.loads(pio.to_json(fig, validate=False, engine="json"))
    spec.get("layout", {}).pop("template", None)
    return spec


def template_layout() -> dict:
    """The layout template every figure uses, embedded once in the page."""
    return json.loads(pio.to_json(go.Figure(layout={"template": "plotly_white"}), engine="json"))["layout"]["template"]


# --- units -------------------------------------------------------------------------------------------

def level_line(y: float, color: str = "#444", dash: str = "solid") -> dict:
    """A horizontal line across the plot at y (ratio 1, error 1)."""
    return {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": y, "y1": y,
            "line": {"color": color, "width": 1, "dash": dash}}


def tokens_label(length) -> str:
    """1024 -> "1K", 16384 -> "16K", 1048576 -> "1M"; other lengths in full."""
    length = int(length)
    for size, suffix in ((1 << 20, "M"), (1 << 10, "K")):
        if length >= size and length % size == 0:
            return f"{length // size}{suffix}"
    return f"{length:,}"


def log_range(lengths) -> list[float]:
    """A log-axis range just wider than the lengths (plotly's log ranges are in decades)."""
    low, high = math.log10(min(lengths)), math.log10(max(lengths))
    pad = max(0.06, 0.04 * (high - low))
    return [low - pad, high + pad]


def time_unit(values) -> tuple[str, float]:
    """(unit, divisor) for seconds: s, ms or µs so that the largest value reads as 1..1000."""
    top = max((v for v in values if pd.notna(v)), default=1.0)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if top >= scale:
            return unit, scale
    return "µs", 1e-6


def memory_unit(values) -> tuple[str, float]:
    top = max((v for v in values if pd.notna(v)), default=1.0)
    for unit, scale in (("GiB", 2.0 ** 30), ("MiB", 2.0 ** 20), ("KiB", 2.0 ** 10)):
        if top >= scale:
            return unit, scale
    return "bytes", 1.0


def backend_place(backend: str, kind: str) -> int:
    """The backend's index among the registered backends of its kind; for a name this process does
    not know (a plugin that is not importable here), a stable index derived from the name."""
    import zlib

    import impls

    names = impls.list_backends(kind)
    if backend in names:
        return names.index(backend)
    return len(names) + zlib.crc32(backend.encode()) % 7


def series_style(series: Series, backend: str, index: int) -> dict:
    """LSH series: colour by hash count (the same in every figure), dash and marker by the backend's
    place; dense baselines in greys and peer implementations in colours of their own, by their place."""
    place = backend_place(backend, series.kind)
    if series.kind in KIND_COLORS:
        palette = KIND_COLORS[series.kind]
        return {"color": palette[place % len(palette)], "dash": "solid" if series.kind == "dense" else "dashdot",
                "marker": "circle"}
    n_hashes = _hashes_of(series.name)
    other = OTHER_COLORS[index % len(OTHER_COLORS)]
    color = other if n_hashes is None else HASH_COLORS.get(n_hashes, other)
    return {"color": color, "dash": LSH_DASHES[place % len(LSH_DASHES)],
            "marker": LSH_MARKERS[place % len(LSH_MARKERS)]}


def _hashes_of(name: str) -> int | None:
    for part in name.split():
        if part.startswith("LSH-") and part[4:].isdigit():
            return int(part[4:])
    return None


# --- scaling -----------------------------------------------------------------------------------------

def scaling_figure(group: ScalingGroup, metric: str, key: str) -> Figure | None:
    """metric "time" or "memory": log-log against length, one line per series, fitted exponent k in the
    legend, failed lengths as labelled markers in a band above the measured values."""
    column = "time_median_s" if metric == "time" else "mem_peak_bytes"
    # A backend that never ran here (unavailable at every length) says nothing about scaling; the
    # findings and the failures table name it.
    plotted = [s for s in group.series
               if not (s.ok.empty and (s.failed["status"] == "unavailable").all())]
    values = [v for s in plotted for v in s.ok[column].dropna()]
    if not values:
        return None
    unit, scale = (time_unit if metric == "time" else memory_unit)(values)
    fig = go.Figure()
    lengths = sorted(group.rows["seq_len"].dropna().unique())
    for index, series in enumerate(plotted):
        backend = str(series.name.split()[0])
        style = series_style(series, backend, index)
        marker = style.pop("marker")
        exponent = series.time_exponent if metric == "time" else series.memory_exponent
        name = text(series.name) + (f" (k={format_exponent(exponent)})" if exponent is not None else "")
        ok = series.ok.dropna(subset=[column])
        if len(ok):
            error = None
            noisy = ok["noise"].fillna("") != "" if metric == "time" else pd.Series(False, index=ok.index)
            if metric == "time" and ok["time_q1_s"].notna().any():
                # The bar spans Q1..Q3 of the timed calls: asymmetric, never below the fastest call.
                error = {"type": "data", "symmetric": False, "thickness": 1, "width": 3, "visible": True,
                         "array": ((ok["time_q3_s"] - ok[column]).clip(lower=0).fillna(0) / scale).tolist(),
                         "arrayminus": ((ok[column] - ok["time_q1_s"]).clip(lower=0).fillna(0) / scale).tolist()}
            notes = [text(c) + (f"<br>noisy: {text(n)}" if n else "")
                     for c, n in zip(ok["case_id"], ok["noise"].fillna(""))]
            fig.add_trace(go.Scatter(
                x=ok["seq_len"].tolist(), y=(ok[column] / scale).tolist(), mode="lines+markers", name=name,
                legendgroup=text(series.name), line=style, error_y=error,
                # Noisy timings get hollow markers: the point is measured, but not to be read closely.
                marker={"size": 8, "symbol": [marker + "-open" if n else marker for n in noisy]},
                customdata=notes,
                hovertemplate=f"{text(series.name)}<br>L=%{{x:,}} tokens<br>%{{y:.4g}} {unit}"
                              f"<br>%{{customdata}}<extra></extra>"))
            if metric == "time" and ok["time_min_s"].notna().any():
                fig.add_trace(go.Scatter(
                    x=ok["seq_len"].tolist(), y=(ok["time_min_s"] / scale).tolist(), mode="markers",
                    name=f"{text(series.name)}: fastest call", legendgroup=text(series.name), showlegend=False,
                    marker={"size": 9, "symbol": "line-ew-open", "color": style["color"], "line": {"width": 2}},
                    hovertemplate=f"{text(series.name)}<br>L=%{{x:,}} tokens<br>fastest call %{{y:.4g}} {unit}"
                                  "<extra></extra>"))
    band = max(values) / scale * 2.5
    failed_any = False
    for index, series in enumerate(plotted):
        if series.failed.empty:
            continue
        failed_any = True
        style = series_style(series, series.name.split()[0], index)
        statuses = series.failed["status"].tolist()
        fig.add_trace(go.Scatter(
            x=series.failed["seq_len"].tolist(), y=[band] * len(statuses), mode="markers+text",
            name=f"{text(series.name)}: failed", legendgroup=text(series.name), showlegend=True,
            marker={"symbol": [FAIL_SYMBOLS.get(s, "x") for s in statuses], "size": 12,
                    "color": style["color"], "line": {"width": 2, "color": style["color"]}},
            text=[s.upper() for s in statuses], textposition="top center",
            textfont={"size": 10, "color": style["color"]},
            customdata=[text(_short(r)) for r in series.failed["reason"].fillna("")],
            hovertemplate=f"{text(series.name)}<br>L=%{{x:,}} tokens<br>%{{text}}: %{{customdata}}"
                          "<extra></extra>"))
    shapes, annotations = [], []
    if failed_any:
        shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": band / 1.5, "y1": band / 1.5,
                       "line": {"dash": "dot", "color": "#999", "width": 1}})
        annotations.append({"xref": "paper", "x": 1, "y": math.log10(band / 1.5), "yref": "y",
                            "text": "above: failed, no measurement", "showarrow": False, "xanchor": "right",
                            "yanchor": "top", "font": {"size": 10, "color": "#666"}})
    if group.token_budget and group.token_budget == PAPER_FIGURE5_TOKENS and metric == "time":
        _add_paper_figure5(fig, scale)
    measure = MODE_NAMES.get(str(group.context.get("mode")), "call")
    y_title = (f"time per {measure}, median ({unit})" if metric == "time"
               else f"peak memory ({unit})")
    tick_text = ([f"{tokens_label(L)}×{group.token_budget // int(L)}" for L in lengths] if group.token_budget
                 else [tokens_label(L) for L in lengths])
    any_exponent = any((s.time_exponent if metric == "time" else s.memory_exponent) is not None for s in plotted)
    fig.update_layout(
        # Every measured length labelled, compactly; the same range in the group's time and memory plots.
        xaxis={"type": "log", "title": {"text": "sequence length (tokens)" + (
            " × batch" if group.token_budget else "")}, "tickvals": [float(L) for L in lengths],
            "ticktext": tick_text, "range": log_range(lengths)},
        # dtick "D2": labels at 1, 2 and 5 of each decade only; "~g" prints 0.05, not 50m.
        yaxis={"type": "log", "title": {"text": y_title}, "dtick": "D2", "tickformat": "~g"},
        legend={"title": {"text": "series (k = fitted exponent)" if any_exponent else "series"}},
        margin={"l": 70, "r": 20, "t": 30, "b": 55}, height=420, shapes=shapes, annotations=annotations,
        hovermode="closest")
    title = f"{'Time' if metric == 'time' else 'Peak memory'} vs sequence length — {group.title}"
    caption = (f"Log-log. k: least-squares slope of log({'time' if metric == 'time' else 'memory'}) on "
               f"log(length) over the {FIT_POINTS} largest measured lengths, so the value grows as L^k "
               f"(given where at least "
               f"{MIN_FIT_LENGTHS if metric == 'time' else MIN_FIT_LENGTHS_MEMORY} lengths were measured). "
               + ("Points: median of the timed calls; bars: their Q1 to Q3; dashes: the fastest call. Hollow "
                  "points are noisy (hover for why), interpreted series have no exponent. " if metric == "time" else
                  "Memory: mem_peak_bytes, inputs included (its method per row in the cases table). ")
               + ("Markers in the band at the top: cases that failed (hover for the reason). "
                  if failed_any else ""))
    if group.token_budget == PAPER_FIGURE5_TOKENS and metric == "time":
        caption += ("Grey dashed: the paper's Figure 5 (Kitaev et al. 2020), read off the plot, on the "
                    "authors' own hardware — a shape to compare with, not a target for this machine.")
    return Figure(key, title, caption, to_dict(fig))


def _add_paper_figure5(fig: go.Figure, scale: float) -> None:
    group = "paper: Kitaev et al. 2020, Fig. 5"
    fig.add_trace(go.Scatter(
        x=list(PAPER_FIGURE5_FULL), y=[v / scale for v in PAPER_FIGURE5_FULL.values()], mode="lines+markers",
        name="paper: full attention", legendgroup=group, legendgrouptitle={"text": "paper (their hardware)"},
        line={"color": PAPER_COLOR, "dash": "dash", "width": 2}, marker={"symbol": "square-open"},
        hovertemplate="paper Fig. 5, full attention<br>L=%{x:,}<br>≈%{y:.3g}<extra></extra>"))
    for n_hashes, points in PAPER_FIGURE5_LSH.items():
        fig.add_trace(go.Scatter(
            x=list(points), y=[v / scale for v in points.values()], mode="lines+markers",
            name=f"paper: LSH-{n_hashes}", legendgroup=group,
            line={"color": HASH_COLORS[n_hashes], "dash": "dash", "width": 1}, opacity=0.5,
            marker={"symbol": "square-open"},
            hovertemplate=f"paper Fig. 5, LSH-{n_hashes}<br>L=%{{x:,}}<br>≈%{{y:.3g}}<extra></extra>"))


def _case_label(row: dict) -> str:
    """Short name of a compared case: "eager LSH-4 L=4,096 forward" (+ buckets and batch when set)."""
    def known(key):
        value = row.get(key)
        return value is not None and value != "" and pd.notna(value)
    parts = [str(row["backend"]) + (f" LSH-{int(row['n_hashes'])}" if known("n_hashes") else "")]
    if known("seq_len"):
        parts.append(f"L={int(row['seq_len']):,}")
    if known("n_buckets"):
        parts.append(f"{int(row['n_buckets'])} buckets")
    if known("batch") and int(row["batch"]) != 1:
        parts.append(f"batch {int(row['batch'])}")
    parts.append(MODE_NAMES.get(str(row.get("mode")), str(row.get("mode"))))
    return " ".join(parts)


def _short(reason: str, limit: int = 160) -> str:
    reason = " ".join(str(reason).split())
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


# --- grids and fidelity --------------------------------------------------------------------------------

def grid_figures(frame: pd.DataFrame) -> list[Figure]:
    """n_buckets x n_hashes heatmaps of time, peak memory and relative error, where a group sweeps both."""
    figures = []
    for index, (context, rows) in enumerate(_grid_groups(frame)):
        if rows["n_buckets"].nunique() < 2 or rows["n_hashes"].nunique() < 2:
            continue
        buckets = sorted(rows["n_buckets"].dropna().unique())
        hashes = sorted(rows["n_hashes"].dropna().unique())
        where = context_title(context) + f" · {context['backend']} · L={int(context['seq_len']):,}"
        for metric, column, label in (("time", "time_median_s", "time"), ("memory", "mem_peak_bytes", "peak memory"),
                                      ("error", "rel_error", "relative error")):
            ok = rows[rows["status"] == "ok"]
            if ok[column].notna().sum() == 0:
                continue
            units = {"time": time_unit, "memory": memory_unit}.get(metric, lambda values: ("", 1.0))
            unit, scale = units(ok[column].dropna())
            z, cell_text = [], []
            for n in hashes:
                z_row: list[float | None] = []  # None: no ok run in the cell
                t_row: list[str] = []
                for b in buckets:
                    cell = rows[(rows["n_hashes"] == n) & (rows["n_buckets"] == b)]
                    good = cell[cell["status"] == "ok"][column].dropna()
                    if len(good):
                        z_row.append(float(good.median()) / scale)
                        noisy = metric == "time" and (cell["noise"].fillna("") != "").any()
                        t_row.append(f"{good.median() / scale:.3g}" + ("*" if noisy else ""))
                    else:
                        z_row.append(None)
                        t_row.append(cell["status"].iloc[0].upper() if len(cell) else "")
                z.append(z_row)
                cell_text.append(t_row)
            fig = go.Figure(go.Heatmap(
                x=[f"{int(b)}" for b in buckets], y=[f"{int(n)}" for n in hashes], z=z, text=cell_text,
                texttemplate="%{text}", colorscale={"time": "Viridis", "memory": "Cividis"}.get(metric, "Magma"),
                reversescale=metric == "error",
                colorbar={"title": {"text": f"{label}" + (f" ({unit})" if unit else "")}},
                hovertemplate="n_buckets=%{x}<br>n_hashes=%{y}<br>%{text}<extra></extra>"))
            # The top margin keeps plotly's mode bar above the cells, not over the top row.
            fig.update_layout(xaxis={"title": {"text": "n_buckets (buckets per hash round)"}, "type": "category"},
                              yaxis={"title": {"text": "n_hashes (hash rounds)"}, "type": "category"},
                              height=380, margin={"l": 70, "r": 20, "t": 44, "b": 55})
            caption = {"time": "Median time per call; * marks a noisy timing (see the cases table)",
                       "memory": "Peak memory (mem_peak_bytes, inputs included)",
                       "error": "Relative error ||out - dense|| / ||dense|| against exact dense attention (an "
                                "all-zero output scores 1)"}[metric] + ". Empty cells are failed cases (status shown)."
            figures.append(Figure(f"grid-{metric}-{index}", f"{label.capitalize()}: n_buckets × n_hashes — "
                                  f"{where}", caption, to_dict(fig)))
    return figures


LINE_COLORS = ("#3182bd", "#e6550d", "#31a354", "#756bb1", "#8c564b", "#d62728", "#17becf", "#bcbd22")


def fidelity_figures(frame: pd.DataFrame) -> list[Figure]:
    """Relative error (solid, left axis) and attention-mass recall (dotted, right axis) against n_hashes:
    one figure per setting and backend, one colour per (length, bucket setting)."""
    figures = []
    ok = frame[(frame["status"] == "ok") & frame["n_hashes"].notna()]
    for index, (context, rows) in enumerate(_grid_groups(ok, fidelity_keys())):
        if rows["rel_error"].notna().sum() == 0 or rows.groupby("seq_len")["n_hashes"].nunique().max() < 2:
            continue
        where = context_title(context) + f" · {context['backend']}"
        fig = go.Figure()
        lines = rows.groupby(["seq_len", "n_buckets", "chunk_len"], dropna=False)
        for number, ((length, buckets, chunk), line) in enumerate(lines):
            by_hashes = line.groupby("n_hashes")[["rel_error", "attn_mass_recall"]].median().reset_index()
            if len(by_hashes) < 2:
                continue
            label = (f"L={int(length):,}, " + (f"{int(buckets)} buckets" if pd.notna(buckets) else "auto buckets")
                     + (f", chunk {int(chunk)}" if pd.notna(chunk) else ""))
            color = LINE_COLORS[number % len(LINE_COLORS)]
            fig.add_trace(go.Scatter(x=by_hashes["n_hashes"].tolist(), y=by_hashes["rel_error"].tolist(),
                                     mode="lines+markers", name=label, legendgroup=label, line={"color": color},
                                     hovertemplate=label + "<br>n_hashes=%{x}<br>rel. error %{y:.4g}<extra></extra>"))
            if by_hashes["attn_mass_recall"].notna().any():
                fig.add_trace(go.Scatter(x=by_hashes["n_hashes"].tolist(),
                                         y=by_hashes["attn_mass_recall"].tolist(), yaxis="y2",
                                         mode="lines+markers", line={"dash": "dot", "color": color},
                                         marker={"symbol": "circle-open"}, name=label + " (recall)",
                                         legendgroup=label, showlegend=False,
                                         hovertemplate=label + "<br>n_hashes=%{x}<br>recall %{y:.4f}<extra></extra>"))
        if not fig.data:
            continue
        fig.update_layout(
            xaxis={"title": {"text": "n_hashes (hash rounds)"}, "type": "log",
                   "tickvals": sorted(rows["n_hashes"].unique().tolist()), "tickformat": "d"},
            yaxis={"title": {"text": "relative error vs dense (solid)"}, "rangemode": "tozero"},
            yaxis2={"title": {"text": "attention-mass recall (dotted)"}, "overlaying": "y",
                    "side": "right", "range": [0, 1.05], "tick0": 0, "dtick": 0.2, "showgrid": False},
            legend={"x": 1.08, "title": {"text": "length, buckets"}}, height=420,
            margin={"l": 70, "r": 20, "t": 20, "b": 55})
        figures.append(Figure(
            f"fidelity-{index}", f"Fidelity vs hash rounds — {where}",
            "Solid, left axis: relative error ||out - dense|| / ||dense|| (an all-zero output scores 1). Dotted, "
            "right axis: attention-mass recall, the share of the exact attention weight that falls on keys LSH "
            "lets each query see (1 = all). Same inputs and rotation seed for every point; on randn inputs "
            "(nearly uniform dense attention) the error measures window size, on clustered ones what hashing "
            "finds.", to_dict(fig)))
    return figures


def _grid_groups(frame: pd.DataFrame, keys=None):
    keys = [k for k in (grid_keys() if keys is None else keys) if k in frame.columns]
    lsh = frame[frame["n_hashes"].notna()]
    if lsh.empty:
        return []
    return [(dict(zip(keys, key)), rows) for key, rows in lsh.groupby(keys, dropna=False, sort=False)]


def comparison_figure(compared: pd.DataFrame) -> Figure | None:
    """Candidate / baseline ratio of each compared metric (analysis.compared_metrics) per case (log axis;
    1 = unchanged)."""
    both = compared[compared["present"] == "both"]
    ratios = [(m, ratio_key(m)) for m in compared_metrics() if ratio_key(m) in both.columns]
    if both.empty or both[[key for _, key in ratios]].notna().sum().sum() == 0:
        return None
    labels = [text(_case_label(r)) for r in both.to_dict("records")]
    fig = go.Figure()
    for number, (metric, key) in enumerate(ratios):
        fig.add_trace(go.Bar(x=labels, y=both[key].tolist(), name=text(f"{metric.compared_as} ratio"),
                             marker_color=LINE_COLORS[number % len(LINE_COLORS)],
                             hovertemplate="%{x}<br>candidate / baseline = %{y:.3f}<extra></extra>"))
    fig.update_layout(barmode="group", yaxis={"type": "log", "title": {"text": "candidate / baseline (×)"},
                                              "tickformat": "~g"},
                      xaxis={"tickangle": -40, "automargin": True}, height=440,
                      shapes=[level_line(1)],
                      margin={"l": 70, "r": 20, "t": 20, "b": 40})
    quantities = [m.compared_as for m, _ in ratios]
    listed = ", ".join(quantities[:-1]) + " and " + quantities[-1] if len(quantities) > 1 else quantities[0]
    return Figure("comparison-ratios", "Candidate vs baseline, per case",
                  f"Ratio of the candidate's {listed} to the baseline's; above 1 is worse (slower, larger). Cases "
                  "present in only one run are listed in the table below.", to_dict(fig))


# --- comparisons against the dense baselines, accuracy against time, RSS over a call -------------------

def speedup_figures(table: pd.DataFrame) -> list[Figure]:
    """Per setting: speed-up (solid) and memory saving (dotted) of every series against each dense
    baseline, by length (log axes; 1 = as fast / as large as the baseline)."""
    figures = []
    for index, (setting, rows) in enumerate(table.groupby("setting", sort=False)):
        fig = go.Figure()
        for number, ((series, baseline), line) in enumerate(rows.groupby(["series", "baseline"], sort=False)):
            color = LINE_COLORS[number % len(LINE_COLORS)]
            label = f"{text(series)} vs {text(baseline)}"
            for column, dash, what in (("speed_up", "solid", "speed-up"), ("memory_saving", "dot", "memory saving")):
                known = line.dropna(subset=[column])
                if known.empty:
                    continue
                fig.add_trace(go.Scatter(
                    x=known["seq_len"].tolist(), y=known[column].tolist(), mode="lines+markers",
                    name=f"{label}: {what}", legendgroup=label, line={"color": color, "dash": dash},
                    marker={"symbol": ["circle-open" if n else "circle" for n in known["noisy"]]},
                    hovertemplate=f"{label}<br>L=%{{x:,}}<br>{what} %{{y:.3g}}x<extra></extra>"))
        if not fig.data:
            continue
        lengths = sorted(rows["seq_len"].unique())
        fig.update_layout(
            xaxis={"type": "log", "title": {"text": "sequence length (tokens)"}, "tickvals": lengths,
                   "ticktext": [tokens_label(L) for L in lengths], "range": log_range(lengths)},
            yaxis={"type": "log", "title": {"text": "baseline / series (×)"}, "tickformat": "~g", "dtick": "D2"},
            height=400, margin={"l": 70, "r": 20, "t": 30, "b": 55},
            shapes=[level_line(1)])
        figures.append(Figure(
            f"speedup-{index}", f"Speed-up and memory saving against the dense baselines — {setting}",
            "Speed-up = baseline median time / series median time (solid); memory saving = baseline peak memory / "
            "series peak memory (dotted); above 1 the series is faster or smaller. Hollow points involve a noisy "
            "timing. Interpreted series are left out.", to_dict(fig)))
    return figures


def accuracy_time_figure(frame: pd.DataFrame) -> Figure | None:
    """Relative error against time per call, one point per measured LSH / peer case (fidelity rows)."""
    rows = frame[(frame["status"] == "ok") & frame["rel_error"].notna() & frame["time_median_s"].notna()
                 & ~frame["interpreted"].fillna(False).astype(bool)]
    if rows.empty:
        return None
    unit, scale = time_unit(rows["time_median_s"])
    fig = go.Figure()
    for number, (name, series) in enumerate(rows.groupby("series", sort=True)):
        labels = [text(f"L={int(r['seq_len']):,}, {int(r['n_buckets']) if pd.notna(r['n_buckets']) else '-'} buckets, "
                       f"chunk {int(r['chunk_len']) if pd.notna(r['chunk_len']) else '-'}")
                  for r in series.to_dict("records")]
        fig.add_trace(go.Scatter(
            x=(series["time_median_s"] / scale).tolist(), y=series["rel_error"].tolist(), mode="markers",
            name=text(name), marker={"size": 9, "color": LINE_COLORS[number % len(LINE_COLORS)]}, customdata=labels,
            hovertemplate=(f"{text(name)}<br>%{{customdata}}<br>%{{x:.3g}} {unit}, rel. error %{{y:.3g}}"
                           "<extra></extra>")))
    fig.update_layout(xaxis={"type": "log", "title": {"text": f"time per call, median ({unit})"}, "tickformat": "~g"},
                      yaxis={"title": {"text": "relative error vs dense"}, "rangemode": "tozero"},
                      height=400, margin={"l": 70, "r": 20, "t": 30, "b": 55},
                      shapes=[level_line(1, color="#999", dash="dot")])
    return Figure("accuracy-time", "Accuracy against time per call",
                  "Each point a case with measured fidelity: its median time and its relative error against exact "
                  "dense attention on the same inputs. Lower left is better. Dotted: rel. error 1, what an all-zero "
                  "output scores; on randn inputs dense attention is nearly uniform, so the error there measures "
                  "window size more than the hashing.", to_dict(fig))


RSS_TRACES_SHOWN = 8


def rss_trace_figure(frame: pd.DataFrame) -> Figure | None:
    """RSS over the memory call, for the longest case of each series (at most RSS_TRACES_SHOWN)."""
    if "rss_trace" not in frame.columns:
        return None
    rows = frame[(frame["status"] == "ok") & frame["rss_trace"].map(lambda t: isinstance(t, list) and len(t) > 1)]
    if rows.empty:
        return None
    longest = rows.sort_values("seq_len").groupby("series", sort=True).tail(1).head(RSS_TRACES_SHOWN)
    top = max(t[1] for trace in longest["rss_trace"] for t in trace)
    unit, scale = memory_unit([top])
    fig = go.Figure()
    for number, row in enumerate(longest.to_dict("records")):
        trace = row["rss_trace"]
        length = f" L={int(row['seq_len']):,}" if pd.notna(row["seq_len"]) else ""  # a hand-made row may lack it
        label = text(f"{row['series']}{length}")
        fig.add_trace(go.Scatter(x=[t[0] for t in trace], y=[t[1] / scale for t in trace], mode="lines", name=label,
                                 line={"color": LINE_COLORS[number % len(LINE_COLORS)]},
                                 hovertemplate=f"{label}<br>%{{x:.3f}} s: %{{y:.4g}} {unit}<extra></extra>"))
    fig.update_layout(xaxis={"title": {"text": "seconds into the memory call"}},
                      yaxis={"title": {"text": f"resident set size ({unit})"}}, height=380,
                      margin={"l": 70, "r": 20, "t": 30, "b": 55})
    note = next((n for n in longest.get("rss_note", pd.Series(dtype=object)).dropna()), "")
    return Figure("rss-trace", "Resident memory over the measured call (the longest case of each series)",
                  "The worker's RSS: the interpreter, torch and what earlier calls left mapped are in it; its rise "
                  f"over the call (rss_call_rise_bytes) is what the call added as the OS sees it. {note}.",
                  to_dict(fig))
