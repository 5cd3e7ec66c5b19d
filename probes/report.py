"""The report's probe section: accuracy and control accuracy per layer for each target, and the table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup

from flowlens.report.html_table import html_table
from flowlens.report.sections import Section, register_section

if TYPE_CHECKING:
    from flowlens.store.run import Run

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2")
CAPTION = (
    "Held-out accuracy of a linear probe (standardised features, logistic regression, C chosen by inner "
    "folds) at each layer, cross-validated with folds split by sample: no token of a test sample is ever "
    "in training. Dashed: the same probe on the control task (Hewitt & Liang 2019: the label distribution "
    "assigned at random per token type -- the spatial cell for token labels, the sample for sample labels); "
    "dotted: the majority-label baseline. Selectivity = accuracy - control accuracy."
)


def accuracy_figure(table: pd.DataFrame) -> go.Figure:
    """Accuracy (solid), control accuracy (dashed) and majority baseline (dotted) against layer, per target."""
    figure = go.Figure()
    curves = table.assign(kind=table["hook"].str.split(".").str[-1])
    for i, ((target, kind, group), rows) in enumerate(
        curves.groupby(["target", "kind", "group"], sort=False)
    ):
        rows = rows.sort_values("layer")
        colour = COLOURS[i % len(COLOURS)]
        name = f"{target} ({kind} @ {group})"
        lines = (("accuracy", "solid", name), ("control_accuracy", "dash", f"{name} control"))
        for column, dash, label in lines:
            figure.add_trace(
                go.Scatter(
                    x=rows["layer"],
                    y=rows[column],
                    mode="lines+markers",
                    name=label,
                    legendgroup=name,
                    line={"color": colour, "dash": dash},
                )
            )
        figure.add_trace(
            go.Scatter(
                x=rows["layer"],
                y=rows["majority"],
                mode="lines",
                name=f"{name} majority",
                legendgroup=name,
                line={"color": colour, "dash": "dot", "width": 1},
            )
        )
    figure.update_layout(
        xaxis_title="layer (0-based)",
        yaxis_title="held-out accuracy",
        yaxis_range=[0, 1.02],
        height=420,
        margin={"l": 60, "r": 20, "t": 20, "b": 50},
        legend={"font": {"size": 11}},
    )
    figure.update_xaxes(dtick=1)
    return figure


def table_html(table: pd.DataFrame) -> Markup:
    """The probes table (escaped), one row per (target, hook)."""
    columns = ["target", "layer", "hook", "group", "pool", "n_samples", "n_classes", "c", "majority"]
    columns += ["accuracy", "control_accuracy", "selectivity"]
    return html_table(table, columns, {"c": None, "selectivity": "+.3f"})


def probe_section(run: Run) -> Section | None:
    if "probes" not in run.run_tables:
        return None
    table = run.table("probes")
    if table.empty:
        return None
    return Section(
        id="probes",
        title="Linear probes",
        caption=CAPTION,
        figures={"probe-accuracy": accuracy_figure(table)},
        html=table_html(table),
    )


register_section("probes", probe_section, order=60)
