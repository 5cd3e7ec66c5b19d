"""Video decoding with PyAV: uniformly sampled frames and their timestamps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flowlens.errors import SampleError

if TYPE_CHECKING:
    from flowlens.data.sample import Sample

DEFAULT_FPS_FOR_ARRAYS = 1.0


@dataclass
class Frames:
    """Sampled frames (n, H, W, 3) uint8, their indices in the source video and timestamps in seconds."""

    frames: np.ndarray
    indices: np.ndarray
    timestamps: np.ndarray
    fps: float
    total_frames: int


def uniform_indices(total: int, n: int) -> np.ndarray:
    """The middle frame of each of `n` equal segments of a `total`-frame video (PLLaVA / Map the Flow)."""
    if total < n:
        raise SampleError(f"video has {total} frames, fewer than the {n} asked for")
    return ((np.arange(n) + 0.5) * total / n).astype(np.int64)


def read_frames(video: Sample | str | Path | np.ndarray, n: int, fps: float | None = None) -> Frames:
    """Return `n` uniformly sampled frames of a sample's video, a video file or a frame array."""
    source = video.video if hasattr(video, "video") else video
    if isinstance(source, np.ndarray):
        return _sample_array(source, n, fps or DEFAULT_FPS_FOR_ARRAYS)
    return _decode_file(Path(source), n)


def _sample_array(array: np.ndarray, n: int, fps: float) -> Frames:
    if array.ndim != 4 or array.shape[-1] != 3:
        raise SampleError(f"frame array must have shape (T, H, W, 3), got {tuple(array.shape)}")
    indices = uniform_indices(array.shape[0], n)
    frames = np.ascontiguousarray(array[indices]).astype(np.uint8, copy=False)
    return Frames(frames, indices, indices / fps, fps, array.shape[0])


def _decode_file(path: Path, n: int) -> Frames:
    import av

    if not path.exists():
        raise SampleError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SampleError(f"no video stream in {path}")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or DEFAULT_FPS_FOR_ARRAYS)
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except SampleError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise SampleError(f"cannot decode video {path}: {exc}") from exc
    if not decoded:
        raise SampleError(f"video has no frames: {path}")
    indices = uniform_indices(len(decoded), n)
    frames = np.stack([decoded[i] for i in indices])
    return Frames(frames, indices, indices / fps, fps, len(decoded))
