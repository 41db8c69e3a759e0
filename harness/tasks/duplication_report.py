"""The duplication task's section of the report: Table 2 measured here, one table per full attention
(a dense backend), beside the paper's Table 2 and the fast.ai reproduction's (given by
harness.tasks.duplication), the chance level, the training curves and accuracy against training time.

A row's full attention is its `full_attention`; an LSH-trained model evaluated with LSH uses none (null):
that cell is the same model and the same evaluation in every table. Rows from before the key existed
that use full attention ran it through the registry's reference backend. Which convention a full
attention follows is read from what its backend's registration declares (BackendInfo.conventions).
"""
from __future__ import annotations

import pandas as pd

from .charts import COLORS, training_curve_chart
from .registry import Chart, Section, Table, Text, attention_label

# Where each shared-QK convention of full attention comes from, by (unit-length keys, own key masked).
PAPER_TEXT, AUTHORS_CODE = (True, True), (False, False)
SOURCES = {
    PAPER_TEXT: "The paper's text (section 3, shared-QK Transformer): keys normalised to unit length, a token "
                "never attends to itself unless nothing else is visible.",
    AUTHORS_CODE: "The authors' code: configs/transformer_copy.gin (trax 8e2c6eb1 and 06e0f087; tensor2tensor "
                  "7a7c067e) sets TransformerLM.share_qk = True but leaves MemoryEfficientCausalAttention.share_qk "
                  "unset (default False), so CausalAttention's cb.Dup() feeds the query as the key: softmax(q.q / "
                  "sqrt(d)), keys not normalised, no self mask.",
}
PAPER_NOTE = ("Kitaev et al. 2020, Table 2, as printed (read from the crop of it in arampacha/reformer_fastai, "
              "docs/images/paper_table2.png at 72ee639). Its full attention is the authors' code's: keys not "
              "normalised, no self mask (configs/transformer_copy.gin, see above). Their data draw w from 1 .. 126 "
              "(trax/inputs.py, randint(1, vocab - 1)): chance is 1/126 = 0.8%, the LSH rows' full column.")
FASTAI_NOTE = ("arampacha/reformer_fastai, nbs/10c_experiment.synthetic-task-analysis.ipynb: a reproduction that "
               "followed the paper's text; its full attention (reformer_fastai/attention.py) normalises the keys "
               "and masks a position's own key, and scales the scores by 1/sqrt(d).")


def report_sections(frame: pd.DataFrame, paper: dict, fastai: dict | None = None) -> list[Section]:
    """The section "The paper's Table 2" (paper, fastai: {trained: {evaluated: accuracy %}}) when the rows
    hold evaluations; none otherwise."""
    measured = {full: table for full in full_attentions(frame)
                if (table := table2_frame(frame, full)) is not None}
    if not measured:
        return []
    parts: list = [Text(_intro(frame, list(measured)))]
    for full, table in measured.items():
        short, source = convention(full)
        follows = {SOURCES[PAPER_TEXT]: ", the paper's text", SOURCES[AUTHORS_CODE]: ", the authors' code"}
        parts.append(Table(f"Measured here: duplication-task accuracy, full attention = {full} ({short})"
                           f"{follows.get(source, '')}",
                           _shaped(_paper_order(table), full), note=source))
    parts.append(Table("The paper's numbers (Kitaev et al. 2020, Table 2; their hardware and training)",
                       _shaped(_paper_order(pd.DataFrame(paper).T), "authors' code", "{:g}%"), note=PAPER_NOTE))
    if fastai:
        parts.append(Table("The fast.ai reproduction's numbers (arampacha/reformer_fastai)",
                           _shaped(_paper_order(pd.DataFrame(fastai).T), "paper's text", "{:g}%"),
                           note=FASTAI_NOTE))
    parts += [chart for chart in (training_curve_chart(frame, loss="loss on the scored targets (nats, solid)",
                                                       trained=_trained_with),
                                  accuracy_time_chart(frame)) if chart]
    return [Section("paper", "The paper's Table 2", parts)]


def convention(full: str) -> tuple[str, str]:
    """(a short label, where it comes from) of a full attention backend, from the conventions its
    registration declares (unit_keys, masks_self, scaled: impls.BackendInfo.conventions); its registry
    description where it declares none."""
    import impls

    try:
        info = impls.backend_info(full)
    except (ValueError, ImportError):
        return "a dense backend", f"Full attention through the {full} backend."
    declared = [info.conventions.get(key) for key in ("unit_keys", "masks_self", "scaled")]
    if None in declared:
        description = info.description
        return description or "a dense backend", f"Full attention through the {full} backend: {description}."
    unit_keys, masks_self, scaled = declared
    short = ", ".join(["scores / sqrt(d)" if scaled else "scores unscaled",
                       "unit-length keys" if unit_keys else "keys not normalised",
                       "own key masked" if masks_self else "own key visible"])
    return short, SOURCES.get((unit_keys, masks_self), f"Full attention through the {full} backend.")


def _intro(frame: pd.DataFrame, fulls: list[str]) -> str:
    chance = _chance(frame)
    return ("Accuracy on the second copy of 0 w 0 w by the attention a 1-layer model was trained with (rows) "
            "and evaluated with (columns). Which function \"full attention\" is decides the table: "
            + "; ".join(f"{full}: {convention(full)[0]}" for full in fulls)
            + ". An LSH-trained model evaluated with LSH is the same cell in every measured table."
            + (f" Chance (a uniform guess among the symbols of w): {chance}." if chance else ""))


def _chance(frame: pd.DataFrame) -> str | None:
    """The chance level the evaluations report (chance_accuracy), as "1/126 = 0.79%"; None if none does."""
    if "chance_accuracy" not in frame.columns:
        return None
    values = frame["chance_accuracy"].dropna().unique()
    if len(values) == 0:
        return None
    return ", ".join(f"1/{round(1 / v)} = {v * 100:.2f}%" for v in sorted(values))


def row_full_attention(frame: pd.DataFrame) -> pd.Series:
    """Each row's full attention: its full_attention; the reference backend for a row that uses full attention
    without saying which (written before the key existed); None for an LSH-only row."""
    uses_full = (frame["train_n_hashes"] == 0) | ((frame["mode"] == "evaluate") & (frame["eval_n_hashes"] == 0))
    named = frame["full_attention"] if "full_attention" in frame.columns else pd.Series(None, index=frame.index)
    named = named.astype(object).where(named.notna(), None)
    import impls

    return named.where(~uses_full | named.notna(), impls.reference_backend()).where(uses_full, None)


def full_attentions(frame: pd.DataFrame) -> list[str]:
    """The full attentions the rows ran, in the backend registry's order (others after, by name)."""
    if not {"train_n_hashes", "eval_n_hashes", "mode"} <= set(frame.columns):
        return []
    found = {full for full in row_full_attention(frame) if full is not None}
    import impls

    order = impls.list_backends("dense")
    return sorted(found, key=lambda full: (order.index(full) if full in order else len(order), full))


def table2_frame(frame: pd.DataFrame, full: str | None = None) -> pd.DataFrame | None:
    """Measured accuracy (%) by train x eval attention under full attention `full`, when rows carry
    `train_n_hashes`, `eval_n_hashes` (0 = full attention) and `task_accuracy` (a fraction): the rows of
    that full attention (None: the registry's reference backend) and the LSH-only rows every table shares."""
    needed = {"train_n_hashes", "eval_n_hashes", "task_accuracy", "mode"}
    if not needed <= set(frame.columns):
        return None
    import impls

    full = full or impls.reference_backend()
    fulls = row_full_attention(frame)
    rows = frame[frame["task_accuracy"].notna() & (fulls.isna() | (fulls == full))]
    if rows.empty or not (fulls[rows.index] == full).any():
        return None
    return rows.pivot_table(index="train_n_hashes", columns="eval_n_hashes", values="task_accuracy",
                            aggfunc="median") * 100


def _shaped(table: pd.DataFrame, full: str, fmt: str = "{:.1f}%") -> pd.DataFrame:
    """Labels and percentages (fmt: measured to a tenth, published numbers as printed); the full-attention
    column says whose full attention it is."""
    table = table.rename(index=attention_label,
                         columns=lambda n: f"full attention ({full})" if not n else attention_label(n))
    table.index.name, table.columns.name = "trained with", "evaluated with"
    return table.map(lambda v: fmt.format(v) if pd.notna(v) else None)


def _paper_order(table: pd.DataFrame) -> pd.DataFrame:
    """Full attention first, then LSH-8, -4, -2, -1, as the paper lays its table out."""
    def order(keys):
        return sorted(keys, key=lambda n: (n != 0, -n))
    return table.loc[order(table.index), order(table.columns)]


def _setting(n_hashes, full) -> str:
    """An attention setting's name: LSH-n, or full attention with its backend."""
    return f"full attention ({full})" if not n_hashes else attention_label(n_hashes)


def _trained_with(row: dict) -> str:
    import impls

    full = row.get("full_attention")
    return _setting(row["train_n_hashes"], full if isinstance(full, str) else impls.reference_backend())


def accuracy_time_chart(frame: pd.DataFrame) -> Chart | None:
    """Per training setting: its training time per step against its accuracy under each evaluation."""
    import plotly.graph_objects as go

    frame = frame.assign(_full=row_full_attention(frame))
    trained = frame[(frame["mode"] == "train") & frame["train_step_s"].notna()]
    evaluated = frame[(frame["mode"] == "evaluate") & frame["task_accuracy"].notna()]
    if trained.empty or evaluated.empty:
        return None
    # A training setting is its hash rounds and, for full attention, its backend; an LSH training is
    # shared by every full attention.
    step_s = {_setting(n, full): t for n, full, t in zip(trained["train_n_hashes"], trained["_full"],
                                                           trained["train_step_s"])}
    train_setting = [_setting(n, full) for n, full in zip(evaluated["train_n_hashes"], evaluated["_full"])]
    eval_setting = [_setting(n, full) for n, full in zip(evaluated["eval_n_hashes"], evaluated["_full"])]
    evaluated = evaluated.assign(_trained=train_setting, _evaluated=eval_setting)
    evaluated = evaluated[evaluated["_trained"].isin(step_s)]
    order = sorted(set(eval_setting), key=lambda s: (not s.startswith("full"), s))
    fig = go.Figure()
    for number, name in enumerate(order):
        rows = evaluated[evaluated["_evaluated"] == name]
        if rows.empty:
            continue
        label = f"evaluated with {name}"
        fig.add_trace(go.Scatter(
            x=[step_s[t] for t in rows["_trained"]], y=rows["task_accuracy"].tolist(), mode="markers",
            name=label, marker={"size": 10, "color": COLORS[number % len(COLORS)]},
            customdata=rows["_trained"].tolist(),
            hovertemplate=f"trained with %{{customdata}}, {label}<br>%{{x:.3g}} s a step, %{{y:.1%}}<extra></extra>"))
    settings = sorted(step_s.items(), key=lambda item: item[1])
    fig.update_layout(xaxis={"title": {"text": "training time per step (s)"}, "tickvals": [t for _, t in settings],
                             "ticktext": [f"{n}<br>{t:.3g} s" for n, t in settings]},
                      yaxis={"title": {"text": "task accuracy"}, "tickformat": ".0%", "range": [0, 1.02],
                             "tick0": 0, "dtick": 0.2},
                      height=400, margin={"l": 70, "r": 20, "t": 30, "b": 55})
    return Chart("task-accuracy-time", "Task accuracy against training time per step",
                 "One column of points per training setting (named under the axis), at its measured time per "
                 "training step; one colour per attention the trained weights were evaluated with.", fig)
