"""Report parts for row-table runs: knockout curves with bootstrap bands (Map the Flow Fig. 2/3) and pathway accuracy."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from flowlens.report.figures import PALETTE, TEMPLATE, rgba

MAX_FRACTIONS = (
    12  # more distinct kept fractions than this: one pathways row per condition, fraction averaged
)
_MARGIN = {"l": 70, "r": 30, "t": 60, "b": 40}
LAYER_AXIS = "centre layer l+1 of the knocked-out window (1-based, as in the paper)"


def change_figure(summary: pd.DataFrame) -> go.Figure:
    """Mean % change in p(clean prediction) vs centre layer, one line per curve, its bootstrap CI as a band."""
    figure = go.Figure()
    for curve, rows, color in _curves(summary):
        layers = rows["layer"].to_numpy() + 1  # 1-based, as the paper's x-axis
        mean = rows["mean_rel_pred"].to_numpy(dtype=np.float64)
        low, high = rows["ci_low"].to_numpy(dtype=np.float64), rows["ci_high"].to_numpy(dtype=np.float64)
        band = ~(np.isnan(low) | np.isnan(high))
        figure.add_trace(
            go.Scatter(
                x=np.concatenate([layers[band], layers[band][::-1]]),
                y=np.concatenate([high[band], low[band][::-1]]),
                mode="lines",
                fill="toself",
                fillcolor=rgba(color, 0.15),
                line={"width": 0},
                hoverinfo="skip",
                legendgroup=plotly_text(curve),
                showlegend=False,
            )
        )
        figure.add_trace(
            go.Scatter(
                x=layers,
                y=mean,
                mode="lines+markers",
                name=plotly_text(curve),
                line={"color": color},
                legendgroup=plotly_text(curve),
                customdata=np.stack([low, high, rows["n_correct"].to_numpy(dtype=np.float64)], axis=-1),
                hovertemplate="centre layer %{x}<br>mean %{y:.2f}%<br>95% CI [%{customdata[0]:.2f}, "
                "%{customdata[1]:.2f}]<br>n %{customdata[2]}<extra>%{fullData.name}</extra>",
            )
        )
    figure.add_hline(y=0.0, line={"color": "#5b6475", "width": 1, "dash": "dash"})
    figure.update_layout(
        template=TEMPLATE,
        title={"text": "Change in the probability of the clean prediction (band: 95% bootstrap CI)"},
        xaxis={"title": {"text": LAYER_AXIS}, "dtick": 1},
        yaxis={"title": {"text": "% change in p(clean prediction)"}},
        height=480,
        margin=_MARGIN,
        legend={"title": {"text": "blocked edges (click to show/hide)"}},
    )
    return figure


def accuracy_figure(summary: pd.DataFrame, clean_accuracy: float | None) -> go.Figure:
    """Knockout accuracy (%) vs centre layer, one line per curve, the clean accuracy as a dashed line."""
    figure = go.Figure()
    for curve, rows, color in _curves(summary):
        figure.add_trace(
            go.Scatter(
                x=rows["layer"].to_numpy() + 1,
                y=100 * rows["knockout_accuracy"].to_numpy(dtype=np.float64),
                mode="lines+markers",
                name=plotly_text(curve),
                line={"color": color},
                customdata=rows["n"].to_numpy(dtype=np.float64),
                hovertemplate="centre layer %{x}<br>accuracy %{y:.1f}%<br>n %{customdata}"
                "<extra>%{fullData.name}</extra>",
            )
        )
    if clean_accuracy is not None:
        figure.add_hline(
            y=100 * clean_accuracy,
            line={"color": "#5b6475", "width": 1, "dash": "dash"},
            annotation={"text": f"clean {100 * clean_accuracy:.1f}%", "xanchor": "left"},
            annotation_position="top left",
        )
    figure.update_layout(
        template=TEMPLATE,
        title={"text": "Knockout accuracy (as in the paper: baseline-wrong samples count as wrong)"},
        xaxis={"title": {"text": LAYER_AXIS}, "dtick": 1},
        yaxis={"title": {"text": "accuracy (%)"}, "range": [0, 100]},
        height=420,
        margin=_MARGIN,
        legend={"title": {"text": "blocked edges"}},
    )
    return figure


def clean_accuracy(table: pd.DataFrame) -> float | None:
    """Share of the knockout table's samples whose clean prediction was correct (`base_correct`)."""
    per_sample = table.drop_duplicates("sample")["base_correct"].astype("boolean").fillna(False)
    return float(per_sample.mean()) if len(per_sample) else None


def curve_rows(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """Per curve: samples, baseline-correct samples, the lowest mean change and the lowest accuracy, with their
    centre layers (1-based, as the figures)."""
    out = []
    for curve, rows, _ in _curves(summary):
        change = rows.dropna(subset=["mean_rel_pred"])
        accuracy = rows.dropna(subset=["knockout_accuracy"])
        drop = change.loc[change["mean_rel_pred"].idxmin()] if len(change) else None
        worst = accuracy.loc[accuracy["knockout_accuracy"].idxmin()] if len(accuracy) else None
        out.append(
            {
                "curve": curve,
                "n": int(rows["n"].max()),
                "n_correct": int(rows["n_correct"].max()),
                "drop": None if drop is None else float(drop["mean_rel_pred"]),
                "drop_layer": None if drop is None else int(drop["layer"]) + 1,  # 1-based, as the figures
                "accuracy": None if worst is None else float(worst["knockout_accuracy"]),
                "accuracy_layer": None if worst is None else int(worst["layer"]) + 1,
            }
        )
    return out


def pathway_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Accuracy (and mean p_gt, kept edges) per condition and kept fraction, conditions in order of appearance."""
    if "condition" not in table or "correct" not in table:
        return []
    table = table.assign(_correct=table["correct"].astype("boolean").astype("Float64"))
    by = ["condition"]
    if "kept_fraction" in table and table["kept_fraction"].round(6).nunique() <= MAX_FRACTIONS:
        table = table.assign(_fraction=table["kept_fraction"].round(6))
        by.append("_fraction")
    out = []
    for _, rows in table.groupby(by, sort=False, dropna=False):
        out.append(
            {
                "condition": str(rows["condition"].iloc[0]),
                "kept_fraction": _mean(rows, "kept_fraction"),
                "kept_edges": _mean(rows, "kept_edges"),
                "total_edges": _mean(rows, "total_edges"),
                "n": len(rows),
                "accuracy": _mean(rows, "_correct"),
                "p_gt": _mean(rows, "p_gt"),
            }
        )
    return out


def plotly_text(text: str) -> str:
    """`text` with <, > and & as entities, so plotly shows user labels literally instead of as its HTML subset."""
    return html.escape(text, quote=False)


def _curves(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    """(curve, its rows by layer, colour) in the summary's curve order."""
    curves = list(pd.unique(summary["curve"]))
    return [
        (str(curve), summary[summary["curve"] == curve].sort_values("layer"), PALETTE[i % len(PALETTE)])
        for i, curve in enumerate(curves)
    ]


def _mean(rows: pd.DataFrame, column: str) -> float | None:
    """Mean of a column over the rows (missing values skipped), or None if the column is absent or empty."""
    if column not in rows:
        return None
    value = pd.to_numeric(rows[column], errors="coerce").astype(np.float64).mean()
    return None if pd.isna(value) else float(value)
