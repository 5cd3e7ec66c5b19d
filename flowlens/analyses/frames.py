"""Frame interventions for evaluation: blank frames (the no-video floor) and a seeded shuffle of frame order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from flowlens.data.video import Frames

FrameTransform = Callable[[Frames, Any], Frames]


def blank_frames(frames: Frames, sample: Any) -> Frames:
    """Black frames of the same shape, indices and timestamps: the model sees the prompt but no video."""
    return replace(frames, frames=np.zeros_like(frames.frames))


def shuffled_frames(seed: int) -> FrameTransform:
    """Permute the sampled frames with a permutation seeded by (seed, sample id); timestamps stay in order."""

    def transform(frames: Frames, sample: Any) -> Frames:
        key = np.frombuffer(str(sample.id).encode(), dtype=np.uint8).astype(np.int64).tolist()
        order = np.random.default_rng([seed, *key]).permutation(len(frames.frames))
        return replace(frames, frames=np.ascontiguousarray(frames.frames[order]))

    return transform


@contextmanager
def transformed_frames(lm: Any, transform: FrameTransform | None) -> Iterator[None]:
    """Within the block, `lm.prepare` feeds the model `transform(sampled frames)` (no-op when None).

    Wraps the adapter's `sample_frames` hook on this instance only and restores it on exit, so the
    prompt, timestamps and layout are built exactly as in a normal run.
    """
    if transform is None:
        yield
        return
    adapter = lm.adapter
    own = vars(adapter).get("sample_frames")  # an instance-level override to put back, if any
    original = adapter.sample_frames

    def sample_frames(sample: Any, n: int) -> Frames:
        return transform(original(sample, n), sample)

    adapter.sample_frames = sample_frames
    try:
        yield
    finally:
        if own is None:
            del adapter.sample_frames
        else:
            adapter.sample_frames = own
