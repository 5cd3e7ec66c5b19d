"""Writing frame arrays as H.264 mp4 files with PyAV (synthetic datasets and tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Single-threaded, near-lossless x264: small solid-colour clips stay faithful and the bytes are reproducible.
H264_OPTIONS = {"crf": "8", "preset": "medium", "threads": "1"}


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames (even H and W) as an H.264 yuv420p mp4 at `fps`."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sides, got {height}x{width}")
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=dict(H264_OPTIONS))
        stream.height, stream.width = height, width
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
