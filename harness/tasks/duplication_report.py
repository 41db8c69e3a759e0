"""The duplication task's section of the report: Table 2 measured here beside the paper's (given by
harness.tasks.duplication, which holds PAPER_TABLE2), the training curves and accuracy against training
time."""
from __future__ import annotations

import pandas as pd

from .charts import COLORS, training_curve_chart
from .registry import Chart, Section, Table, attention_label


def report_sections(frame: pd.DataFrame, paper: dict) -> list[Section]:
    """The section "The paper's Table 2" (paper: {trained: {evaluated: accuracy %}}) when the rows hold
    evaluations; none otherwise."""
    measured = table2_frame(frame)
    if measured is None:
        return []
    parts = [Table("Measured here: duplication-task accuracy", _shaped(_paper_order(measured))),
             Table("The paper's numbers (Kitaev et al. 2020, Table 2; their hardware and training)",
                   _shaped(_paper_order(pd.DataFrame(paper).T)))]
    parts += [chart for chart in (training_curve_chart(frame, loss="loss on the scored targets (nats, solid)"),
                                  accuracy_time_chart(frame)) if chart]
    return [Section("paper", "The paper's Table 2", parts)]


def table2_frame(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Measured accuracy (%) by train x eval attention, when rows carry `train_n_hashes`,
    `eval_n_hashes` (0 = full attention) and `task_accuracy` (a fraction)."""
    needed = {"train_n_hashes", "eval_n_hashes", "task_accuracy"}
    if not needed <= set(frame.columns):
        return None
    rows = frame[frame["task_accuracy"].notna()]
    if rows.empty:
        return None
    return rows.pivot_table(index="train_n_hashes", columns="eval_n_hashes", values="task_accuracy",
                            aggfunc="median") * 100


def _shaped(table: pd.DataFrame) -> pd.DataFrame:
    table = table.rename(index=attention_label, columns=attention_label)
    table.index.name, table.columns.name = "trained with", "evaluated with"
    return table.map(lambda v: f"{v:.1f}%" if pd.notna(v) else None)


def _paper_order(table: pd.DataFrame) -> pd.DataFrame:
    """Full attention first, then LSH-8, -4, -2, -1, as the paper lays its table out."""
    def order(keys):
        return sorted(keys, key=lambda n: (n != 0, -n))
    return table.loc[order(table.index), order(table.columns)]


def accuracy_time_chart(frame: pd.DataFrame) -> Chart | None:
    """Per training setting: its training time per step against its accuracy under each evaluation."""
    import plotly.graph_objects as go

    trained = frame[(frame["mode"] == "train") & frame["train_step_s"].notna()]
    evaluated = frame[(frame["mode"] == "evaluate") & frame["task_accuracy"].notna()]
    if trained.empty or evaluated.empty:
        return None
    step_s = dict(zip(trained["train_n_hashes"], trained["train_step_s"]))
    fig = go.Figure()
    for number, (eval_hashes, rows) in enumerate(evaluated.groupby("eval_n_hashes", sort=True)):
        rows = rows[rows["train_n_hashes"].isin(step_s)]
        if rows.empty:
            continue
        name = f"evaluated with {attention_label(eval_hashes)}"
        fig.add_trace(go.Scatter(
            x=[step_s[t] for t in rows["train_n_hashes"]], y=rows["task_accuracy"].tolist(), mode="markers",
            name=name, marker={"size": 10, "color": COLORS[number % len(COLORS)]},
            customdata=[attention_label(t) for t in rows["train_n_hashes"]],
            hovertemplate=f"trained with %{{customdata}}, {name}<br>%{{x:.3g}} s a step, %{{y:.1%}}<extra></extra>"))
    settings = sorted(step_s.items(), key=lambda item: item[1])
    fig.update_layout(xaxis={"title": {"text": "training time per step (s)"}, "tickvals": [t for _, t in settings],
                             "ticktext": [f"{attention_label(n)}<br>{t:.3g} s" for n, t in settings]},
                      yaxis={"title": {"text": "task accuracy"}, "tickformat": ".0%", "range": [0, 1.02],
                             "tick0": 0, "dtick": 0.2},
                      height=400, margin={"l": 70, "r": 20, "t": 30, "b": 55})
    return Chart("task-accuracy-time", "Task accuracy against training time per step",
                 "One column of points per training setting (named under the axis), at its measured time per "
                 "training step; one colour per attention the trained weights were evaluated with.", fig)
