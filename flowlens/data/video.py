"""`read_frames`: sampled frames of a sample's video and their timestamps, within optional segment bounds.

Frames are picked uniformly (`n` segment middles) or at a fixed rate (`sample_fps`), inside [start, end)
seconds when the sample or the caller gives bounds. PyAV decodes by default (seeking in long videos);
decord and torchcodec are optional backends. Anything unusable raises `SampleError` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowlens.data.decoders import DEFAULT_BACKEND, ShortVideo, open_decoder
from flowlens.data.decoders.arrays import DEFAULT_FPS as DEFAULT_FPS_FOR_ARRAYS
from flowlens.data.sampling import plan_indices, uniform_indices
from flowlens.errors import SampleError

if TYPE_CHECKING:
    from flowlens.data.sample import Sample

__all__ = ["DEFAULT_FPS_FOR_ARRAYS", "Frames", "read_frames", "uniform_indices"]


@dataclass
class Frames:
    """Sampled frames (n, H, W, 3) uint8, their indices in the source video and timestamps in seconds."""

    frames: np.ndarray
    indices: np.ndarray
    timestamps: np.ndarray
    fps: float
    total_frames: int


def read_frames(
    video: Sample | str | Path | np.ndarray,
    n: int | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    backend: str | None = None,
    sample_fps: float | None = None,
) -> Frames:
    """Frames of a sample's video (or a file, image folder or (T, H, W, 3) array) and their timestamps.

    `n` frames are the middles of `n` equal parts of [start, end) seconds; with `sample_fps`, one
    frame every 1 / `sample_fps` seconds (at most `n`). `fps` is the frame rate of an array or image
    folder (files carry their own). A sample's metadata may give `start`, `end`, `fps`, `sample_fps`
    and `video_backend`; arguments win over metadata.
    """
    meta: dict[str, Any] = dict(getattr(video, "metadata", None) or {})
    source = video.video if hasattr(video, "video") else video
    rate = sample_fps if sample_fps is not None else _number(meta.get("sample_fps"))
    start = start if start is not None else _number(meta.get("start"))
    end = end if end is not None else _number(meta.get("end"))
    backend = backend or meta.get("video_backend") or DEFAULT_BACKEND
    decoder = open_decoder(source, backend, fps or _number(meta.get("fps")))
    try:
        indices = plan_indices(decoder.total, decoder.fps, n, rate, start, end)
        try:
            frames, timestamps = decoder.read(indices)
        except ShortVideo:  # the container promised more frames than the file holds
            indices = plan_indices(decoder.count(), decoder.fps, n, rate, start, end)
            frames, timestamps = decoder.read(indices)
    finally:
        decoder.close()
    return Frames(frames, indices, timestamps, decoder.fps, decoder.total)


def _number(value: Any) -> float | None:
    """A metadata value as a float (None when absent or empty)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise SampleError(f"malformed annotation: {value!r} is not a number (segment bound or rate)") from exc
