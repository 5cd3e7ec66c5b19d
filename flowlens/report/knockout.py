"""Report parts for row-table runs: knockout curves with bootstrap bands (Map the Flow Fig. 2/3) and pathway accuracy."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from flowlens.errors import FlowlensError
from flowlens.report.figures import PALETTE, TEMPLATE, rgba
from flowlens.report.sections import Section, render_html, who
from flowlens.store.knockout_summary import summarize_knockout
from flowlens.store.run import Run

_MARGIN = {"l": 70, "r": 30, "t": 60, "b": 40}
GREYS = ("#9aa3b5", "#c3c9d5", "#6f788c")
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


def panels_figure(summary: pd.DataFrame, columns: int = 4) -> go.Figure:
    """One small panel per blocked edge (the paper's Fig. 2/3 layout): mean % change in p(clean prediction) over
    centre layers with its 95% bootstrap band, all panels on one y scale."""
    curves = _curves(summary)
    cols = min(columns, max(1, len(curves)))
    rows = -(-len(curves) // cols)
    figure = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[plotly_text(curve) for curve, _, _ in curves],
        shared_yaxes="all",
        shared_xaxes="all",
        horizontal_spacing=0.04,
        vertical_spacing=0.5 / max(rows, 1) / 2 + 0.04,
    )
    for i, (curve, rows_, color) in enumerate(curves):
        where = {"row": i // cols + 1, "col": i % cols + 1}
        layers = rows_["layer"].to_numpy() + 1
        mean = rows_["mean_rel_pred"].to_numpy(dtype=np.float64)
        low, high = rows_["ci_low"].to_numpy(dtype=np.float64), rows_["ci_high"].to_numpy(dtype=np.float64)
        band = ~(np.isnan(low) | np.isnan(high))
        figure.add_trace(
            go.Scatter(
                x=np.concatenate([layers[band], layers[band][::-1]]),
                y=np.concatenate([high[band], low[band][::-1]]),
                mode="lines",
                fill="toself",
                fillcolor=rgba(color, 0.2),
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
            ),
            **where,
        )
        figure.add_trace(
            go.Scatter(
                x=layers,
                y=mean,
                mode="lines+markers",
                name=plotly_text(curve),
                line={"color": color},
                marker={"size": 4},
                showlegend=False,
                customdata=np.stack([low, high], axis=-1),
                hovertemplate="centre layer %{x}<br>mean %{y:.2f}%<br>95% CI [%{customdata[0]:.2f}, "
                "%{customdata[1]:.2f}]<extra>%{fullData.name}</extra>",
            ),
            **where,
        )
        figure.add_hline(y=0.0, line={"color": "#5b6475", "width": 1, "dash": "dash"}, **where)
    figure.update_layout(
        template=TEMPLATE,
        title={"text": "% change in p(clean prediction) per blocked edge (band: 95% bootstrap CI)"},
        height=60 + 210 * rows,
        margin=_MARGIN,
        font={"size": 10},
    )
    figure.update_xaxes(dtick=max(1, int(summary["layer"].max() + 1) // 8) if len(summary) else 1)
    figure.update_xaxes(title={"text": "centre layer (1-based)"}, row=rows)
    figure.update_yaxes(title={"text": "% change"}, col=1)
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
    """Accuracy, mean p_gt and mean kept edges per condition (conditions in order of appearance).

    A condition's kept fraction differs from sample to sample (each has its own number of edges), so rows
    are per condition with the mean fraction; a threshold sweep names its conditions `name@threshold`.
    """
    if "condition" not in table or "correct" not in table:
        return []
    table = table.assign(_correct=table["correct"].astype("boolean").astype("Float64"))
    out = []
    for condition, rows in table.groupby("condition", sort=False, dropna=False):
        out.append(
            {
                "condition": str(condition),
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


# ---------------------------------------------------------------------------- sections
CURVE_TABLE = """<table>
<tr><th>blocked edges</th><th>samples</th><th>clean correct</th><th>lowest mean change</th><th>at layer (1-based)</th>
<th>lowest accuracy</th><th>at layer (1-based)</th></tr>
{% for row in rows %}<tr><td class="mono">{{ row.curve }}</td><td class="num">{{ row.n }}</td>
<td class="num">{{ row.n_correct }}</td>
<td class="num">{% if row.drop is not none %}{{ "%+.1f" | format(row.drop) }}%{% endif %}</td>
<td class="num">{% if row.drop_layer is not none %}{{ row.drop_layer }}{% endif %}</td>
<td class="num">{% if row.accuracy is not none %}{{ "%.1f" | format(100 * row.accuracy) }}%{% endif %}</td>
<td class="num">{% if row.accuracy_layer is not none %}{{ row.accuracy_layer }}{% endif %}</td></tr>{% endfor %}
</table>"""

PATHWAY_TABLE = """<table style="width:auto">
<tr><th>condition</th><th>kept fraction</th><th>kept edges</th><th>n</th><th>accuracy</th><th>mean p(answer)</th></tr>
{% for row in rows %}<tr><td class="mono">{{ row.condition }}</td>
<td class="num">{% if row.kept_fraction is not none %}{{ "%.3f" | format(row.kept_fraction) }}{% endif %}</td>
<td class="num">{% if row.kept_edges is not none %}{{ "%.0f" | format(row.kept_edges) }}{% if row.total_edges is not none %}
 / {{ "%.0f" | format(row.total_edges) }}{% endif %}{% endif %}</td>
<td class="num">{{ row.n }}</td>
<td class="num">{% if row.accuracy is not none %}{{ "%.1f" | format(100 * row.accuracy) }}%{% endif %}</td>
<td class="num">{% if row.p_gt is not none %}{{ "%.3f" | format(row.p_gt) }}{% endif %}</td></tr>{% endfor %}
</table>"""


def knockout_section(run: Run) -> Section | None:
    """Knockout curves per blocked edge with 95% CI bands (Fig. 2/3), knockout accuracy and a table per curve."""
    if "knockout" not in run.row_tables:
        return None
    table = run.table("knockout")
    n = int(table["sample"].nunique())
    title = "Attention knockout"
    try:
        summary = summarize_knockout(table)
    except FlowlensError as exc:  # a malformed table should not cost the rest of the report
        return Section("knockout", title, f"The knockout table cannot be summarised: {exc}")
    clean = clean_accuracy(table)
    settings = run.config.get("settings", {})
    window = settings.get("window")
    caption = (
        f"Each point blocks the panel's attention edges (e.g. video->question: question tokens may not attend the "
        f"video) in a window of {window if window is not None else 'several'} layers ({settings.get('style', 'window')} "
        f"schedule) around the centre layer; {who(run, n)}. Panels: the change in the probability of the clean "
        "prediction, 100·(p_knockout − p_clean)/p_clean, averaged over the samples whose clean prediction was "
        "correct (as in the paper), with a 95% bootstrap confidence interval (samples resampled). Below: knockout "
        "accuracy as in the paper (a sample counts as correct when the clean and the knocked-out predictions are "
        "both right; unlabelled samples left out); dashed: the clean accuracy. x: the window's centre layer, "
        "1-based as in the paper."
    )
    figures = {
        "knockout-panels": panels_figure(summary),
        "knockout-change": change_figure(summary),
        "knockout-accuracy": accuracy_figure(summary, clean),
    }
    return Section("knockout", title, caption, figures, render_html(CURVE_TABLE, rows=curve_rows(summary)))


def pathway_figure(rows: list[dict[str, Any]], clean: float | None) -> go.Figure:
    """Accuracy of each pathway condition beside its random controls, grouped by threshold (`name@threshold`)."""
    figure = go.Figure()
    families: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        family, _, where = row["condition"].partition("@")
        label = f"threshold {where}" if where else "no threshold"
        families.setdefault(family, {})[label] = row
    labels = list(dict.fromkeys(label for family in families.values() for label in family))
    for i, (family, by_label) in enumerate(families.items()):
        kept = [by_label.get(x, {}).get("kept_fraction") for x in labels]
        figure.add_trace(
            go.Bar(
                x=[plotly_text(x) for x in labels],
                y=[100 * (by_label.get(x, {}).get("accuracy") or 0.0) for x in labels],
                name=plotly_text(family),
                marker={
                    "color": GREYS[i % len(GREYS)]
                    if family.startswith("random")
                    else PALETTE[i % len(PALETTE)]
                },
                customdata=np.array([np.nan if k is None else 100 * k for k in kept], dtype=np.float64),
                hovertemplate="%{x}<br>accuracy %{y:.1f}%<br>edges kept %{customdata:.1f}%"
                "<extra>%{fullData.name}</extra>",
            )
        )
    if clean is not None:
        figure.add_hline(
            y=100 * clean,
            line={"color": "#5b6475", "width": 1, "dash": "dash"},
            annotation={"text": f"clean {100 * clean:.1f}%"},
            annotation_position="top left",
        )
    figure.update_layout(
        template=TEMPLATE,
        barmode="group",
        title={
            "text": "Accuracy with only the pathway's edges kept, beside random blocking of as many edges"
        },
        xaxis={
            "title": {"text": "--auto threshold (% drop in p(prediction) that keeps an edge group)"},
            "type": "category",
        },
        yaxis={"title": {"text": "accuracy (%)"}, "range": [0, 100]},
        height=420,
        margin=_MARGIN,
    )
    return figure


def pathways_section(run: Run) -> Section | None:
    """Effective pathways beside their random controls: a grouped bar chart and the per-condition table."""
    if "pathways" not in run.row_tables:
        return None
    table = run.table("pathways")
    rows = pathway_rows(table)
    n = int(table["sample"].nunique())
    if not rows:
        return Section(
            "pathways", "Effective pathways", "The pathways table needs condition and correct columns."
        )
    answers = run.table("answers")
    scored = answers[answers["correct"].notna()]
    clean = float(scored["correct"].astype(bool).mean()) if len(scored) else None
    control = run.config.get("settings", {}).get("random_control", "uniform")
    caption = (
        "Accuracy when only the pathway's attention edges are kept (every other edge between the groups blocked), "
        f"beside random controls that block as many edges at random (the reported `random` control: {control}); "
        f"grey bars are random controls, dashed the clean accuracy; {who(run, n)}."
    )
    return Section(
        "pathways",
        "Effective pathways",
        caption,
        {"pathways-bars": pathway_figure(rows, clean)},
        render_html(PATHWAY_TABLE, rows=rows),
    )
