"""Plotly figures of a run for the HTML report: frame x frame flow per layer, flow over layers."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from flowlens.report.plain import typed
from flowlens.store.edges import EDGES
from flowlens.store.run import Run

SHOWN_EDGES = ("video->question", "video->last", "question->last")  # the others start hidden in the legend
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
TEMPLATE = "plotly_white"


@dataclass
class FrameFlowMean:
    """Frame x frame flow per layer, mean over heads and over the samples that share the most common shape."""

    values: np.ndarray  # (L, F, F) float64: [l, target frame, source frame]
    n_used: int
    n_samples: int
    heads: np.ndarray | None = None  # (L, H, F, F) float64: the same per head (mean over samples only)


def mean_frame_flow(run: Run) -> FrameFlowMean | None:
    """Mean `frame_flow` over heads and traced samples; samples of a rarer (layers, frames) shape are left out."""
    shapes = {sample: (run.layout(sample).n_layers, run.layout(sample).n_frames) for sample in run.traced}
    counts = Counter(shape for shape in shapes.values() if shape[1] > 0)
    if not counts:
        return None
    shape = counts.most_common(1)[0][0]
    used = [sample for sample, s in shapes.items() if s == shape]
    heads: np.ndarray | None = None
    for sample in used:
        flow = run.array(sample, "frame_flow").astype(np.float64)
        heads = flow if heads is None else heads + flow
    heads = heads / len(used)
    return FrameFlowMean(heads.mean(axis=1), len(used), len(run.traced), heads)


def head_figure(mean: FrameFlowMean, columns: int = 8) -> dict[str, Any]:
    """Per-head small multiples of the frame x frame flow (mean over samples), a slider over layers."""
    heads = mean.heads
    n_layers, n_heads, n_frames = heads.shape[0], heads.shape[1], heads.shape[2]
    cols = min(columns, n_heads)
    rows = -(-n_heads // cols)
    gap = 0.01
    width, height = (1 - gap * (cols - 1)) / cols, (1 - 0.04 * (rows - 1)) / rows
    data, axes, notes = [], {}, []
    for h in range(n_heads):
        r, c = divmod(h, cols)
        n = h + 1
        x_name, y_name = ("x", "y") if n == 1 else (f"x{n}", f"y{n}")
        left, top = c * (width + gap), 1 - r * (height + 0.04)
        data.append(
            {
                "type": "heatmap",
                "z": typed(heads[0, h]),
                "coloraxis": "coloraxis",
                "xaxis": x_name,
                "yaxis": y_name,
                "hovertemplate": f"head {h}<br>target frame %{{y}}<br>source frame %{{x}}<br>flow %{{z:.4f}}"
                "<extra></extra>",
            }
        )
        bare = {"showticklabels": False, "ticks": "", "showgrid": False, "zeroline": False}
        axes[x_name.replace("x", "xaxis", 1)] = {"domain": [left, left + width], "anchor": y_name, **bare}
        axes[y_name.replace("y", "yaxis", 1)] = {
            "domain": [top - height, top],
            "anchor": x_name,
            "autorange": "reversed",
            "scaleanchor": x_name,
            **bare,
        }
        notes.append(
            {
                "text": f"head {h}",
                "x": left + width / 2,
                "y": top,
                "xref": "paper",
                "yref": "paper",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 9},
            }
        )
    steps = [
        {
            "method": "update",
            "label": str(layer + 1),
            "args": [{"z": [typed(heads[layer, h]) for h in range(n_heads)]}, {}, list(range(n_heads))],
        }
        for layer in range(n_layers)
    ]
    return {
        "data": data,
        "layout": {
            "template": TEMPLATE,
            "title": {"text": f"Frame × frame flow per head ({n_frames} frame groups; mean over samples)"},
            "coloraxis": {"colorscale": "Viridis", "cmin": 0.0, "cmax": float(heads.max()) or 1.0},
            "sliders": [
                {
                    "active": 0,
                    "currentvalue": {"prefix": "layer (1-based) "},
                    "pad": {"t": 30},
                    "steps": steps,
                }
            ],
            "annotations": notes,
            "height": 140 + int(1000 / cols * rows),
            "margin": {"l": 20, "r": 20, "t": 60, "b": 20},
            **axes,
        },
    }


def frame_flow_figure(mean: FrameFlowMean, what: str = "mean over heads and samples") -> dict[str, Any]:
    """Heatmap of target frame (rows) x source frame (columns) with a slider over layers, one colour scale.

    A plain figure dict (`flowlens.report.plain`): every per-sample page builds one.
    """
    values = mean.values
    n_layers, n_frames = values.shape[0], values.shape[1]
    labels = [str(f) for f in range(n_frames)]
    steps = [
        {
            "method": "update",
            "label": str(layer + 1),
            "args": [{"z": [typed(values[layer], "f8")]}, {"title.text": _frame_title(layer, what)}],
        }
        for layer in range(n_layers)
    ]
    heatmap = {
        "type": "heatmap",
        "z": typed(values[0], "f8"),
        "x": labels,
        "y": labels,
        "zmin": 0.0,
        "zmax": float(values.max()) or 1.0,
        "colorscale": "Viridis",
        "colorbar": {"title": {"text": "flow"}},
        "hovertemplate": "target frame %{y}<br>source frame %{x}<br>flow %{z:.4f}<extra></extra>",
    }
    layout = {
        "template": TEMPLATE,
        "title": {"text": _frame_title(0, what)},
        "xaxis": {"title": {"text": "source frame (key)"}, "type": "category", "constrain": "domain"},
        "yaxis": {
            "title": {"text": "target frame (query)"},
            "type": "category",
            "autorange": "reversed",
            "scaleanchor": "x",
        },
        "sliders": [
            {"active": 0, "currentvalue": {"prefix": "layer (1-based) "}, "pad": {"t": 40}, "steps": steps}
        ],
        "height": 620,
        "margin": {"l": 70, "r": 30, "t": 60, "b": 40},
    }
    return {"data": [heatmap], "layout": layout}


def edge_figure(summary: pd.DataFrame, title: str | None = None) -> dict[str, Any]:
    """Mean flow over layers per summary edge, with a band of one standard deviation across samples.

    A plain figure dict (`flowlens.report.plain`): every per-sample page builds one.
    """
    data: list[dict[str, Any]] = []
    stats = (
        summary.groupby(["edge", "layer"], observed=True)["value"].agg(["mean", "std", "count"]).reset_index()
    )
    present = set(stats["edge"])
    for i, edge in enumerate(e for e in EDGES if e in present):
        rows = stats[stats["edge"] == edge].sort_values("layer")
        layers = rows["layer"].to_numpy() + 1  # 1-based, as the paper's figures
        mean, std = rows["mean"].to_numpy(), rows["std"].fillna(0.0).to_numpy()
        color = PALETTE[i % len(PALETTE)]
        visible = True if edge in SHOWN_EDGES else "legendonly"
        data.append(
            {
                "type": "scatter",
                "x": typed(np.concatenate([layers, layers[::-1]]), "i4"),
                "y": typed(np.concatenate([mean + std, (mean - std)[::-1]]), "f8"),
                "mode": "lines",
                "fill": "toself",
                "fillcolor": rgba(color, 0.18),
                "line": {"width": 0},
                "hoverinfo": "skip",
                "legendgroup": edge,
                "showlegend": False,
                "visible": visible,
            }
        )
        data.append(
            {
                "type": "scatter",
                "x": typed(layers, "i4"),
                "y": typed(mean, "f8"),
                "mode": "lines+markers",
                "name": edge,
                "line": {"color": color},
                "legendgroup": edge,
                "visible": visible,
                "customdata": typed(np.stack([std, rows["count"].to_numpy()], axis=-1), "f8"),
                "hovertemplate": "layer %{x}<br>mean %{y:.4f}<br>sd %{customdata[0]:.4f}<br>"
                "n %{customdata[1]}<extra>" + edge + "</extra>",
            }
        )
    layout = {
        "template": TEMPLATE,
        "title": {
            "text": title
            or "Attention flow over layers (mean over heads and samples; band: ±1 SD across samples)"
        },
        "xaxis": {"title": {"text": "layer (1-based, as in the paper)"}, "dtick": 1},
        "yaxis": {"title": {"text": "attention mass"}, "rangemode": "tozero"},
        "height": 480,
        "margin": {"l": 70, "r": 30, "t": 60, "b": 40},
        "legend": {"title": {"text": "edge (click to show/hide)"}},
    }
    return {"data": data, "layout": layout}


def _frame_title(layer: int, what: str) -> str:
    return f"Frame × frame flow, layer {layer + 1} of 1-based layers ({what})"


def rgba(color: str, alpha: float) -> str:
    """`#rrggbb` as a CSS rgba() colour with opacity `alpha`."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
