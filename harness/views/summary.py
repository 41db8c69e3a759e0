"""The summary of a run (`reformer-bench show RESULTS --summary`, and the report's Summary tables):
what the old standalone benchmarks printed, computed from rows.

- Comparisons: cases that differ only in their backend, each backend against each baseline backend
  (the suite's compare_against; by default every dense and peer backend in the rows, or the first
  backend when there is none): time ratio = median / baseline median, speed-up = its inverse, and the
  peak memory and peak RSS ratios.
- Growth: along a model key that varies between otherwise equal cases (layers, in a depth sweep): the
  peak memory added per unit (MiB per layer) and the ratio of the largest to the smallest setting.
"""
from __future__ import annotations

import json
from collections import defaultdict

from ..measure.memory import format_size
from ..suite.parameters import names
from .describe import describe, varying_model_keys

# Left out of the settings compared: peers report the bucket count they really use.
BACKEND_REPORTED = ("n_buckets",)


def setting_keys() -> tuple[str, ...]:
    """Row keys that tell cases apart within a suite, besides the backend (harness.suite.parameters)."""
    return names(lambda p: p.in_row and p.role in ("grouping", "series", "lsh-only")
                 and p.name not in ("suite", *BACKEND_REPORTED))


def lsh_keys() -> tuple[str, ...]:
    """What a dense baseline has no value for (null in its rows): left out when one side is dense, so that
    every LSH setting is compared with the dense case of the same shape."""
    return names(lambda p: p.in_row and p.role == "lsh-only" and p.name not in BACKEND_REPORTED)


def _key(row: dict, keys, drop=()) -> str:
    values = {k: row.get(k) for k in keys}
    model = values.get("model")
    if isinstance(model, dict) and drop:
        values["model"] = {k: v for k, v in model.items() if k not in drop}
    return json.dumps(values, sort_keys=True, default=str)


def baselines(rows: list[dict], compare_against=()) -> list[str]:
    """The backends the comparisons are taken against (see the module docstring)."""
    present = list(dict.fromkeys(r["backend"] for r in rows if r.get("backend")))
    if compare_against:
        return [b for b in compare_against if b in present]
    chosen = [b for b in present if any(r.get("backend_kind") in ("dense", "peer")
                                        for r in rows if r["backend"] == b)]
    return chosen or present[:1]


def comparisons(rows: list[dict], compare_against=()) -> list[dict]:
    """One entry per (row, baseline backend) where both ran ok at the same setting: the same LSH
    settings too, unless the baseline is dense (it has none)."""
    against = baselines(rows, compare_against)
    setting, lsh = setting_keys(), lsh_keys()
    shape_keys = tuple(k for k in setting if k not in lsh)
    ok = [r for r in rows if r.get("status") == "ok" and r.get("backend")]
    base_rows: dict[str, dict[str, dict]] = {name: {} for name in against}
    for row in ok:
        if row["backend"] in base_rows:
            keys = shape_keys if row.get("backend_kind") == "dense" else setting
            base_rows[row["backend"]].setdefault(_key(row, keys), row)
    shown = varying_model_keys(rows)
    out = []
    for base_name in against:
        for row in ok:
            name = row["backend"]
            # Each pair once: a baseline is compared with the baselines listed before it only.
            if name == base_name or (name in against and against.index(name) < against.index(base_name)):
                continue
            dense = any(r.get("backend_kind") == "dense" for r in base_rows[base_name].values())
            base = base_rows[base_name].get(_key(row, shape_keys if dense else setting))
            if base is None:
                continue
            entry = {"setting": describe(row, model_keys=shown), "backend": name, "baseline": base_name}
            for key, label in (("time_median_s", "time_ratio"), ("mem_peak_bytes", "mem_ratio"),
                               ("rss_peak_bytes", "rss_ratio")):
                entry[label] = _ratio(row.get(key), base.get(key))
            entry["speed_up"] = _ratio(base.get("time_median_s"), row.get("time_median_s"))
            entry["time_s"], entry["baseline_time_s"] = row.get("time_median_s"), base.get("time_median_s")
            # A memory ratio is only as good as its two figures: say where one is a lower bound.
            entry["mem_lower_bound"] = "lower bound" in (row.get("mem_bound"), base.get("mem_bound"))
            out.append(entry)
    return out


def growth(rows: list[dict]) -> list[dict]:
    """Per series (backend, and every other setting), how peak memory and time grow along each numeric
    model key that varies: memory added per unit, and largest / smallest."""
    ok = [r for r in rows if r.get("status") == "ok" and isinstance(r.get("model"), dict)]
    varying = sorted({k for r in ok for k, v in r["model"].items()
                      if isinstance(v, int) and not isinstance(v, bool)
                      and len({(o["model"] or {}).get(k) for o in ok}) > 1})
    shown = varying_model_keys(ok)
    out = []
    for key in varying:
        series: dict[str, list[dict]] = defaultdict(list)
        for row in ok:
            if key in row["model"]:
                series[_key(row, ("backend",) + setting_keys(), drop=(key,))].append(row)
        for members in series.values():
            members.sort(key=lambda r: r["model"][key])
            first, last = members[0], members[-1]
            units = last["model"][key] - first["model"][key]
            if units <= 0 or first.get("mem_peak_bytes") is None or last.get("mem_peak_bytes") is None:
                continue
            out.append({
                "series": describe(first, with_backend=True, leave_out=(key,), model_keys=shown), "key": key,
                "points": [(r["model"][key], r.get("mem_peak_bytes"), r.get("time_median_s")) for r in members],
                "bytes_per_unit": (last["mem_peak_bytes"] - first["mem_peak_bytes"]) / units,
                "mem_ratio": _ratio(last["mem_peak_bytes"], first["mem_peak_bytes"]),
                "time_ratio": _ratio(last.get("time_median_s"), first.get("time_median_s")),
            })
    return out


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def summary_text(rows: list[dict], compare_against=()) -> str:
    lines = []
    entries = comparisons(rows, compare_against)
    if entries:
        lines.append("Comparisons (ratio = backend / baseline; speed-up = baseline time / backend time):")
        header = ("setting", "backend", "baseline", "time", "speed-up", "peak mem", "peak RSS")
        table = [header] + [(e["setting"], e["backend"], e["baseline"], _x(e["time_ratio"]), _x(e["speed_up"]),
                             _x(e["mem_ratio"]) + ("*" if e["mem_lower_bound"] and e["mem_ratio"] else ""),
                             _x(e["rss_ratio"])) for e in entries]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    for entry in growth(rows):
        if lines:
            lines.append("")
        key = entry["key"]
        lines.append(f"Growth along model.{key}: {entry['series']}")
        for value, mem, seconds in entry["points"]:
            time_text = "-" if seconds is None else f"{seconds:.3g} s"
            lines.append(f"  {key} = {value}: peak memory {format_size(mem)}, time {time_text}")
        lines.append(f"  {format_size(entry['bytes_per_unit'])} per added {key.rstrip('s')} "
                     f"(difference of the peaks / difference of {key}); "
                     f"largest / smallest: memory {_x(entry['mem_ratio'])}, time {_x(entry['time_ratio'])}")
    if any(e["mem_lower_bound"] for e in entries):
        lines.append("  * a peak memory of the pair is a lower bound (mem_bound): the ratio is approximate")
    if not lines:
        return "Nothing to summarise: no two ok cases differ only in their backend or in a model key."
    return "\n".join(lines)
