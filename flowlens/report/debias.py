"""Report sections of `flowlens debias`: the trend fits, positional histograms before/after, agreement."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
from markupsafe import Markup, escape

from flowlens.pruning.trend import TrendFit
from flowlens.report.figures import PALETTE, TEMPLATE
from flowlens.report.html_table import html_table
from flowlens.report.sections import Section

if TYPE_CHECKING:
    import pandas as pd

    from flowlens.store.run import Run

FITS, HISTOGRAMS, AGREEMENT, FLAGS = "debias_fits", "debias_histograms", "debias_agreement", "debias_flags"
DASHES = {"exp": "solid", "poly3": "dash", "nonparametric": "dot"}


def _settings(run: Run) -> dict[str, Any]:
    return run.config.get("settings", {})


def _table(run: Run, name: str) -> pd.DataFrame | None:
    return run.table(name) if name in run.run_tables else None


def trend_figure(fits: pd.DataFrame, axis: str) -> go.Figure:
    """Mean score by position along `axis` (markers) and each family's fitted trend (lines), per scorer."""
    figure = go.Figure()
    rows = fits[(fits["stage"] == "raw") & (fits["axis"] == axis)]
    for i, (label, group) in enumerate(rows.groupby("scorer_label", sort=False)):
        colour = PALETTE[i % len(PALETTE)]
        for j, record in enumerate(group.to_dict("records")):
            fit = TrendFit.from_json(record["fit"])
            x = np.arange(fit.n_positions)
            if j == 0:
                figure.add_trace(
                    go.Scatter(
                        x=x,
                        y=fit.means,
                        mode="markers",
                        name=f"{label} mean",
                        legendgroup=label,
                        marker={"color": colour, "size": 5},
                    )
                )
            name = f"{label} {fit.family} (x{fit.amplification:.3g})"
            figure.add_trace(
                go.Scatter(
                    x=x,
                    y=fit.trend(x),
                    mode="lines",
                    name=name,
                    legendgroup=label,
                    line={"color": colour, "dash": DASHES.get(fit.family, "solid")},
                )
            )
    figure.update_layout(
        template=TEMPLATE,
        xaxis_title=f"position ({axis})",
        yaxis_title="mean score (log scale: an exp trend is a line)",
        yaxis_type="log",
        height=400,
        margin={"l": 60, "r": 20, "t": 20, "b": 50},
    )
    return figure


def histogram_figure(histograms: pd.DataFrame, axis: str, budget: float) -> go.Figure:
    """Share of kept tokens by position along `axis` at `budget`, raw and debiased, per scorer."""
    figure = go.Figure()
    rows = histograms[(histograms["axis"] == axis) & np.isclose(histograms["budget"], budget)]
    for i, (label, group) in enumerate(rows.groupby("scorer", sort=False)):
        for stage, opacity in (("raw", 0.45), ("debiased", 0.9)):
            part = group[group["stage"] == stage]
            figure.add_trace(
                go.Bar(
                    x=part["position"],
                    y=part["share"],
                    name=f"{label} {stage}",
                    opacity=opacity,
                    marker={"color": PALETTE[i % len(PALETTE)]},
                    marker_pattern_shape="" if stage == "debiased" else "/",
                )
            )
    figure.update_layout(
        template=TEMPLATE,
        barmode="group",
        xaxis_title=f"position ({axis})",
        yaxis_title=f"share of kept tokens ({budget:.0%} kept)",
        height=360,
        margin={"l": 60, "r": 20, "t": 20, "b": 50},
    )
    return figure


def fits_html(fits: pd.DataFrame) -> Markup:
    """The fits table (escaped): lambda, amplification and R^2 per scorer, axis, family and stage."""
    columns = [
        "scorer_label",
        "stage",
        "axis",
        "family",
        "n_positions",
        "n_samples",
        "lam",
        "amplification",
        "r2",
    ]
    return html_table(fits, columns, {"lam": ".3g"})


def trend_section(run: Run) -> Section | None:
    fits = _table(run, FITS)
    if fits is None or fits.empty:
        return None
    settings = _settings(run)
    axis = settings.get("apply_axis", "global_index")
    caption = (
        "Mean score of each scorer at each position over the calibration samples (markers) and the fitted "
        "trends along each axis, the applied axis first (lines: exp solid, poly3 dashed, nonparametric "
        "dotted; the legend gives each fit's amplification). Bias strength: lambda = "
        "log(trend(N-1)/trend(0))/(N-1) (the fitted rate for exp) and the amplification exp(lambda(N-1)). "
        f"Rows `debiased`: the applied trend ({settings.get('apply_family')} on {axis}, mode "
        f"{settings.get('mode')}) refitted to the debiased scores -- what is left of the bias."
    )
    order = [axis, *(a for a in dict.fromkeys(fits["axis"]) if a != axis)]
    figures = {f"debias-trend-{a}": trend_figure(fits, a) for a in order if (fits["axis"] == a).any()}
    return Section(
        id="debias-trend",
        title="Positional trends of token scores",
        caption=caption,
        figures=figures,
        html=fits_html(fits),
    )


def histogram_section(run: Run) -> Section | None:
    histograms = _table(run, HISTOGRAMS)
    if histograms is None or histograms.empty:
        return None
    budget = 0.25 if np.isclose(histograms["budget"], 0.25).any() else float(histograms["budget"].min())
    figures = {
        f"debias-hist-{axis}": histogram_figure(histograms, axis, budget)
        for axis in dict.fromkeys(histograms["axis"])
    }
    flags = _table(run, FLAGS)
    html = Markup("")
    if flags is not None and not flags.empty:
        columns = [
            "scorer",
            "stage",
            "budget",
            "kept",
            "sink_share",
            "pad_share",
            "sinks_per_sample",
            "pad_per_sample",
            "sink_source",
        ]
        head = "".join(f"<th>{escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{escape(f'{r[c]:.3f}' if isinstance(r[c], float) else str(r[c]))}</td>" for c in columns
            )
            + "</tr>"
            for r in flags[columns].to_dict("records")
        )
        html = Markup(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    caption = (
        f"Where the top {budget:.0%} tokens of each scorer lie, by frame, row, column and global index, "
        "before (hatched) and after debiasing, pooled over the diagnosed samples; the table gives the share "
        "of sink and padding tokens among the kept ones at every budget."
    )
    return Section(
        id="debias-histograms",
        title="Kept tokens by position, before and after debiasing",
        caption=caption,
        figures=figures,
        html=html,
    )


def agreement_section(run: Run) -> Section | None:
    agreement = _table(run, AGREEMENT)
    if agreement is None or agreement.empty:
        return None
    columns = ["scorer_a", "scorer_b", "stage", "budget", "spearman", "jaccard", "n_samples"]
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{escape(f'{r[c]:.3f}' if isinstance(r[c], float) else str(r[c]))}</td>" for c in columns
        )
        + "</tr>"
        for r in agreement[columns].to_dict("records")
    )
    caption = (
        "Agreement between scorers on each sample, averaged over samples: Spearman rank correlation of the "
        "scores and Jaccard overlap of the top-k sets at each budget (k = floor(r V + 1/2), ties: earlier token)."
    )
    return Section(
        id="debias-agreement",
        title="Agreement between scorers",
        caption=caption,
        html=Markup(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"),
    )


def summary_json(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary_lines(run)}
    for name in (FITS, AGREEMENT, FLAGS):
        table = _table(run, name)
        if table is not None:
            records = table.drop(columns=["fit"], errors="ignore").to_dict("records")
            out[name] = json.loads(json.dumps(records, default=float))
    return out


def summary_lines(run: Run) -> list[str]:
    fits = _table(run, FITS)
    if fits is None or fits.empty:
        return []
    settings = _settings(run)
    axis, family = settings.get("apply_axis", "global_index"), settings.get("apply_family", "exp")
    lines = [f"bias strength ({family} trend along {axis}; amplification = trend(N-1)/trend(0)):"]
    chosen = fits[(fits["axis"] == axis) & (fits["family"] == family)]
    for label, rows in chosen.groupby("scorer_label", sort=False):
        parts = [
            f"{r['stage']} lambda {r['lam']:+.4g} x{r['amplification']:.2f} (R2 {r['r2']:.2f})"
            for r in rows.to_dict("records")
        ]
        lines.append(f"  {label}: {'; '.join(parts)}")
    flags = _table(run, FLAGS)
    if flags is not None and not flags.empty:
        first = flags.iloc[0]
        lines.append(
            f"sinks per sample {first['sinks_per_sample']:.2f} ({first['sink_source']}), padding tokens per "
            f"sample {first['pad_per_sample']:.2f}"
        )
    return lines
