"""Summary edges of the flow (video->question, video->last, frame->earlier_frames, ...) from one `segment_flow`.

`segment_flow[l, h, t, s]` is the mean attention mass a query token of segment t puts on segment s, so
the flow from a group of source segments into a target is the sum over those sources. Edges whose
target or sources are absent from a layout (or empty) are left out.
"""

from __future__ import annotations

import numpy as np

from flowlens.models.layout import TokenLayout, is_frame_group

VIDEO = "video"
EARLIER_FRAMES = "frame->earlier_frames"
SAME_FRAME = "frame->same_frame"

# edge -> (source segments, or VIDEO for every frame group, markup included; target segment)
SEGMENT_EDGES: dict[str, tuple[str | tuple[str, ...], str]] = {
    "video->question": (VIDEO, "question"),
    "video->last": (VIDEO, "last"),
    "question->last": (("question",), "last"),
    "prefix->last": (("prefix",), "last"),
}
EDGES: tuple[str, ...] = (*SEGMENT_EDGES, EARLIER_FRAMES, SAME_FRAME)


def video_segments(layout: TokenLayout) -> list[str]:
    """The partition segments that make up the whole video: every frame group (which owns its markup; run
    files written before that kept the markup apart as a `video_markup` segment, still counted)."""
    return [name for name in layout.partition if is_frame_group(name) or name == "video_markup"]


def edge_flows(segment_flow: np.ndarray, layout: TokenLayout) -> dict[str, np.ndarray]:
    """Head-mean flow per layer along every edge the layout supports: {edge: (L,) float64}, in `EDGES` order."""
    flow = np.asarray(segment_flow, dtype=np.float64).mean(axis=1)  # (L, S, S)
    index = {name: i for i, name in enumerate(layout.partition)}
    present = {name for name in layout.partition if layout[name].size}
    out: dict[str, np.ndarray] = {}
    for edge, (sources, target) in SEGMENT_EDGES.items():
        names = video_segments(layout) if sources == VIDEO else list(sources)
        columns = [index[name] for name in names if name in present]
        if target in present and columns:
            out[edge] = flow[:, index[target], columns].sum(axis=-1)
    frames = [index[name] for name in layout.frame_groups]
    sizes = np.asarray([layout[name].size for name in layout.frame_groups], dtype=np.float64)  # query tokens
    if len(frames) >= 2:
        earlier = np.stack(
            [flow[:, frames[f], frames[:f]].sum(axis=-1) for f in range(1, len(frames))], axis=-1
        )
        out[EARLIER_FRAMES] = _weighted_mean(earlier, sizes[1:])
    if frames:
        same = np.stack([flow[:, f, f] for f in frames], axis=-1)
        out[SAME_FRAME] = _weighted_mean(same, sizes)
    return out


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean over the last axis weighted by token counts (a mean over query tokens); plain mean if all are 0."""
    if weights.sum() <= 0:
        return values.mean(axis=-1)
    return values @ (weights / weights.sum())
