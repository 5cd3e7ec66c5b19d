"""Random `SampleTrace`s with the documented shapes for a real layout (store and report tests)."""

from __future__ import annotations

from typing import Any

import numpy as np

from flowlens.models.layout import TokenLayout
from flowlens.store.records import AnswerReadout, SampleTrace


def random_trace(
    layout: TokenLayout,
    sample_id: str,
    seed: int = 0,
    resid_layers: tuple[int, ...] = (),
    metadata: dict[str, Any] | None = None,
    answer: str | None = "B",
) -> SampleTrace:
    """A causal trace: each segment_flow row sums to 1 over the segments at or before it; frame_flow is its frame block."""
    rng = np.random.default_rng(seed)
    n_layers, n_heads, d_model = layout.n_layers, layout.n_heads, layout.d_model
    sizes = np.asarray([layout[name].size for name in layout.partition])
    n_seg = sizes.size
    causal = np.tril(np.ones((n_seg, n_seg), dtype=bool)) & (sizes[None, :] > 0)
    weights = rng.random((n_layers, n_heads, n_seg, n_seg)) * causal
    segment_flow = (weights / weights.sum(-1, keepdims=True)).astype(np.float32)
    frames = [layout.partition.index(g) for g in layout.frame_groups]
    frame_flow = segment_flow[:, :, frames][:, :, :, frames]
    n_video, n_question = layout.n_video, int(layout["question"].size)
    letters = list(layout.option_letters)
    probs = rng.dirichlet(np.ones(len(letters))).astype(np.float32)
    predicted = letters[int(np.argmax(probs))]
    return SampleTrace(
        sample_id=sample_id,
        layout=layout,
        segment_flow=segment_flow,
        frame_flow=np.ascontiguousarray(frame_flow),
        last_to_video=rng.random((n_layers, n_heads, n_video), dtype=np.float32) / n_video,
        question_to_video=rng.random((n_layers, n_question, n_video), dtype=np.float32) / n_video,
        resid_last=rng.standard_normal((n_layers, d_model)).astype(np.float16),
        resid_frame_mean=rng.standard_normal((n_layers, layout.n_frames, d_model)).astype(np.float16),
        answer=AnswerReadout(
            letters=letters,
            probs=probs,
            predicted=predicted,
            answer=answer,
            correct=None if answer is None else predicted == answer,
        ),
        resid_video={
            layer: rng.standard_normal((n_video, d_model)).astype(np.float16) for layer in resid_layers
        },
        metadata=dict(metadata or {}),
    )
