"""What the report computes from the rows: scaling groups, fitted exponents, headline findings, and the
baseline-vs-candidate comparison. Pure pandas; no HTML or plotting here.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..suite.parameters import grouping_keys, names, plugin_parameters, series_keys, variant_keys

#: The exponent is fitted over this many of the largest measured lengths: small lengths are dominated
#: by fixed per-call overheads and would pull the slope towards 0.
FIT_POINTS = 4
#: Lengths needed before an exponent is reported. Two points give a ratio, not a fit: good enough for
#: memory, which is exact and deterministic (CPU tensor bytes, allocator peak), not for noisy timings.
MIN_FIT_LENGTHS = 3
MIN_FIT_LENGTHS_MEMORY = 2
#: A timing whose interquartile range exceeds this share of its median is flagged as noisy.
NOISY_IQR_SHARE = 0.3
#: A case is also flagged when a case of the same backend and setting does at least this many times
#: its FLOPs in less time: more work cannot take less time unless one of the two timings is off. Only
#: cases that differ in one LSH knob are compared (their hash rounds, or their buckets and chunk length):
#: across both, the matmul shapes change so much that work per second differs honestly.
NOISY_FLOP_RATIO = 1.2
MODE_NAMES = {"forward": "forward", "forward_backward": "forward + backward", "train_step": "training step"}


# --- the keys rows are grouped and matched on, from the parameter table (harness.suite.parameters) ----

def context_keys() -> tuple[str, ...]:
    """Rows that differ only in these keys (and in the swept ones) share a plot: the grouping parameters.
    The LSH flags (dedup, replayed buckets) are not among them (dense rows have none): they name the
    series instead."""
    return grouping_keys()


def grid_keys() -> tuple[str, ...]:
    """A grid (n_buckets x n_hashes) holds the rows of one context, backend, series variant and length."""
    return context_keys() + ("backend",) + variant_keys() + series_keys()


def fidelity_keys() -> tuple[str, ...]:
    """A fidelity figure: a grid's rows at every length."""
    return tuple(k for k in grid_keys() if k != "seq_len")


def flop_rule_keys() -> tuple[str, ...]:
    """Rows compared for the FLOP rule share a grid, and n_hashes or (n_buckets, chunk_len)."""
    return grid_keys()


def match_keys() -> tuple[str, ...]:
    """What the comparison shows of each case (the parameters a table shows; cases are matched by case_id:
    the runner's ids are stable, so the same case in two runs of a suite has the same id)."""
    return names(lambda p: p.in_row and p.column is not None and p.type != "table" and p.name != "case_id")


def fit_exponent(lengths, values, points: int = FIT_POINTS, min_lengths: int = MIN_FIT_LENGTHS) -> float | None:
    """Empirical exponent k of values ~ c * lengths**k: the least-squares slope of log(values) on
    log(lengths) over the `points` largest lengths with a positive value. None with fewer than
    `min_lengths` distinct lengths.
    """
    pairs = sorted((float(x), float(y)) for x, y in zip(lengths, values)
                   if x and y and x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y))
    pairs = pairs[-points:]
    if len({x for x, _ in pairs}) < max(2, min_lengths):
        return None
    log_x, log_y = np.log([x for x, _ in pairs]), np.log([y for _, y in pairs])
    return float(np.polyfit(log_x, log_y, 1)[0])


@dataclass
class Series:
    """One line of a scaling plot: measured points (median over duplicates) and failed lengths."""

    name: str
    kind: str                      # backend_kind of its rows: lsh | dense | peer
    ok: pd.DataFrame               # one row per seq_len: seq_len, time_median_s, time_iqr_s, mem_peak_bytes, ...
    failed: pd.DataFrame           # rows (status != ok) at lengths with no successful row
    time_exponent: float | None = None
    memory_exponent: float | None = None
    interpreted: bool = False      # run under an interpreter: no speed fit, no speed headline
    noisy_fit_points: int = 0      # of the lengths the time exponent is fitted over, how many are noisy


@dataclass
class ScalingGroup:
    """Rows that share a context and sweep seq_len; token_budget is batch * seq_len when that is fixed."""

    context: dict
    rows: pd.DataFrame
    token_budget: int | None
    series: list[Series] = field(default_factory=list)

    @property
    def title(self) -> str:
        return context_title(self.context, self.token_budget)


def context_title(context: dict, token_budget: int | None = None) -> str:
    """e.g. "smoke · forward + backward · cpu float32 · causal · 4 heads x 64"."""
    parts = [str(context.get("suite") or "")]
    if context.get("workload") not in (None, "attention") and _present(context.get("workload")):
        parts.append(str(context["workload"]))
    if context.get("mode"):
        parts.append(MODE_NAMES.get(context["mode"], str(context["mode"])))
    parts.append(" ".join(str(context[k]) for k in ("device", "dtype") if _present(context.get(k))))
    if context.get("causal") is True:
        parts.append("causal")
    if context.get("inputs") not in (None, "randn") and _present(context.get("inputs")):
        parts.append(f"{context['inputs']} inputs")
    if _present(context.get("heads")) and _present(context.get("d_head")):
        parts.append(f"{int(context['heads'])} heads x {int(context['d_head'])}")
    parts += [f"{p.name} {context[p.name]}" for p in plugin_parameters()
              if p.name in context and _present(context[p.name]) and context[p.name] != p.default]
    if token_budget:
        parts.append(f"{token_budget:,} tokens per batch")
    elif _present(context.get("batch")):
        parts.append(f"batch {int(context['batch'])}")
    return " · ".join(p for p in parts if p)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _groups(frame: pd.DataFrame, keys) -> list[tuple[dict, pd.DataFrame]]:
    keys = [k for k in keys if k in frame.columns]
    if frame.empty:
        return []
    return [(dict(zip(keys, key if isinstance(key, tuple) else (key,))), rows)
            for key, rows in frame.groupby(keys, dropna=False, sort=False)]


def scaling_groups(frame: pd.DataFrame) -> list[ScalingGroup]:
    """Groups with at least two sequence lengths. batch joins the context unless batch * seq_len is the
    same for every row (a fixed token budget, as in the paper's Figure 5)."""
    groups = []
    for context, rows in _groups(frame, context_keys()):
        tokens = (rows["batch"] * rows["seq_len"]).dropna().unique()
        candidates: list[tuple[dict, Any, int | None]]  # (context, its rows, the token budget where fixed)
        if len(tokens) == 1 and rows["batch"].nunique() > 1:
            candidates = [(context, rows, int(tokens[0]))]
        else:
            candidates = [(context | {"batch": b}, r, None) for b, r in rows.groupby("batch", dropna=False)]
        for ctx, sub, budget in candidates:
            if sub["seq_len"].nunique() >= 2:
                group = ScalingGroup(ctx, sub, budget)
                group.series = _series(sub)
                groups.append(group)
    return groups


def distinct_series_names(rows: pd.DataFrame) -> pd.Series:
    """The `series` column, refined by chunk length then bucket count where a name repeats at one length."""
    names = rows["series"].astype(str)
    for key, fmt in (("chunk_len", "chunk {:g}"), ("n_buckets", "{:g} buckets")):
        pairs = pd.DataFrame({"n": names, "L": rows["seq_len"], "v": rows[key]})
        repeated = pairs.duplicated(["n", "L"], keep=False)
        # Refine only where one name at one length holds several values of the key (not where "auto"
        # settings differ from length to length along one series).
        if not repeated.any() or not (pairs[repeated].groupby(["n", "L"])["v"].nunique(dropna=False) > 1).any():
            continue
        suffix = rows[key].map(lambda v, fmt=fmt: fmt.format(v) if _present(v) else "default")
        names = names.where(~repeated, names + " · " + suffix)
    return names


def _series(rows: pd.DataFrame) -> list[Series]:
    rows = rows.assign(_name=distinct_series_names(rows))
    out = []
    for name, sub in rows.groupby("_name", sort=True):
        ok = (sub[sub["status"] == "ok"]
              .groupby("seq_len", as_index=False)
              .agg({c: "median" for c in ("time_median_s", "time_iqr_s", "time_q1_s", "time_q3_s", "time_min_s",
                                          "mem_peak_bytes", "rel_error", "batch", "flops_analytic")}
                   | {"case_id": "first", "noise": lambda v: "; ".join(x for x in v if x),
                      "mem_bound": lambda v: (v == "lower bound").any()})
              .rename(columns={"mem_bound": "mem_lower_bound"}))
        failed = sub[(sub["status"] != "ok") & ~sub["seq_len"].isin(ok["seq_len"])]
        failed = failed.drop_duplicates("seq_len").sort_values("seq_len")
        kind = str(sub["backend_kind"].dropna().iloc[0]) if sub["backend_kind"].notna().any() else "lsh"
        interpreted = bool(sub["interpreted"].fillna(False).astype(bool).any())
        series = Series(str(name) + (" (interpreted)" if interpreted else ""), kind, ok.sort_values("seq_len"),
                        failed, interpreted=interpreted)
        # An interpreter's time says nothing about how the kernels scale: no exponent for it.
        series.time_exponent = None if interpreted else fit_exponent(ok["seq_len"], ok["time_median_s"])
        fitted = ok.sort_values("seq_len").dropna(subset=["time_median_s"]).tail(FIT_POINTS)
        series.noisy_fit_points = int((fitted["noise"] != "").sum()) if series.time_exponent is not None else 0
        series.memory_exponent = fit_exponent(ok["seq_len"], ok["mem_peak_bytes"],
                                              min_lengths=MIN_FIT_LENGTHS_MEMORY)
        out.append(series)
    # Dense baselines first so their colours stay the same whatever LSH series a suite has.
    return sorted(out, key=lambda s: (s.kind != "dense", s.kind != "peer", s.name))


# --- headline findings ------------------------------------------------------------------------------

def crossover(lsh: Series, dense: Series) -> str | None:
    """One sentence on where lsh becomes faster than dense, from the lengths both were run at.

    A length where dense failed (OOM, timeout...) and lsh succeeded counts as lsh being faster.
    """
    lsh_time = dict(zip(lsh.ok["seq_len"], lsh.ok["time_median_s"]))
    dense_time = dict(zip(dense.ok["seq_len"], dense.ok["time_median_s"]))
    dense_failed = set(dense.failed["seq_len"])
    lengths = sorted(L for L in lsh_time if L in dense_time or L in dense_failed)
    if len(lengths) < 2:
        return None
    faster = [L in dense_failed or lsh_time[L] < dense_time[L] for L in lengths]
    span = f"measured {int(lengths[0]):,}-{int(lengths[-1]):,} tokens"
    if all(faster):
        return f"{lsh.name} is faster than {dense.name} at every measured length ({span})"
    if not faster[-1]:
        return f"{dense.name} is faster than {lsh.name} at the longest measured length ({span})"
    start = len(faster)
    while start > 0 and faster[start - 1]:
        start -= 1
    return f"{lsh.name} is faster than {dense.name} from {int(lengths[start]):,} tokens on ({span})"


def headline_findings(frame: pd.DataFrame, groups: list[ScalingGroup] | None = None) -> list[tuple[str, str]]:
    """(setting, sentence) pairs computed from the data: crossovers, memory/time exponents, failures,
    fidelity trends. The setting is a context title such as "smoke · forward · cpu float32 · ..."."""
    groups = scaling_groups(frame) if groups is None else groups
    findings = []
    for group in groups:
        where = group.title
        dense = [s for s in group.series if s.kind == "dense" and not s.interpreted]
        hashing = [s for s in group.series if s.kind != "dense" and not s.interpreted]
        for lsh in hashing:
            for baseline in dense:
                sentence = crossover(lsh, baseline)
                if sentence:
                    findings.append((where, sentence + "."))
        for metric, attr in (("peak memory", "memory_exponent"), ("time", "time_exponent")):
            slopes = [f"{s.name} {format_exponent(getattr(s, attr))}"
                      + (f" (from {s.noisy_fit_points} noisy of its {min(FIT_POINTS, len(s.ok))} lengths)"
                         if metric == "time" and s.noisy_fit_points else "")
                      for s in group.series if getattr(s, attr) is not None]
            if len(slopes) >= 2:
                findings.append((where, f"{metric} grows as L^k with k = {', '.join(slopes)} (log-log slope)."))
        for series in group.series:
            if series.failed.empty:
                continue
            first = series.failed.iloc[0]
            if series.ok.empty and (series.failed["status"] == "unavailable").all():
                findings.append((where, f"{series.name} did not run: {first['reason'] or 'unavailable'}."))
            else:
                findings.append((where, (f"{series.name} fails from {int(first['seq_len']):,} tokens "
                                         f"({first['status']}).")))
    findings.extend(_fidelity_findings(frame))
    findings.extend(_noise_findings(frame))
    return findings


def noise_reasons(frame: pd.DataFrame) -> pd.Series:
    """Why each row's timing is not to be trusted ("" when nothing says so): an interquartile range over
    NOISY_IQR_SHARE of the median, or a case of the same backend and setting that did NOISY_FLOP_RATIO
    times its FLOPs (or more) in less time."""
    reasons = pd.Series([""] * len(frame), index=frame.index, dtype=object)
    if frame.empty:
        return reasons
    timed = (frame["status"] == "ok") & frame["time_median_s"].notna()
    wide = timed & frame["time_iqr_s"].notna() & (frame["time_iqr_s"] > NOISY_IQR_SHARE * frame["time_median_s"])
    for index in frame.index[wide]:
        share = frame.at[index, "time_iqr_s"] / frame.at[index, "time_median_s"]
        reasons[index] = f"IQR {share:.0%} of the median"
    keys = [k for k in flop_rule_keys() if k in frame.columns]
    candidates = frame[timed & frame["flops_analytic"].notna()]
    groupings = [candidates.groupby(keys + knob, dropna=False, sort=False) for knob in (["n_hashes"],
                                                                                        ["n_buckets", "chunk_len"])]
    for rows in (rows for grouping in groupings for _, rows in grouping):
        if len(rows) < 2:
            continue
        for index, row in rows.iterrows():
            faster = rows[(rows["flops_analytic"] >= NOISY_FLOP_RATIO * row["flops_analytic"])
                          & (rows["time_median_s"] < row["time_median_s"])]
            if len(faster):
                other = faster.loc[faster["flops_analytic"].idxmax()]
                ratio = other["flops_analytic"] / row["flops_analytic"]
                note = f"slower than {other['case_id']}, which does {ratio:.1f}x its FLOPs"
                if note not in reasons[index]:
                    reasons[index] = f"{reasons[index]}; {note}" if reasons[index] else note
    return reasons


def _noise_findings(frame: pd.DataFrame) -> list[tuple[str, str]]:
    timed = frame[(frame["status"] == "ok") & frame["time_median_s"].notna()]
    noisy = timed[timed["noise"] != ""] if "noise" in timed.columns else timed.iloc[:0]
    if noisy.empty:
        return []
    wide = noisy["noise"].str.contains("IQR").sum()
    inverted = noisy["noise"].str.contains("slower than").sum()
    return [("Measurement quality", (
        f"{len(noisy)} of {len(timed)} timed cases are flagged noisy ({wide} with an interquartile range above "
        f"{NOISY_IQR_SHARE:.0%} of the median, {inverted} slower than a case of the same backend doing at least "
        f"{NOISY_FLOP_RATIO}x their FLOPs): a busy machine or too few repeats. Their times, and exponents "
        "fitted through them, are marked; the cases table's noise column says why."))]


def speedups(groups: list[ScalingGroup]) -> pd.DataFrame:
    """Per scaling group and length: each non-dense series' speed-up (baseline time / its time) and memory
    saving (baseline memory / its memory) against each dense baseline, and its tokens per second.
    Interpreted series are left out: their times are not the kernels'."""
    records = []
    for group in groups:
        dense = [s for s in group.series if s.kind == "dense" and not s.interpreted]
        for series in group.series:
            if series.kind == "dense" or series.interpreted:
                continue
            mine = series.ok.set_index("seq_len")
            for baseline in dense:
                theirs = baseline.ok.set_index("seq_len")
                for length in sorted(set(mine.index) & set(theirs.index)):
                    a, b = mine.loc[length], theirs.loc[length]
                    records.append({
                        "setting": group.title, "series": series.name, "baseline": baseline.name,
                        "seq_len": int(length),
                        "speed_up": _div(b["time_median_s"], a["time_median_s"]),
                        "memory_saving": _div(b["mem_peak_bytes"], a["mem_peak_bytes"]),
                        "tokens_per_s": _div(a["batch"] * length, a["time_median_s"]),
                        "noisy": bool(a["noise"] or b["noise"]),
                        "memory_lower_bound": bool(a["mem_lower_bound"] or b["mem_lower_bound"]),
                    })
    return pd.DataFrame.from_records(records, columns=["setting", "series", "baseline", "seq_len", "speed_up",
                                                        "memory_saving", "tokens_per_s", "noisy",
                                                        "memory_lower_bound"])


def _div(a, b):
    return float(a) / float(b) if _present(a) and _present(b) and b else None


def format_exponent(value: float) -> str:
    """Two decimals, and never "-0.00"."""
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def _fidelity_findings(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """Per setting and backend, relative error at the fewest and the most hash rounds, at the longest
    length measured with at least two hash counts (median over bucket counts there)."""
    findings = []
    ok = frame[(frame["status"] == "ok") & frame["rel_error"].notna() & frame["n_hashes"].notna()]
    for context, rows in _groups(ok, fidelity_keys()):
        swept = rows.groupby("seq_len")["n_hashes"].nunique()
        swept = swept[swept >= 2]
        if swept.empty:
            continue
        length = swept.index.max()
        at_length = rows[rows["seq_len"] == length]
        by_hashes = at_length.groupby("n_hashes")["rel_error"].median()
        lo, hi = by_hashes.index.min(), by_hashes.index.max()
        configs = at_length.groupby(["n_buckets", "chunk_len"], dropna=False).ngroups
        over = f", median over {configs} bucket settings" if configs > 1 else ""
        findings.append((context_title(context), (
            f"{context['backend']} relative error vs dense goes from {by_hashes[lo]:.3g} "
            f"({int(lo)} hash{'es' if lo > 1 else ''}) to {by_hashes[hi]:.3g} ({int(hi)} hashes) "
            f"at {int(length):,} tokens{over}.")))
    return findings


def status_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Cases per suite and status (a table: rows = suite, columns = status)."""
    from ..results.store import STATUSES

    counts = pd.crosstab(frame["suite"], frame["status"]) if not frame.empty else pd.DataFrame()
    counts = counts.reindex(columns=[s for s in STATUSES if s in counts.columns])
    counts["total"] = counts.sum(axis=1)
    return counts


# --- comparing two runs -------------------------------------------------------------------------------

def compared_metrics() -> list:
    """The metrics two runs are compared on: those the metric table gives a tolerance, in table order."""
    from ..measure.metrics import metrics

    return metrics(lambda m: m.tolerance is not None)


def ratio_key(metric) -> str:
    """The comparison's column of candidate / baseline for a compared metric: "time_ratio"."""
    return re.sub(r"\W+", "_", metric.compared_as).strip("_") + "_ratio"


def compare(baseline: pd.DataFrame, candidate: pd.DataFrame) -> pd.DataFrame:
    """One row per case_id in either run: its parameters, both runs' status and compared metrics (with
    their noise metrics), candidate/baseline ratios (ratio_key), `present` (both | baseline only |
    candidate only) and `verdict` (why it is a regression; empty when it is not, or when the case is in
    one run only). The compared metrics and their tolerances are the metric table's (compared_metrics).
    """
    keys = list(match_keys())
    compared = compared_metrics()
    figures = ["status"] + list(dict.fromkeys(
        name for m in compared for name in (m.name, m.noise) if name is not None))

    def side(frame):
        return frame.reindex(columns=["case_id"] + keys + figures).drop_duplicates("case_id", keep="last")

    merged = side(baseline).merge(side(candidate), on="case_id", how="outer", suffixes=("_base", "_cand"),
                                  indicator=True)
    for key in keys:  # a case's parameters, from whichever run has it
        merged[key] = merged[f"{key}_cand"].where(merged["_merge"] != "left_only", merged[f"{key}_base"])
        merged = merged.drop(columns=[f"{key}_base", f"{key}_cand"])
    for metric in compared:
        merged[ratio_key(metric)] = (pd.to_numeric(merged[f"{metric.name}_cand"], errors="coerce")
                                     / pd.to_numeric(merged[f"{metric.name}_base"], errors="coerce"))
    merged["verdict"] = [_verdict(row, compared) for row in merged.to_dict("records")]
    merged = merged.rename(columns={"_merge": "present"})
    merged["present"] = merged["present"].map(
        {"both": "both", "left_only": "baseline only", "right_only": "candidate only"}).astype(str)
    # Sort by the parameters: numbers as numbers, the rest (and null) as text.
    numeric = set(names(lambda p: p.numeric))
    for key in keys:
        merged[key] = (pd.to_numeric(merged[key], errors="coerce") if key in numeric
                       else merged[key].map(lambda v: v if _present(v) else None))
    sort_keys = {f"_{k}": (merged[k] if k in numeric else merged[k].map(lambda v: "" if v is None else str(v)))
                 for k in keys}
    return (merged.assign(**sort_keys).sort_values(list(sort_keys) + ["case_id"], na_position="last")
            .drop(columns=list(sort_keys)).reset_index(drop=True))


def _verdict(row: dict, compared: list) -> str:
    from ..results.compare import verdict

    if row["_merge"] != "both":
        return ""
    reasons = []
    if row["status_base"] == "ok" and row["status_cand"] != "ok":
        reasons.append(f"now {row['status_cand']}")
    for metric in compared:
        # Two measurements of a noisy figure can differ by both runs' noise together (time: their IQRs).
        spread = (sum(v for v in (row[f"{metric.noise}_base"], row[f"{metric.noise}_cand"]) if _present(v))
                  if metric.noise else 0.0)
        if verdict(row[f"{metric.name}_base"], row[f"{metric.name}_cand"], metric.tolerance, spread) == "regression":
            reasons.append(f"{metric.compared_as} x{row[ratio_key(metric)]:.2f}")
    return "; ".join(reasons)
