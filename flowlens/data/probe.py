"""A small generated clip and question for `flowlens inspect` when no sample is given."""

from __future__ import annotations

import numpy as np

from flowlens.data.sample import Sample


def probe_sample(n_frames: int = 16, height: int = 96, width: int = 128) -> Sample:
    """A red square moving left to right on grey, with a four-option direction question."""
    video = np.full((n_frames, height, width, 3), 128, dtype=np.uint8)
    side = height // 4
    for t in range(n_frames):
        x = int((width - side) * t / max(n_frames - 1, 1))
        video[t, height // 2 - side // 2 : height // 2 + side // 2, x : x + side] = (220, 30, 30)
    return Sample(
        id="probe",
        video=video,
        question="Which direction does the red square move?",
        options=["left", "right", "up", "down"],
        answer="B",
    )
