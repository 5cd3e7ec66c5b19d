"""Report section of a prune run: accuracy vs budget per scorer, with the controls, and the pruning table."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup

from flowlens.report.figures import PALETTE, TEMPLATE
from flowlens.report.html_table import html_table
from flowlens.report.knockout import plotly_text
from flowlens.report.sections import Section, register_section
from flowlens.store.run import Run

CAPTION = (
    "Accuracy (vocabulary-wide argmax at `last`) against the budget (the kept share or count of video tokens), "
    "one line per scorer (and debias step), beside the controls: random scores (seeds pooled), a uniform "
    "grid, no video tokens from layer K (floor, dotted) and every token (ceiling: the unpruned model, dashed). "
    "One panel per (policy, layer K, mode, position ids). AUC: mean accuracy over the budget range."
)
GROUP = ["policy", "layer", "mode", "position_ids"]
FLOOR_AND_CEILING = ("no_video", "all_tokens")
COLUMNS = ["curve", "policy", "budget", "layer", "mode", "position_ids", "n", "kept_frac", "accuracy"]
COLUMNS += [
    "relative_accuracy",
    "agreement",
    "kl",
    "delta_gold_logprob",
    "auc",
    "flops_ratio_c2",
    "flops_ratio_c3",
]


def budget_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """Accuracy vs budget for one panel; floor and ceiling as horizontal lines."""
    figure = go.Figure()
    curves = table[~table["role"].isin(FLOOR_AND_CEILING)]
    for i, (curve, rows) in enumerate(curves.groupby("curve", sort=False)):
        rows = rows.sort_values("budget")
        dash = "dot" if curve in ("random", "uniform_grid") else "solid"
        figure.add_trace(
            go.Scatter(
                x=rows["budget"],
                y=rows["accuracy"],
                mode="lines+markers",
                name=plotly_text(str(curve)),
                line={"color": PALETTE[i % len(PALETTE)], "dash": dash},
            )
        )
    for role, dash, where in zip(
        FLOOR_AND_CEILING, ("dot", "dash"), ("bottom right", "top right"), strict=True
    ):
        found = table[table["role"] == role]
        if len(found):
            figure.add_hline(
                y=float(found["accuracy"].iloc[0]),
                line={"color": "#5b6475", "dash": dash, "width": 1},
                annotation_text=role,
                annotation_position=where,  # apart when floor and ceiling coincide
            )
    figure.update_layout(
        template=TEMPLATE,
        title={"text": plotly_text(title)},
        xaxis={"title": {"text": "budget"}},
        yaxis={"title": {"text": "accuracy"}, "range": [0, 1.02]},
        height=420,
    )
    return figure


def table_html(table: pd.DataFrame) -> Markup:
    return html_table(table, [c for c in COLUMNS if c in table])


def prune_section(run: Run) -> Section | None:
    if "prune" not in run.row_tables:
        return None
    table = run.table("prune_summary")
    if table.empty:
        return None
    figures = {}
    bounds = table["role"].isin(FLOOR_AND_CEILING)  # policy "none": drawn in every panel of their (K, mode)
    for i, (key, panel) in enumerate(table[~bounds].groupby(GROUP, sort=False, dropna=False)):
        policy, layer, mode, positions = key
        same = (table["layer"] == layer) & (table["mode"] == mode) & (table["position_ids"] == positions)
        title = f"{policy}, K={layer}, {mode}" + (f", position ids {positions}" if mode == "drop" else "")
        figures[f"prune-budget-{i}"] = budget_figure(pd.concat([panel, table[bounds & same]]), title)
    return Section("prune", "Token pruning: accuracy vs budget", CAPTION, figures, table_html(table))


register_section("prune", prune_section, order=70)
