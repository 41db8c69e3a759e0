"""The report's profiles: where the time and the memory go (README "Profiles").

- phase_figures: per scaling group, stacked bars of each series' phase shares (phase_shares) at every
  length it was profiled at, shortest to longest: what share of the call each named phase took.
- peak_live_figure: the live set at the memory peak (peak_live_top) as horizontal bars by op and where,
  the rest of mem_peak_bytes as "other", one case at a time (a case selector above the chart).
- profile_files: per case, links to its trace, op table and live-set file (paths relative to its run
  directory, made relative to the report's folder).

Pure data and plotly dicts; the markup is templates/sections/profiles.html.j2.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from ..measure.metrics import METRICS
from .analysis import ScalingGroup, context_keys, distinct_series_names
from .figures import Figure, memory_unit, text, to_dict, tokens_label

# harness.measure.phases.OTHER: the rest of the call, outside every named phase (not imported from
# there: that module imports torch, which drawing a report does not need).
OTHER_PHASE = "other"
# The stack's order, bottom to top: the forward's phases in call order, then the backward's; a phase
# not listed goes after them by name, and "other" is on top.
PHASE_ORDER = ("lsh.hash", "lsh.sort", "lsh.gather", "lsh.attend", "lsh.unsort", "lsh.combine",
               "lsh.backward.prepare", "lsh.backward.gather", "lsh.backward.attend", "lsh.backward.keys",
               "lsh.backward.unsort")
# A forward phase and its backward counterpart share a hue (the backward's lighter).
PHASE_COLORS = {
    "lsh.hash": "#e6550d", "lsh.sort": "#31a354", "lsh.gather": "#3182bd", "lsh.attend": "#756bb1",
    "lsh.unsort": "#8c6d31", "lsh.combine": "#d6616b",
    "lsh.backward.prepare": "#fdae6b", "lsh.backward.gather": "#9ecae1", "lsh.backward.attend": "#bcbddc",
    "lsh.backward.keys": "#a1d99b", "lsh.backward.unsort": "#d6bd7f", OTHER_PHASE: "#cfcfcf",
}
UNLISTED_PHASE_COLORS = ("#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#393b79", "#637939")
PEAK_OTHER = "other (outside the top groups)"
PHASE_BAR_WIDTH = 100  # pixels per bar of a phase chart
PHASE_CHART_MAX_WIDTH = 1300
PEAK_BAR_HEIGHT = 38  # pixels per bar of the live-set chart


def has_phases(frame: pd.DataFrame) -> bool:
    return "phase_shares" in frame.columns and bool(frame["phase_shares"].map(_mapping).any())


def has_peak_live(frame: pd.DataFrame) -> bool:
    return "peak_live_top" in frame.columns and bool(frame["peak_live_top"].map(_records).any())


def _mapping(value) -> bool:
    return isinstance(value, dict) and bool(value)


def _records(value) -> bool:
    return isinstance(value, list) and bool(value)


# --- phases --------------------------------------------------------------------------------------------

def phase_order(names) -> list[str]:
    """names in stacking order: PHASE_ORDER's first, the rest by name, "other" last."""
    names = set(names)
    listed = [n for n in PHASE_ORDER if n in names]
    rest = sorted(n for n in names if n not in PHASE_ORDER and n != OTHER_PHASE)
    return listed + rest + ([OTHER_PHASE] if OTHER_PHASE in names else [])


def phase_color(name: str) -> str:
    if name in PHASE_COLORS:
        return PHASE_COLORS[name]
    import zlib

    return UNLISTED_PHASE_COLORS[zlib.crc32(name.encode()) % len(UNLISTED_PHASE_COLORS)]


def phase_groups(frame: pd.DataFrame, groups: list[ScalingGroup]) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) of the profiled ok rows: one per scaling group, then one per context for rows in no
    scaling group (a suite that profiles a single length)."""
    profiled = frame[(frame["status"] == "ok") & frame["phase_shares"].map(_mapping)]
    out, covered = [], set()
    for group in groups:
        rows = profiled[profiled.index.isin(group.rows.index)]
        covered.update(group.rows.index)
        if len(rows):
            out.append((group.title, rows.assign(_series=distinct_series_names(rows))))
    rest = profiled[~profiled.index.isin(covered)]
    keys = [k for k in context_keys() + ("batch",) if k in rest.columns]
    if len(rest):
        for values, rows in rest.groupby(keys, dropna=False, sort=False):
            context = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
            out.append((ScalingGroup(context, rows, None).title, rows.assign(_series=distinct_series_names(rows))))
    return out


def phase_bars(rows: pd.DataFrame) -> list[dict]:
    """One bar per (series, seq_len): the mean share and time of each phase over its rows, series by
    name, lengths shortest first."""
    bars = []
    for (series, length), sub in rows.groupby(["_series", "seq_len"], sort=True):
        shares: dict[str, float] = {}
        times: dict[str, float] = {}
        for row in sub.to_dict("records"):
            for name, share in row["phase_shares"].items():
                shares[name] = shares.get(name, 0.0) + float(share) / len(sub)
            for name, seconds in (row.get("phase_times") or {}).items():
                times[name] = times.get(name, 0.0) + float(seconds) / len(sub)
        total = sub["phase_total_s"].median() if "phase_total_s" in sub else float("nan")
        bars.append({"series": str(series), "seq_len": int(length), "shares": shares, "times": times,
                     "total_s": None if pd.isna(total) else float(total)})
    return bars


def _phase_hover(bar: dict, name: str) -> str:
    """ "<series> at <L> tokens<br><phase>: <share>% (<phase time> ms of <profiled call> ms)"."""
    share = 100 * bar["shares"].get(name, 0.0)
    line = f"{text(bar['series'])} at {bar['seq_len']:,} tokens<br>{text(name)}: {share:.1f}%"
    seconds = bar["times"].get(name)
    if seconds is None:
        return line
    of_total = f" of {bar['total_s'] * 1e3:.3g} ms" if bar["total_s"] else ""
    return f"{line} ({seconds * 1e3:.3g} ms{of_total})"


def phase_figure(title: str, rows: pd.DataFrame, key: str) -> Figure:
    """Stacked bars of phase shares (%) per series and length (a two-level x axis: series, then length)."""
    bars = phase_bars(rows)
    names = phase_order({n for bar in bars for n in bar["shares"]})
    outer = [text(bar["series"]) for bar in bars]
    inner = [tokens_label(bar["seq_len"]) for bar in bars]
    fig = go.Figure()
    for name in names:
        hover = [_phase_hover(bar, name) for bar in bars]
        fig.add_trace(go.Bar(name=text(name), x=[outer, inner],
                             y=[100 * bar["shares"].get(name, 0.0) for bar in bars],
                             marker={"color": phase_color(name), "line": {"width": 0}},
                             hovertext=hover, hoverinfo="text"))
    # A width that follows the bar count, so that one or two bars do not stretch across the page.
    fig.update_layout(barmode="stack", height=420, width=min(PHASE_CHART_MAX_WIDTH, 440 + PHASE_BAR_WIDTH * len(bars)),
                      margin={"l": 60, "r": 20, "t": 20, "b": 70},
                      yaxis={"title": {"text": "share of the profiled call (%)"}, "range": [0, 100]},
                      xaxis={"title": {"text": "series · sequence length (tokens)"}},
                      legend={"traceorder": "reversed", "title": {"text": "phase"}}, bargap=0.25)
    lengths = sorted({bar["seq_len"] for bar in bars})
    span = (f"from {tokens_label(lengths[0])} to {tokens_label(lengths[-1])} tokens" if len(lengths) > 1
            else f"at {tokens_label(lengths[0])} tokens")
    caption = (f"What share of one profiled call each named phase took, per series {span}; hover for the "
               f"times. phase_shares: {METRICS['phase_shares'].how}. phase_times: {METRICS['phase_times'].how}.")
    return Figure(key, f"Where the time goes — {title}", caption, to_dict(fig))


def phase_figures(frame: pd.DataFrame, groups: list[ScalingGroup]) -> list[Figure]:
    if not has_phases(frame):
        return []
    return [phase_figure(title, rows, f"phases-{index}")
            for index, (title, rows) in enumerate(phase_groups(frame, groups))]


# --- the live set at the peak --------------------------------------------------------------------------

def peak_live_label(record: dict) -> str:
    """"op<br>where" for a bar (plotly text), "(no module)" left out of where."""
    where = " | ".join(part for part in str(record.get("where") or "").split(" | ") if part != "(no module)")
    return text(record.get("op") or "?") + (f"<br>{text(where)}" if where else "")


def peak_live_cases(frame: pd.DataFrame) -> list[dict]:
    """Per case with a live set: its label, mem_peak_bytes and bars (label, bytes, count), largest first,
    "other" (the peak less the top groups) last."""
    cases = []
    rows = frame[frame["peak_live_top"].map(_records)]
    names = distinct_series_names(rows) if len(rows) else pd.Series(dtype=str)
    for (_, row), series in zip(rows.iterrows(), names):
        top = sorted(row["peak_live_top"], key=lambda r: -float(r.get("bytes") or 0))
        bars = [{"label": peak_live_label(r), "bytes": float(r.get("bytes") or 0), "count": r.get("count")}
                for r in top]
        peak = row["mem_peak_bytes"]
        rest = float(peak) - sum(b["bytes"] for b in bars) if pd.notna(peak) else 0.0
        if rest > 0:
            bars.append({"label": text(PEAK_OTHER), "bytes": rest, "count": None})
        mode = str(row.get("mode") or "")
        cases.append({"case_id": str(row["case_id"]),
                      "label": f"{series} · {mode} · {tokens_label(row['seq_len'])}"
                               if pd.notna(row.get("seq_len")) else f"{series} · {mode}",
                      "peak": float(peak) if pd.notna(peak) else None, "bars": bars})
    return cases


def _peak_trace(case: dict, scale: float) -> dict:
    bars = case["bars"]
    total = case["peak"] or sum(b["bytes"] for b in bars) or 1.0
    return {
        "x": [b["bytes"] / scale for b in bars],
        "y": [b["label"] for b in bars],
        "text": [f"{100 * b['bytes'] / total:.1f}%" for b in bars],
        "hovertext": [f"{b['label']}<br>{b['bytes']:,.0f} bytes"
                      + (f" in {int(b['count'])} storage{'s' if int(b['count']) != 1 else ''}"
                         if b["count"] is not None else "") for b in bars],
        "marker.color": [[PHASE_COLORS[OTHER_PHASE] if b["label"] == text(PEAK_OTHER) else "#3182bd"
                          for b in bars]],
    }


def peak_live_figure(frame: pd.DataFrame) -> Figure | None:
    """One chart with a case selector: the selected case's live set at the peak, by op and where."""
    if not has_peak_live(frame):
        return None
    cases = peak_live_cases(frame)
    scale_unit, scale = memory_unit([b["bytes"] for c in cases for b in c["bars"]])
    first = _peak_trace(cases[0], scale)
    fig = go.Figure(go.Bar(orientation="h", x=first["x"], y=first["y"], text=first["text"],
                           textposition="outside", hovertext=first["hovertext"], hoverinfo="text",
                           marker={"color": first["marker.color"][0]}))
    height = 150 + PEAK_BAR_HEIGHT * max(len(c["bars"]) for c in cases)
    buttons: list[dict[str, Any]] = []
    for case in cases:
        trace = _peak_trace(case, scale)
        peak = f"{case['peak'] / scale:,.3g} {scale_unit} at the peak" if case["peak"] else "peak unknown"
        buttons.append({"method": "update", "label": text(case["label"]),
                        "args": [{"x": [trace["x"]], "y": [trace["y"]], "text": [trace["text"]],
                                  "hovertext": [trace["hovertext"]], "marker.color": trace["marker.color"]},
                                 {"title.text": f"{text(case['case_id'])}: {peak}"}]})
    fig.update_layout(
        height=height, margin={"l": 20, "r": 60, "t": 90, "b": 50}, showlegend=False,
        title={"text": buttons[0]["args"][1]["title.text"], "x": 0.005, "xanchor": "left", "y": 0.97,
               "font": {"size": 12}},
        xaxis={"title": {"text": f"bytes alive at the peak ({scale_unit})"}, "rangemode": "tozero"},
        yaxis={"autorange": "reversed", "automargin": True, "type": "category"},
        updatemenus=[{"buttons": buttons, "direction": "down", "x": 0, "xanchor": "left", "y": 1.0,
                      "yanchor": "bottom", "pad": {"b": 28}, "showactive": True}] if len(cases) > 1 else [],
    )
    caption = (f"The tensors alive at the moment of the memory peak, by the op that made them and where; "
               f"choose the case above the chart ({len(cases)} case{'s' if len(cases) != 1 else ''}). "
               f"peak_live_top: {METRICS['peak_live_top'].how}. \"{PEAK_OTHER}\" is mem_peak_bytes less "
               "those groups; percentages are of the case's peak.")
    return Figure("peak-live", "Memory at the peak, by op and where", caption, to_dict(fig))


# --- the profile files ------------------------------------------------------------------------------

PROFILE_FILES = (("trace_file", "trace"), ("op_table_file", "op table"), ("peak_live_file", "live set"))


def profile_files(frame: pd.DataFrame, run_dirs: list[Path], out_dir: Path | None) -> list[dict]:
    """Per case with a profile file: case id, series, mode, length and its links ({title, href, path}).
    run_dirs: each frame row's results directory (the files' paths are relative to it); href is relative
    to out_dir (the report's folder), or an absolute file URI where out_dir is unknown."""
    keys = [key for key, _ in PROFILE_FILES if key in frame.columns]
    out = []
    for (_, row), run_dir in zip(frame.iterrows(), run_dirs):
        links = []
        for key, title in PROFILE_FILES:
            value = row[key] if key in keys else None
            if not isinstance(value, str) or not value:
                continue
            target = (Path(run_dir) / value).resolve()
            href = (Path(os.path.relpath(target, Path(out_dir).resolve())).as_posix() if out_dir is not None
                    else target.as_uri())
            links.append({"title": title, "href": href, "path": value})
        if links:
            out.append({"case_id": str(row["case_id"]), "series": str(row["series"]), "mode": str(row["mode"] or ""),
                        "seq_len": f"{int(row['seq_len']):,}" if pd.notna(row["seq_len"]) else "—",
                        "links": links})
    return out
