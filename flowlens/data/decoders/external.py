"""Optional backends: decord (`VideoReader.get_batch`) and torchcodec (`VideoDecoder.get_frames_at`), imported lazily."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowlens.errors import SampleError


class DecordDecoder:
    """A video file read with decord, the reader most MVBench-style evaluation code uses."""

    def __init__(self, path: Path):
        import decord

        self.path = path
        try:
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        except (RuntimeError, decord.DECORDError) as exc:
            raise SampleError(f"cannot decode video {path}: {_first_line(exc)}") from exc
        self.total = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import decord

        picks = [int(i) for i in indices]
        try:
            frames = self._reader.get_batch(picks).asnumpy()
            times = self._reader.get_frame_timestamp(picks)[:, 0]
        except (RuntimeError, decord.DECORDError, IndexError) as exc:
            raise SampleError(f"cannot decode video {self.path}: {_first_line(exc)}") from exc
        return np.ascontiguousarray(frames, dtype=np.uint8), np.asarray(times, dtype=np.float64)

    def count(self) -> int:
        return self.total

    def close(self) -> None:
        del self._reader


class TorchCodecDecoder:
    """A video file read with torchcodec in exact seek mode (frames returned NHWC)."""

    def __init__(self, path: Path):
        from torchcodec.decoders import VideoDecoder

        self.path = path
        try:
            self._decoder = VideoDecoder(str(path), dimension_order="NHWC", seek_mode="exact")
        except (RuntimeError, ValueError) as exc:
            raise SampleError(f"cannot decode video {path}: {_first_line(exc)}") from exc
        metadata = self._decoder.metadata
        self.total = int(metadata.num_frames or 0)
        self.fps = float(metadata.average_fps or 1.0)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            batch = self._decoder.get_frames_at(indices=[int(i) for i in indices])
        except (RuntimeError, IndexError, ValueError) as exc:
            raise SampleError(f"cannot decode video {self.path}: {_first_line(exc)}") from exc
        return batch.data.numpy().astype(np.uint8, copy=False), batch.pts_seconds.numpy().astype(np.float64)

    def count(self) -> int:
        return self.total

    def close(self) -> None:
        del self._decoder


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
