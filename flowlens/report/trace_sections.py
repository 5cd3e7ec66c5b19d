"""Report sections of a trace run: frame x frame flow, flow along the edges over layers, the video with overlays."""

from __future__ import annotations

import numpy as np

from flowlens.report.figures import edge_figure, frame_flow_figure, head_figure, mean_frame_flow
from flowlens.report.sections import Section, who
from flowlens.report.video import video_figure
from flowlens.store.run import Run


def has_trace(run: Run) -> bool:
    """Whether the run shows trace sections: it holds traces, or nothing else (row or run tables)."""
    return bool(run.traced) or not (run.row_tables or run.run_tables)


def frame_flow_section(run: Run) -> Section | None:
    if not has_trace(run):
        return None
    mean = mean_frame_flow(run)
    title = "Frame × frame flow"
    if mean is None:
        return Section("frames", title, "No traced samples with frames.")
    left_out = " (those with the most common number of frame groups)" if mean.n_used < mean.n_samples else ""
    caption = (
        f"Row = query (target) frame group, column = key (source) frame group: the mean attention mass a token "
        f"of the target puts on the source's tokens (the paper's frame-to-frame flow), averaged over heads and "
        f"over {mean.n_used} of {mean.n_samples} samples{left_out}; {who(run, mean.n_used)}. "
        "Drag the slider to change the layer; one colour scale for all layers."
    )
    heads = (
        {"frame-flow-heads": head_figure(mean)} if mean.heads is not None and mean.heads.shape[1] > 1 else {}
    )
    return Section("frames", title, caption, {"frame-flow": frame_flow_figure(mean)}, on_request=heads)


def edge_flow_section(run: Run) -> Section | None:
    if not has_trace(run):
        return None
    summary = run.table("flow_summary")
    title = "Video → question → last"
    if not len(summary):
        return Section("edges", title, "No traced samples.")
    n = int(summary["sample"].nunique())
    caption = (
        "Attention mass along each edge per layer: the sum over the source segments (the video = every frame "
        "group and the video markup) of the mean attention a target token puts on them, averaged over heads; "
        f"line: mean over samples, band: ±1 standard deviation across samples; {who(run, n)}. "
        "Click the legend to show the other edges."
    )
    return Section("edges", title, caption, {"edge-flow": edge_figure(summary)})


def video_section(run: Run) -> Section | None:
    if not run.traced:
        return None
    sample = next((s for s in run.traced if run.thumbnails(s) is not None), run.traced[0])
    figure = sample_video_figure(run, sample)
    if figure is None:
        return None
    caption = (
        f"Sample {sample}: the sampled frames as the model saw them, under the `last` query's attention on each "
        "video token (the position that predicts the answer; mean over heads), drawn on the frame's token grid "
        "(layout.video_cells). Drag the slider to change the layer; colours run from each layer's smallest "
        f"cell (transparent) to its largest. Every sample's own page (linked from the answers table) shows its frames and flows; {who(run)}."
    )
    if run.thumbnails(sample) is None:
        caption += " This run stored no thumbnails (traced with --thumbnails 0): the grid is shown alone."
    return Section("video", "The video: where `last` looks", caption, {"video-overlay": figure})


def sample_video_figure(run: Run, sample: str):  # noqa: ANN201 (a plotly figure or None)
    """The overlay figure of one traced sample, or None when it has no frame groups."""
    layout = run.layout(sample)
    if not layout.n_frames or not layout.n_video:
        return None
    attention = run.array(sample, "last_to_video").astype(np.float64).mean(axis=1)
    return video_figure(layout, run.thumbnails(sample), attention)
