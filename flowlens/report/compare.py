"""`flowlens report A B --compare`: two runs of one analysis on shared axes, refused when their definitions differ.

What may differ is what one compares: the model (a video model against its image base model, the paper's
Fig. 2), its revision and dtype, the dataset, the number of frames, and pruning settings (clean vs pruned).
Everything else the run's `identity` holds (the analysis, the prompt template, the knockout window and
blocks, ...) defines the numbers, and must match.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from flowlens.errors import FlowlensError
from flowlens.report.figures import PALETTE, TEMPLATE, rgba
from flowlens.report.knockout import plotly_text
from flowlens.report.plain import typed
from flowlens.report.sections import Section
from flowlens.store.edges import EDGES
from flowlens.store.knockout_summary import summarize_knockout
from flowlens.store.run import Run

AXES = ("model", "revision", "dtype", "dataset")  # identity keys a comparison may vary
SETTING_AXES = ("frames", "thumbnails")  # settings a comparison may vary (plus any prune*/pruning* setting)
DASHES = ("solid", "dash")


def definition(run: Run) -> dict[str, Any]:
    """The run's identity without the comparison axes: what must be equal for two runs to share axes."""
    identity = dict(run.config.get("identity") or {})
    for key in AXES:
        identity.pop(key, None)
    settings = dict(identity.pop("settings", {}) or {})
    identity["settings"] = {
        k: v for k, v in settings.items() if k not in SETTING_AXES and not k.startswith(("prune", "pruning"))
    }
    return identity


def check_comparable(a: Run, b: Run) -> None:
    """Raise a FlowlensError naming every definition that differs between the two runs."""
    da, db = definition(a), definition(b)
    if da.get("analysis") != db.get("analysis"):
        raise FlowlensError(
            f"cannot compare a {da.get('analysis')!r} run ({a.path}) with a {db.get('analysis')!r} run ({b.path})"
        )
    if da.get("analysis") not in ("trace", "knockout"):
        raise FlowlensError(f"--compare supports trace and knockout runs, not {da.get('analysis')!r}")
    differ = [
        f"{key}: {json.dumps(va, sort_keys=True)} vs {json.dumps(vb, sort_keys=True)}"
        for key, va, vb in _differences(da, db)
    ]
    if differ:
        raise FlowlensError(
            f"refusing to compare {a.path} and {b.path}: their definitions differ ({'; '.join(differ)}); "
            f"only {', '.join((*AXES, *SETTING_AXES))} and pruning settings may differ"
        )


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_differences(va, vb, f"{prefix}{key}."))
        elif va != vb:
            out.append((f"{prefix}{key}", va, vb))
    return out


def label(run: Run) -> str:
    """A short name of a run for legends: its model, frames and file."""
    frames = run.config.get("settings", {}).get("frames")
    model = run.model_info.get("model") or run.config.get("model") or "?"
    return f"{model}, {frames} frames ({run.path.parent.name}/{run.path.name})"


def compare_sections(a: Run, b: Run) -> list[Section]:
    """The comparison's sections (after `check_comparable`): flows over layers, or knockout panels."""
    runs = [a, b]
    labels = [label(r) for r in runs]
    if labels[0] == labels[1]:
        labels = [f"A: {labels[0]}", f"B: {labels[1]}"]
    if a.config.get("identity", {}).get("analysis") == "knockout":
        return [_knockout_section(runs, labels)]
    return [_edge_section(runs, labels)]


def _edge_section(runs: list[Run], labels: list[str]) -> Section:
    data: list[dict[str, Any]] = []
    counts = []
    for r, (run, name) in enumerate(zip(runs, labels, strict=True)):
        summary = run.table("flow_summary")
        counts.append(int(summary["sample"].nunique()) if len(summary) else 0)
        stats = summary.groupby(["edge", "layer"], observed=True)["value"].agg(["mean", "std"]).reset_index()
        for i, edge in enumerate(e for e in EDGES if e in set(stats["edge"])):
            rows = stats[stats["edge"] == edge].sort_values("layer")
            layers = rows["layer"].to_numpy() + 1
            mean, std = rows["mean"].to_numpy(), rows["std"].fillna(0.0).to_numpy()
            color = PALETTE[i % len(PALETTE)]
            visible = True if edge in ("video->question", "video->last", "question->last") else "legendonly"
            group = f"{edge} ({name})"
            data.append(
                {
                    "type": "scatter",
                    "x": typed(np.concatenate([layers, layers[::-1]]), "i4"),
                    "y": typed(np.concatenate([mean + std, (mean - std)[::-1]]), "f8"),
                    "mode": "lines",
                    "fill": "toself",
                    "fillcolor": rgba(color, 0.12),
                    "line": {"width": 0},
                    "hoverinfo": "skip",
                    "showlegend": False,
                    "legendgroup": plotly_text(group),
                    "visible": visible,
                }
            )
            data.append(
                {
                    "type": "scatter",
                    "x": typed(layers, "i4"),
                    "y": typed(mean, "f8"),
                    "mode": "lines+markers",
                    "name": plotly_text(group),
                    "legendgroup": plotly_text(group),
                    "line": {"color": color, "dash": DASHES[r]},
                    "visible": visible,
                }
            )
    figure = {
        "data": data,
        "layout": {
            "template": TEMPLATE,
            "title": {"text": "Attention flow over layers, both runs (solid: A, dashed: B; band ±1 SD)"},
            "xaxis": {"title": {"text": "layer (1-based, as in the paper)"}, "dtick": 1},
            "yaxis": {"title": {"text": "attention mass"}, "rangemode": "tozero"},
            "height": 520,
            "legend": {"title": {"text": "edge (run)"}},
        },
    }
    caption = (
        f"A = {labels[0]} ({counts[0]} samples), B = {labels[1]} ({counts[1]} samples). Attention mass along each "
        "edge per layer (mean over heads and samples, the trace's definition), both runs on one layer axis; "
        "click the legend for the other edges."
    )
    return Section("flow", "Flow over layers: A against B", caption, {"compare-edges": figure})


def _knockout_section(runs: list[Run], labels: list[str]) -> Section:
    from plotly.subplots import make_subplots

    summaries = [summarize_knockout(run.table("knockout")) for run in runs]
    curves = list(dict.fromkeys(c for s in summaries for c in s["curve"].astype(str)))
    cols = min(4, max(1, len(curves)))
    rows = -(-len(curves) // cols)
    figure = make_subplots(
        rows=rows, cols=cols, subplot_titles=[plotly_text(c) for c in curves], shared_yaxes="all"
    )
    for r, (summary, name) in enumerate(zip(summaries, labels, strict=True)):
        color = PALETTE[r]
        for i, curve in enumerate(curves):
            part = summary[summary["curve"].astype(str) == curve].sort_values("layer")
            if part.empty:
                continue
            where = {"row": i // cols + 1, "col": i % cols + 1}
            x = part["layer"].to_numpy() + 1
            low, high = part["ci_low"].to_numpy(float), part["ci_high"].to_numpy(float)
            ok = ~(np.isnan(low) | np.isnan(high))
            figure.add_scatter(
                x=np.concatenate([x[ok], x[ok][::-1]]),
                y=np.concatenate([high[ok], low[ok][::-1]]),
                mode="lines",
                fill="toself",
                fillcolor=rgba(color, 0.18),
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                **where,
            )
            figure.add_scatter(
                x=x,
                y=part["mean_rel_pred"].to_numpy(float),
                mode="lines+markers",
                name=plotly_text(name),
                legendgroup=plotly_text(name),
                showlegend=i == 0,
                line={"color": color},
                marker={"size": 4},
                **where,
            )
    figure.update_layout(
        template=TEMPLATE,
        title={
            "text": "% change in p(clean prediction) per blocked edge, both runs (band: 95% bootstrap CI)"
        },
        height=80 + 220 * rows,
        font={"size": 10},
        legend={"orientation": "h", "y": -0.08},
    )
    figure.update_xaxes(title={"text": "centre layer (1-based)"}, row=rows)
    n = [int(run.table("knockout")["sample"].nunique()) for run in runs]
    caption = (
        f"A = {labels[0]} ({n[0]} samples), B = {labels[1]} ({n[1]} samples). Each panel blocks one set of "
        "attention edges in a window around the centre layer (same window and blocks in both runs); the change "
        "in p(clean prediction) over the baseline-correct samples as in the paper, 95% bootstrap bands."
    )
    return Section("knockout", "Knockout: A against B", caption, {"compare-knockout": figure})
