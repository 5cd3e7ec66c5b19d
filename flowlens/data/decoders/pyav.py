"""PyAV (FFmpeg) video files: decode only what is needed, seeking to a keyframe when the next pick is far ahead."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from flowlens.data.decoders import ShortVideo
from flowlens.errors import SampleError

SEEK_GAP = 64  # frames: a pick further than this past the last decoded frame is reached by seeking
DEFAULT_FPS = 1.0
TRUNCATION_SLACK = 0.05  # a file decoding fewer than this share below its stored frame count is truncated


def reason(exc: BaseException) -> str:
    """An FFmpeg/OS error as words: `[Errno 1094995529] Invalid data found ...: 'x.mp4'` -> `invalid data found ...`."""
    text = getattr(exc, "strerror", None) or str(exc)
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(text)).split(": '")[0].strip()
    return (text[:1].lower() + text[1:]) if text else type(exc).__name__


class PyAVDecoder:
    """One video file; frame indices come from presentation timestamps, so a seek lands on exact frames."""

    def __init__(self, path: Path):
        import av

        self.path = path
        self._errors: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError)
        try:
            self._container = av.open(str(path))
        except self._errors as exc:
            raise SampleError(f"cannot decode video {path}: {reason(exc)}") from exc
        if not self._container.streams.video:
            self.close()
            raise SampleError(f"cannot decode video {path}: no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else DEFAULT_FPS
        self._time_base = float(self._stream.time_base) if self._stream.time_base else None
        self._t0 = float(self._stream.start_time or 0) * (self._time_base or 0.0)
        self._stored = int(self._stream.frames or 0)  # the container's own count, when it has one
        self.total = self._stored or self._count_packets()

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB frames at `indices` (ascending) and their presentation times in seconds."""
        picked: dict[int, tuple[np.ndarray, float]] = {}
        frames: Iterator[tuple[int, Any]] | None = None
        last = -1
        try:
            for target in sorted({int(i) for i in indices}):
                if frames is None or target - last > SEEK_GAP:
                    frames = self._frames_from(target)
                for index, frame in frames:
                    last = index
                    if index >= target:
                        picked[target] = (frame.to_ndarray(format="rgb24"), self._seconds(frame, index))
                        break
                else:
                    raise ShortVideo(f"{self.path} ended before frame {target}")
        except self._errors as exc:
            raise SampleError(
                f"cannot decode video {self.path}: {reason(exc)} (corrupt or truncated file)"
            ) from exc
        rows = [picked[int(i)] for i in indices]
        if len({r[0].shape for r in rows}) > 1:
            raise SampleError(f"cannot decode video {self.path}: the frame size changes within the video")
        return np.stack([r[0] for r in rows]), np.asarray([r[1] for r in rows], dtype=np.float64)

    def count(self) -> int:
        """Frames that actually decode; far fewer than the container stores means a truncated file."""
        try:
            n = sum(1 for _ in self._frames_from(0))
        except self._errors as exc:
            raise SampleError(
                f"cannot decode video {self.path}: {reason(exc)} (corrupt or truncated file)"
            ) from exc
        if n == 0:
            raise SampleError(f"empty video: no frames decode from {self.path}")
        if self._stored and n < self._stored * (1 - TRUNCATION_SLACK) - 1:
            raise SampleError(
                f"cannot decode video {self.path}: truncated file, only {n} of its {self._stored} frames decode"
            )
        self.total = n
        return n

    def close(self) -> None:
        self._container.close()

    # -- helpers -------------------------------------------------------------------
    def _frames_from(self, target: int) -> Iterator[tuple[int, Any]]:
        """(index, frame) from the keyframe at or before `target` on; from the start if a seek overshoots."""
        self._container.seek(self._pts(target), stream=self._stream, backward=True, any_frame=False)
        counter = 0
        for n, frame in enumerate(self._container.decode(self._stream)):
            index = self._index(frame, counter)
            if n == 0 and index > target > 0:
                yield from self._frames_from(0)
                return
            counter = index + 1
            yield index, frame

    def _pts(self, index: int) -> int:
        if not self._time_base:
            return 0
        return int(round((self._t0 + index / self.fps) / self._time_base))

    def _index(self, frame: Any, counter: int) -> int:
        if frame.time is None:
            return counter
        return int(round((float(frame.time) - self._t0) * self.fps))

    def _seconds(self, frame: Any, index: int) -> float:
        return float(frame.time) - self._t0 if frame.time is not None else index / self.fps

    def _count_packets(self) -> int:
        """Frame count from the packets when the container does not store it (e.g. WebM); no decoding."""
        try:
            n = sum(1 for packet in self._container.demux(self._stream) if packet.size)
        except self._errors as exc:
            self.close()
            raise SampleError(f"cannot decode video {self.path}: {reason(exc)}") from exc
        if n == 0:
            self.close()
            raise SampleError(f"empty video: no frames in {self.path}")
        return n
