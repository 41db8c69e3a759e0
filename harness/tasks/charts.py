"""Charts any trained task's report section can show, from its rows (a pandas DataFrame): the training
curves. They are returned as harness.tasks.Chart with a plotly figure; the report embeds them.

Strings from a results file go through html.escape: plotly renders a subset of HTML in names and titles.
"""
from __future__ import annotations

import html
from collections.abc import Callable

from .registry import Chart, attention_label

COLORS = ("#3182bd", "#e6550d", "#31a354", "#756bb1", "#8c564b", "#d62728", "#17becf", "#bcbd22")


def training_curve_chart(frame, key: str = "training-curves", loss: str = "loss (nats, solid)",
                         accuracy: str = "accuracy (dotted)",
                         trained: Callable[[dict], str] | None = None) -> Chart | None:
    """Loss (solid, left axis) and accuracy (dotted, right axis) against step, one colour per training
    (rows of mode "train" with a train_curve of [step, loss, accuracy]). trained(row): how a training is
    named (by default its attention by train_n_hashes)."""
    import plotly.graph_objects as go

    rows = frame[(frame["mode"] == "train") & frame["train_curve"].map(lambda c: isinstance(c, list) and len(c) > 0)]
    if rows.empty:
        return None
    fig = go.Figure()
    for number, row in enumerate(rows.sort_values("train_n_hashes").to_dict("records")):
        curve = row["train_curve"]
        setting = trained(row) if trained else attention_label(row["train_n_hashes"])
        label = html.escape(f"{row['task']} trained with {setting}", quote=True)
        color = COLORS[number % len(COLORS)]
        steps = [point[0] for point in curve]
        fig.add_trace(go.Scatter(x=steps, y=[point[1] for point in curve], mode="lines", name=label,
                                 legendgroup=label, line={"color": color},
                                 hovertemplate=label + "<br>step %{x}: loss %{y:.3f}<extra></extra>"))
        fig.add_trace(go.Scatter(x=steps, y=[point[2] for point in curve], mode="lines", yaxis="y2",
                                 name=label + " (accuracy)", legendgroup=label, showlegend=False,
                                 line={"color": color, "dash": "dot"},
                                 hovertemplate=label + "<br>step %{x}: accuracy %{y:.1%}<extra></extra>"))
    fig.update_layout(xaxis={"title": {"text": "training step"}},
                      yaxis={"title": {"text": loss}, "rangemode": "tozero"},
                      yaxis2={"title": {"text": accuracy}, "overlaying": "y", "side": "right",
                              "range": [0, 1.02], "tick0": 0, "dtick": 0.2, "tickformat": ".0%", "showgrid": False},
                      legend={"x": 1.08}, height=420, margin={"l": 70, "r": 20, "t": 30, "b": 55})
    return Chart(key, "Training curves",
                 "Loss and accuracy of the training batch at each logged step (fresh data every step, so each "
                 "point is held out for the weights before its step).", fig)
