"""Report sections and terminal summary of a lens run: answer emergence, the video-token lens' top-1 tokens,
keyword frequency over layer bins (and where the hits are), and the tuned lens' KL against the plain lens."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup
from plotly.subplots import make_subplots

from flowlens.analyses.lens_keywords import ALL_AVERAGE
from flowlens.analyses.lens_tables import emergence, first_emergence
from flowlens.report.figures import PALETTE, TEMPLATE
from flowlens.report.knockout import plotly_text
from flowlens.report.sections import Section
from flowlens.store.run import Run

TOP_TOKENS = 12
NORM_DASH = {"none": "solid", "final": "dash"}
STATES_TEXT = {
    "paper": "the paper's states (answer lens: output of layer l for l < L-1; video lens: input of layer l for "
    "l < L-1; both: the final norm's output at L-1)",
    "resid_post": "every layer's output (hook_resid_post), raw",
}
PROJECTION_TEXT = {"input": "the input-embedding matrix (the paper)", "output": "the output head"}


def _settings(run: Run) -> dict[str, Any]:
    return run.config.get("settings", {})


def _precision_note(run: Run) -> str:
    """A note when a run-folder lens read float16 states (e.g. the `resid_last` summary every trace keeps)."""
    dtypes = run.config.get("source", {}).get("dtypes", {})
    low = sorted(group for group, dtype in dtypes.items() if dtype != "float32")
    if not low:
        return ""
    return (
        f"states at {', '.join(low)} read from float16 stored rows (trace with --activations-dtype float32 "
        "for the fp32 numbers)"
    )


def _is_lens(run: Run) -> bool:
    return run.config.get("analysis") == "lens" and "answer_lens" in run.row_tables


def _correct(run: Run) -> tuple[list[str], str]:
    """The baseline-correct samples (the paper's selection), or every labelled one when none is correct."""
    answers = run.table("answers")
    correct = answers.loc[answers["correct"] == True, "sample"].astype(str).tolist()  # noqa: E712
    if correct:
        return correct, f"{len(correct)} baseline-correct samples"
    labelled = answers.loc[answers["correct"].notna(), "sample"].astype(str).tolist()
    return labelled, f"{len(labelled)} labelled samples (none was answered correctly)"


def answer_emergence(run: Run) -> tuple[pd.DataFrame, str]:
    """`emergence` of the run's answer lens over the baseline-correct samples, and what they are."""
    samples, which = _correct(run)
    table = run.table("answer_lens")
    return emergence(table[table["sample"].astype(str).isin(samples)]), which


# ---------------------------------------------------------------------------- sections
def answer_section(run: Run) -> Section | None:
    if not _is_lens(run):
        return None
    summary, which = answer_emergence(run)
    settings = _settings(run)
    figure = go.Figure()
    for norm, rows in summary.groupby("norm", sort=False):
        for column, name, color in [
            ("p_true", "true letter", PALETTE[0]),
            ("p_false", "false letters (mean)", PALETTE[1]),
        ]:
            figure.add_trace(
                go.Scatter(
                    x=rows["layer"] + 1,
                    y=rows[column],
                    mode="lines+markers",
                    name=f"{name}, norm {norm}",
                    line={"color": color, "dash": NORM_DASH.get(str(norm), "dot")},
                    hovertemplate="state %{x}<br>p %{y:.3f}<extra>%{fullData.name}</extra>",
                )
            )
    figure.update_layout(
        template=TEMPLATE,
        title={
            "text": "Answer emergence at `last`: p(option letter) per layer, with and without the final norm"
        },
        xaxis={"title": {"text": "state (1-based, as the paper's figures)"}, "dtick": 1},
        yaxis={"title": {"text": "p (softmax over the whole vocabulary)"}, "range": [0, 1]},
        height=440,
    )
    firsts = {norm: first_emergence(summary, norm) for norm in ("none", "final")}
    text = "; ".join(
        f"norm {norm}: {'never' if layer is None else f'from state {layer + 1}'}"
        for norm, layer in firsts.items()
    )
    caption = (
        f"Output head (fp32) applied to {STATES_TEXT.get(settings.get('states'), settings.get('states'))} at `last`; "
        f"solid: norm none (the paper), dashed: the final norm applied first. Mean over {which}. "
        f"The true letter's mean p first exceeds the most probable false letter's: {text}."
    )
    if _precision_note(run):
        caption += f" Note: {_precision_note(run)}."
    return Section("lens-answer", "Logit lens: answer emergence", caption, {"lens-answer-figure": figure})


def _top1_shares(run: Run) -> tuple[pd.DataFrame, int]:
    counts: pd.Series | None = None
    n_states = 0
    for sample in run.row_tables.get("video_lens", []):
        rows = run.rows(sample, "video_lens")[["layer", "token"]]
        part = rows.groupby(["layer", "token"]).size()
        counts = part if counts is None else counts.add(part, fill_value=0)
        n_states = max(n_states, int(rows["layer"].max()) + 1)
    if counts is None:
        return pd.DataFrame(columns=["layer", "token", "count", "share"]), 0
    table = counts.rename("count").reset_index()
    table["share"] = table["count"] / table.groupby("layer")["count"].transform("sum")
    return table, n_states


def video_section(run: Run) -> Section | None:
    if not _is_lens(run) or "video_lens" not in run.row_tables:
        return None
    table, n_states = _top1_shares(run)
    top = table.groupby("token")["count"].sum().sort_values(ascending=False).head(TOP_TOKENS).index.tolist()
    z = np.zeros((len(top), n_states))
    for record in table[table["token"].isin(top)].itertuples():
        z[top.index(record.token), int(record.layer)] = record.share
    labels = [plotly_text(repr(t)) for t in top]
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=np.arange(1, n_states + 1),
            y=labels,
            colorscale="Blues",
            zmin=0,
            colorbar={"title": {"text": "share"}},
            hovertemplate="state %{x}<br>token %{y}<br>share %{z:.3f}<extra></extra>",
        )
    )
    figure.update_layout(
        template=TEMPLATE,
        title={
            "text": f"Video-token lens: the {len(top)} most frequent top-1 tokens, share of video tokens per state"
        },
        xaxis={"title": {"text": "state (1-based)"}, "dtick": 1},
        yaxis={"autorange": "reversed"},
        height=max(320, 28 * len(top) + 140),
    )
    settings = _settings(run)
    caption = (
        f"Every video feature token's state projected onto the vocabulary by "
        f"{PROJECTION_TEXT.get(settings.get('projection'), settings.get('projection'))}, final norm "
        f"{'applied' if settings.get('video_norm') == 'final' else 'not applied (the paper)'}; "
        f"states: {STATES_TEXT.get(settings.get('states'), settings.get('states'))}. "
        f"All {len(run.row_tables['video_lens'])} samples."
    )
    return Section("lens-video", "Logit lens: video tokens", caption, {"lens-video-figure": figure})


def keyword_section(run: Run) -> Section | None:
    if not _is_lens(run) or "video_lens" not in run.row_tables:
        return None
    stats = run.table("lens_keywords")
    settings = _settings(run)
    _, which = _correct(run)
    dropped = settings.get("keyword_tokens", {}).get("dropped", [])
    caption = (
        f"Top-1 tokens of the video-token lens ({PROJECTION_TEXT.get(settings.get('projection'))}) matching each "
        f"keyword's first sub-token, over {which}; counted per state, summed in bins of {settings.get('bin_size')} "
        f"states (overlap {settings.get('bin_overlap')}), keywords under {settings.get('min_count')} hits dropped, "
        f"each row normalised to sum 1 over the bins; All Average = mean of the kept rows (Map the Flow Fig. 4)."
        + (f" Keywords left out before counting: {len(dropped)} (see the run's settings)." if dropped else "")
    )
    if stats.empty:
        html = Markup("<p>No keyword reached the minimum count.</p>")
        return Section("lens-keywords", "Logit lens: keywords over layers", caption, html=html)
    categories = list(dict.fromkeys(stats["category"]))
    figures = {}
    for i, category in enumerate(categories):
        rows = stats[stats["category"] == category]
        keywords = list(dict.fromkeys(rows["keyword"]))
        bins = list(dict.fromkeys(rows["layers"]))
        z = rows.pivot(index="keyword", columns="layers", values="frequency").loc[keywords, bins].to_numpy()
        figure = go.Figure(
            go.Heatmap(
                z=z,
                x=bins,
                y=[plotly_text(k) for k in keywords],
                colorscale="Viridis",
                zmin=0,
                colorbar={"title": {"text": "normalised frequency"}},
                hovertemplate="layers %{x}<br>%{y}<br>%{z:.3f}<extra></extra>",
            )
        )
        figure.update_layout(
            template=TEMPLATE,
            title={"text": f"{plotly_text(category)} keywords: normalised top-1 frequency per layer bin"},
            xaxis={"title": {"text": "layers (1-based)"}, "type": "category"},
            yaxis={"autorange": "reversed"},
            height=max(300, 26 * len(keywords) + 140),
        )
        figures[f"lens-keywords-{i}"] = figure
    where = _hits_figure(run)
    if where is not None:
        figures["lens-keyword-cells"] = where
    return Section("lens-keywords", "Logit lens: keywords over layers", caption, figures)


def _hits_figure(run: Run) -> go.Figure | None:
    """Kept keyword hits per (frame, row, col) cell: one small grid per frame (columns) and layer bin (rows)."""
    hits = run.table("lens_keyword_hits")
    hits = hits[hits["kept"].astype(bool) & (hits["row"] >= 0)]
    if hits.empty:
        return None
    frames = int(hits["frame"].max()) + 1
    bins = sorted(hits["bin"].unique())
    labels = dict(zip(hits["bin"], hits["layers"], strict=False))
    height, width = int(hits["row"].max()) + 1, int(hits["col"].max()) + 1
    figure = make_subplots(
        rows=len(bins),
        cols=frames,
        subplot_titles=[f"frame {f}, layers {labels[b]}" for b in bins for f in range(frames)],
        horizontal_spacing=0.01,
        vertical_spacing=0.08 / max(1, len(bins)),
    )
    zmax = float(hits.groupby(["bin", "frame", "row", "col"]).size().max())
    for r, b in enumerate(bins):
        for f in range(frames):
            cell = hits[(hits["bin"] == b) & (hits["frame"] == f)]
            z = np.zeros((height, width))
            np.add.at(z, (cell["row"].to_numpy(int), cell["col"].to_numpy(int)), 1)
            figure.add_trace(
                go.Heatmap(z=z, zmin=0, zmax=zmax, colorscale="Reds", showscale=r == 0 and f == 0),
                row=r + 1,
                col=f + 1,
            )
    figure.update_yaxes(autorange="reversed", showticklabels=False)
    figure.update_xaxes(showticklabels=False)
    figure.update_layout(
        template=TEMPLATE,
        title={
            "text": "Where the kept keywords are top-1: hits per video cell (Map the Flow Fig. 5, on the token grid)"
        },
        height=160 * len(bins) + 120,
        font={"size": 9},
    )
    return figure


def tuned_section(run: Run) -> Section | None:
    if not _is_lens(run) or "tuned_lens" not in run.run_tables:
        return None
    table = run.table("tuned_lens")
    settings = _settings(run)
    figure = go.Figure()
    for column, name, color in [
        ("kl_plain_none", "plain lens, norm none", PALETTE[1]),
        ("kl_plain_final", "plain lens, final norm", PALETTE[0]),
        ("kl_tuned", "tuned lens", PALETTE[2]),
    ]:
        figure.add_trace(
            go.Scatter(
                x=table["layer"] + 1, y=table[column], mode="lines+markers", name=name, line={"color": color}
            )
        )
    figure.update_layout(
        template=TEMPLATE,
        title={"text": "KL(model output || lens) at `last` on held-out samples"},
        xaxis={"title": {"text": "layer (1-based)"}, "dtick": 1},
        yaxis={"title": {"text": "KL (nats)"}, "rangemode": "tozero"},
        height=420,
    )
    n = int(table["n"].max()) if len(table) else 0
    caption = (
        f"Beyond the paper: tuned lens (Belrose et al. 2023), an affine translator per layer fitted "
        f"({settings.get('tuned_fit')}) on --fit-on {settings.get('fit_on')}, then the final norm and the "
        f"output head; compared with the plain lens (output head, with and without the final norm) on {n} held-out samples."
    )
    return Section("lens-tuned", "Tuned lens (beyond the paper)", caption, {"lens-tuned-figure": figure})


# ---------------------------------------------------------------------------- terminal summary
def summary_json(run: Run) -> dict[str, Any]:
    summary, which = answer_emergence(run)
    out: dict[str, Any] = {
        "samples_averaged": which,
        "first_emergence": {norm: first_emergence(summary, norm) for norm in ("none", "final")},
        "answer_emergence": summary.to_dict(orient="records"),
    }
    if "video_lens" in run.row_tables:
        out["keywords"] = run.table("lens_keywords").to_dict(orient="records")
    if "tuned_lens" in run.run_tables:
        out["tuned_lens"] = run.table("tuned_lens").to_dict(orient="records")
    return out


def summary_lines(run: Run) -> list[str]:
    summary, which = answer_emergence(run)
    settings = _settings(run)
    lines = [f"answer lens at `last` (output head, states {settings.get('states')}), mean over {which}:"]
    for norm in ("none", "final"):
        rows = summary[summary["norm"] == norm]
        first = first_emergence(summary, norm)
        shown = " ".join(f"{p:.2f}" for p in rows["p_true"])
        when = "never" if first is None else f"from layer {first} (0-based)"
        lines.append(f"  norm {norm:<5}: p(true letter) per layer {shown}; above every false letter {when}")
    if _precision_note(run):
        lines.append(_precision_note(run))
    if "video_lens" in run.row_tables:
        stats = run.table("lens_keywords")
        kept = stats[stats["keyword"] != ALL_AVERAGE].groupby("category")["keyword"].unique()
        for category, words in kept.items():
            lines.append(f"keywords kept ({category}): {', '.join(words)}")
        if kept.empty:
            lines.append(f"no keyword reached --min-count {settings.get('min_count')}")
    if "tuned_lens" in run.run_tables:
        table = run.table("tuned_lens")
        pairs = ", ".join(
            f"{int(r.layer)}: {r.kl_plain_final:.3f} -> {r.kl_tuned:.3f}" for r in table.itertuples()
        )
        lines.append(
            f"tuned lens, KL to the output on held-out samples (layer: plain final-norm -> tuned): {pairs}"
        )
    return lines
