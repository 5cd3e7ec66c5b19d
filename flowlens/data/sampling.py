"""Which frames to decode: segment bounds in seconds -> a frame window, then uniform or fixed-rate picks.

Frame `i` of a video at `fps` frames per second is shown during [i / fps, (i + 1) / fps). A segment
[start, end) holds the frames whose start time lies in it; the picks are always inside that window.
"""

from __future__ import annotations

import math

import numpy as np

from flowlens.errors import SampleError

EPS = 1e-6  # seconds: absorbs float error in timestamps such as 0.1 * 30


def uniform_indices(total: int, n: int) -> np.ndarray:
    """The middle frame of each of `n` equal segments of a `total`-frame video (PLLaVA / Map the Flow)."""
    if total < n:
        raise SampleError(f"too few frames: video has {total} frames, fewer than the {n} asked for")
    return ((np.arange(n) + 0.5) * total / n).astype(np.int64)


def segment_window(total: int, fps: float, start: float | None, end: float | None) -> tuple[int, int]:
    """[first, stop) frame indices of the segment [start, end) seconds (whole video when both are None)."""
    if start is not None and start < 0:
        raise SampleError(f"bad segment: start {start} s is negative")
    if start is not None and end is not None and end <= start:
        raise SampleError(f"bad segment: end {end} s is not after start {start} s")
    first = 0 if start is None else math.ceil(start * fps - EPS)
    stop = total if end is None else min(total, math.ceil(end * fps - EPS))
    if first >= stop:
        duration = total / fps if fps else 0.0
        raise SampleError(
            f"bad segment: [{start or 0:g}, {end if end is not None else duration:g}) s holds no frames "
            f"of the {duration:.2f} s video ({total} frames at {fps:g} fps)"
        )
    return first, stop


def rate_indices(first: int, stop: int, fps: float, rate: float) -> np.ndarray:
    """One frame every 1 / `rate` seconds from the window start: the frame shown at each of those times."""
    if rate <= 0:
        raise SampleError(f"sampling rate must be positive, got {rate} fps")
    count = math.ceil((stop - first) * rate / fps - EPS)
    picks = first + np.floor(np.arange(max(count, 1)) * fps / rate + EPS).astype(np.int64)
    return np.unique(picks[picks < stop])


def plan_indices(
    total: int,
    fps: float,
    n: int | None = None,
    rate: float | None = None,
    start: float | None = None,
    end: float | None = None,
) -> np.ndarray:
    """Frame indices to decode: `n` uniform picks in the segment, or one every 1 / `rate` s (at most `n`)."""
    if n is None and rate is None:
        raise SampleError("give a number of frames or a sampling rate (fps)")
    if n is not None and n < 1:
        raise SampleError(f"number of frames must be positive, got {n}")
    if total < 1:
        raise SampleError("empty video: it has no frames")
    first, stop = segment_window(total, fps, start, end)
    if rate is None:
        if stop - first < n:
            where = "" if (first, stop) == (0, total) else f" in the segment [{start or 0:g}, {end}) s"
            raise SampleError(
                f"too few frames: video has {stop - first} frames{where}, fewer than the {n} asked for"
            )
        return first + uniform_indices(stop - first, n)
    picks = rate_indices(first, stop, fps, rate)
    if n is not None and picks.size > n:
        picks = picks[uniform_indices(picks.size, n)]
    return picks
