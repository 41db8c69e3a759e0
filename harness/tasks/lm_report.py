"""The lm task's section of the report: held-out bits per dim trained x evaluated (Figure 4 on this
machine), the curves against training step and training seconds, the cost of each training, Figure 3's
ablations, the seed spread every gap is stated in, the corpus (checksum, licence) and the references.

Plain data from the rows (a pandas DataFrame of the run); rendered by harness.report.
"""
from __future__ import annotations

import html

import pandas as pd

from .charts import COLORS
from .registry import Chart, Section, Table, Text, attention_label

BASELINE = "shared QK, two streams"  # harness.tasks.lm.setting_label of the default table


def _order(keys) -> list:
    """Full attention first, then LSH-8, -4, -2, -1 (the paper's order)."""
    return sorted(keys, key=lambda n: (n != 0, -n))


def report_sections(frame: pd.DataFrame) -> list[Section]:
    if "bits_per_dim" not in frame.columns and "heldout_curve" not in frame.columns:
        return []
    sections = []
    # One section per training recipe the rows can tell apart (corpus, length, batch, heads, steps):
    # cells of models trained differently do not mix, and runs of one recipe join (a suite's second seed
    # run apart, suites/lm_seeds.toml, gives its spread to the suite it repeats).
    recipe = ("corpus", "seq_len", "batch", "heads", "d_head", "train_steps")
    keys = [frame[c].map(_key) if c in frame.columns else pd.Series("?", index=frame.index) for c in recipe]
    for (corpus, seq_len, batch, heads, d_head, steps), rows in frame.groupby(keys):
        slug = f"{corpus}-n{seq_len}-b{batch}-h{heads}-d{d_head}-s{steps}"
        parts = corpus_parts(rows, slug)
        if parts:
            suites = ", ".join(sorted(rows["suite"].dropna().astype(str).unique())) if "suite" in rows else "?"
            sections.append(Section(f"lm-{slug}", f"Language modelling on {corpus}, {seq_len} tokens, batch {batch}, "
                                    f"{steps} steps ({suites}): bits per dim", parts))
    failed = frame[(frame["status"] != "ok")] if "status" in frame.columns else frame.iloc[:0]
    if not sections and not failed.empty:
        reasons = sorted({str(r) for r in failed["reason"].dropna()})
        sections.append(Section("lm", "Language modelling", [Text("No case ran: " + "; ".join(reasons))]))
    return sections


def _key(value) -> str:
    """A recipe value as a section key: counts read back as floats shown whole, unknown as '?'."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "?"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def seed_spread(evaluated: pd.DataFrame) -> float | None:
    """The spread (max - min) of full-attention bits per dim across seeds of the baseline setting, or None
    with a single seed."""
    full = evaluated[(evaluated["train_n_hashes"] == 0) & (evaluated["eval_n_hashes"] == 0)
                     & (evaluated["lm_setting"] == BASELINE)]
    if full["seed"].nunique() < 2:
        return None
    by_seed = full.groupby("seed")["bits_per_dim"].median()
    return float(by_seed.max() - by_seed.min())


def _in_spread(gap: float, spread: float | None) -> str:
    if spread is None:
        return ""
    if spread == 0:
        return " (the seed spread is 0)"
    return f" ({gap / spread:+.1f} seed spreads)"


def corpus_parts(rows: pd.DataFrame, key: str) -> list:
    ok = rows[rows["status"] == "ok"]
    evaluated = ok[(ok["mode"] == "evaluate") & ok["bits_per_dim"].notna()] if "bits_per_dim" in ok else ok.iloc[:0]
    trained = ok[ok["mode"] == "train"]
    parts: list = []
    first = ok.iloc[0] if not ok.empty else None
    if first is not None:
        parts.append(Text(f"Corpus {first.get('corpus')}: {first.get('corpus_tokens')} tokens from "
                          f"{first.get('corpus_package')}, licence {first.get('corpus_licence')}; "
                          f"SHA-256 of the extracted tokens {first.get('corpus_sha256')}."))
    refs = trained.dropna(subset=["heldout_unigram_bits"]) if "heldout_unigram_bits" in trained else trained.iloc[:0]
    unigram = None
    if not refs.empty:
        ref = refs.iloc[0]
        unigram = float(ref["heldout_unigram_bits"])
        parts.append(Text(f"References on the held-out split: unigram entropy {unigram:.3f} bits per token "
                          f"({ref['heldout_unigram_train_bits']:.3f} under the training split's frequencies); "
                          f"bz2 -9 {ref['heldout_bz2_bits']:.3f} and xz -9e {ref['heldout_xz_bits']:.3f} bits per "
                          "byte. A model below the unigram entropy has learned context, not only frequencies."))
    spread = seed_spread(evaluated) if not evaluated.empty else None
    baseline = evaluated[evaluated["lm_setting"] == BASELINE]
    if not baseline.empty:
        seed = baseline["seed"].min()
        table = baseline[baseline["seed"] == seed].pivot_table(
            index="train_n_hashes", columns="eval_n_hashes", values="bits_per_dim", aggfunc="median")
        table = table.loc[_order(table.index), _order(table.columns)]
        shown = table.rename(index=attention_label, columns=attention_label).map(
            lambda v: f"{v:.3f}" if pd.notna(v) else None)
        shown.index.name, shown.columns.name = "trained with", "evaluated with"
        tokens = int(baseline["eval_tokens"].max())
        parts.append(Table(f"Held-out bits per dim, trained x evaluated (seed {seed})", shown,
                           note=f"{tokens} held-out tokens per cell; lower is better."))
        parts.append(Text(ordering_text(table, spread)))
    if spread is not None:
        seeds = sorted(int(seed) for seed in baseline["seed"].unique())
        parts.append(Text(f"Seed spread: full attention trained with seeds {seeds} "
                          f"differs by {spread:.4f} bits per dim; gaps below are also stated in units of it."))
    ablation = ablation_table(evaluated, spread)
    if ablation is not None:
        parts.append(Table("Figure 3's ablations: full attention, trained and evaluated", ablation, index=False,
                           note="Gap: bits per dim minus the shared-QK two-stream model of seed 0."))
    cost = cost_table(trained)
    if cost is not None:
        parts.append(Table("The cost of each training", cost, index=False))
    parts += [chart for chart in (curve_chart(trained, "step", unigram, key),
                                  curve_chart(trained, "seconds", unigram, key))
              if chart is not None]
    return parts


def ordering_text(table: pd.DataFrame, spread: float | None) -> str:
    """Whether full <= LSH-8 <= LSH-4 <= LSH-2 <= LSH-1 holds on the diagonal (trained and evaluated with
    the same attention), each step's gap given, and in seed spreads when a second seed exists."""
    diagonal = [(n, table.loc[n, n]) for n in _order(table.index) if n in table.columns and pd.notna(table.loc[n, n])]
    if len(diagonal) < 2:
        return "Too few settings trained and evaluated with the same attention for an ordering."
    steps, holds = [], True
    for (a, bits_a), (b, bits_b) in zip(diagonal, diagonal[1:]):
        gap = bits_b - bits_a
        holds &= gap >= 0
        steps.append(f"{attention_label(b)} - {attention_label(a)} = {gap:+.3f}{_in_spread(gap, spread)}")
    names = " <= ".join(attention_label(n) for n, _ in diagonal)
    verdict = "holds" if holds else "does not hold"
    return f"Ordering {names} (each trained and evaluated with its own attention) {verdict}: " + "; ".join(steps) + "."


def ablation_table(evaluated: pd.DataFrame, spread: float | None) -> pd.DataFrame | None:
    full = evaluated[(evaluated["train_n_hashes"] == 0) & (evaluated["eval_n_hashes"] == 0)]
    if full.empty or full.groupby(["lm_setting", "seed"]).ngroups < 2:
        return None
    base = full[(full["lm_setting"] == BASELINE)]
    reference = float(base[base["seed"] == base["seed"].min()]["bits_per_dim"].median()) if not base.empty else None
    out = []
    for (setting, seed), rows in full.groupby(["lm_setting", "seed"]):
        bits = float(rows["bits_per_dim"].median())
        gap = None if reference is None else bits - reference
        out.append({"setting": setting, "seed": int(seed), "bits per dim": f"{bits:.3f}",
                    "gap": "" if gap is None else f"{gap:+.3f}{_in_spread(gap, spread)}"})
    return pd.DataFrame(out)


def cost_table(trained: pd.DataFrame) -> pd.DataFrame | None:
    if trained.empty or "train_s" not in trained:
        return None
    out = []
    for row in trained.sort_values(["lm_setting", "seed", "train_n_hashes"]).to_dict("records"):
        curve = row.get("heldout_curve") or []
        out.append({"trained with": attention_label(row["train_n_hashes"]), "setting": row.get("lm_setting"),
                    "seed": _whole(row.get("seed")), "steps": _whole(row.get("train_steps")),
                    "training s": None if row.get("train_s") is None else f"{row['train_s']:.0f}",
                    "tokens/s": None if row.get("tokens_per_s") is None else f"{row['tokens_per_s']:.0f}",
                    "final held-out bits (training attention)": f"{curve[-1][1]:.3f}" if curve else None})
    return pd.DataFrame(out, dtype=object)  # a column of counts with a null stays counts


def _whole(value):
    """A count read back as a float (a column with nulls in pandas) shown as the integer it is."""
    return None if value is None or pd.isna(value) else int(value)


def curve_chart(trained: pd.DataFrame, x: str, unigram: float | None, key: str) -> Chart | None:
    """Held-out bits per dim against training step (x = "step") or training seconds (x = "seconds"), one
    line per training; the unigram entropy as a dashed line."""
    import plotly.graph_objects as go

    if trained.empty or "heldout_curve" not in trained:
        return None
    rows = trained[trained["heldout_curve"].map(lambda c: isinstance(c, list) and len(c) > 0)]
    if rows.empty:
        return None
    column = 0 if x == "step" else 2
    fig = go.Figure()
    for number, row in enumerate(rows.sort_values(["lm_setting", "seed", "train_n_hashes"]).to_dict("records")):
        points = [p for p in row["heldout_curve"] if p[column] is not None]
        label = f"{attention_label(row['train_n_hashes'])}"
        if row.get("lm_setting") != BASELINE:
            label += f", {row.get('lm_setting')}"
        if row.get("seed"):
            label += f", seed {row['seed']}"
        label = html.escape(label, quote=True)
        fig.add_trace(go.Scatter(x=[p[column] for p in points], y=[p[1] for p in points], mode="lines+markers",
                                 name=label, line={"color": COLORS[number % len(COLORS)]},
                                 hovertemplate=label + "<br>%{x:.4g}: %{y:.3f} bits<extra></extra>"))
    if unigram is not None:
        fig.add_hline(y=unigram, line={"dash": "dash", "color": "#888"}, annotation_text="unigram entropy")
    title = "training step" if x == "step" else "training seconds (held-out evaluations excluded)"
    fig.update_layout(xaxis={"title": {"text": title}}, yaxis={"title": {"text": "held-out bits per dim"}},
                      height=400, margin={"l": 70, "r": 20, "t": 30, "b": 55})
    key = f"lm-{key}-curve-{x}"
    return Chart(key, f"Held-out bits per dim against {title}",
                 "Each training's held-out bits per dim under its own attention at every curve_every steps "
                 "(fewer windows than the evaluation cases). Against seconds: who wins at equal time.", fig)
