"""Frame sources behind `read_frames`: PyAV (default), decord and torchcodec files, frame arrays, image folders.

Every decoder exposes `total` (frames), `fps`, `read(indices) -> (frames, timestamps)` and `count()`;
`open_decoder` checks the path first so every backend fails with the same reasons.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from flowlens.errors import FlowlensError, SampleError

BACKENDS = ("pyav", "decord", "torchcodec")
DEFAULT_BACKEND = "pyav"
_MODULES = {"pyav": "av", "decord": "decord", "torchcodec": "torchcodec"}
_INSTALL = {"pyav": "pip install av", "decord": "pip install decord", "torchcodec": "pip install torchcodec"}


class ShortVideo(Exception):
    """The file ended before a frame its metadata promised: re-plan with `count()` frames."""


class Decoder(Protocol):
    """What `read_frames` needs from a frame source."""

    total: int
    fps: float

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


def check_backend(name: str) -> str:
    """`name` if it is a known backend whose package imports, else a one-line `FlowlensError` saying what to do."""
    if name not in BACKENDS:
        raise FlowlensError(f"unknown video backend {name!r}; use one of {', '.join(BACKENDS)}")
    try:
        importlib.import_module(_MODULES[name])
    except ImportError as exc:
        raise FlowlensError(
            f"video backend {name!r} is not installed ({exc}); {_INSTALL[name]}, or use --video-backend pyav"
        ) from exc
    return name


def open_decoder(source: Any, backend: str = DEFAULT_BACKEND, source_fps: float | None = None) -> Decoder:
    """A decoder for a (T, H, W, 3) array, a folder of frame images, or a video file read with `backend`."""
    from flowlens.data.decoders.arrays import ArrayDecoder, ImageFolderDecoder

    if isinstance(source, np.ndarray):
        return ArrayDecoder(source, source_fps)
    path = Path(source).expanduser()
    if not path.exists():
        raise SampleError(f"video not found: {path}")
    if path.is_dir():
        return ImageFolderDecoder(path, source_fps)
    if path.stat().st_size == 0:
        raise SampleError(f"empty video: the file has 0 bytes: {path}")
    check_backend(backend)
    if backend == "pyav":
        from flowlens.data.decoders.pyav import PyAVDecoder

        return PyAVDecoder(path)
    from flowlens.data.decoders.external import DecordDecoder, TorchCodecDecoder

    return DecordDecoder(path) if backend == "decord" else TorchCodecDecoder(path)
