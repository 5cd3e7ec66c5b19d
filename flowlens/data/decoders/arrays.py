"""In-memory frame arrays and folders of frame images (MVBench's `frame` data type) as frame sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowlens.errors import SampleError

DEFAULT_FPS = 1.0  # frames per second assumed for arrays and image folders that say nothing
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ArrayDecoder:
    """A (T, H, W, 3) uint8 array; frame `i` is at `i / fps` seconds."""

    def __init__(self, array: np.ndarray, fps: float | None = None):
        if array.ndim != 4 or array.shape[-1] != 3:
            raise SampleError(f"frame array must have shape (T, H, W, 3), got {tuple(array.shape)}")
        self.array = array
        self.total = int(array.shape[0])
        self.fps = float(fps or DEFAULT_FPS)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = np.ascontiguousarray(self.array[indices]).astype(np.uint8, copy=False)
        return frames, indices / self.fps

    def count(self) -> int:
        return self.total

    def close(self) -> None:
        pass


class ImageFolderDecoder:
    """A folder of frame images in file-name order (e.g. `00001.jpg`, `00002.jpg`, ...), `fps` frames a second."""

    def __init__(self, folder: Path, fps: float | None = None):
        self.folder = folder
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SampleError(f"empty video: no frame images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        self.total = len(self.files)
        self.fps = float(fps or DEFAULT_FPS)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image, UnidentifiedImageError

        frames = []
        for i in indices:
            try:
                with Image.open(self.files[int(i)]) as image:
                    frames.append(np.asarray(image.convert("RGB")))
            except (OSError, UnidentifiedImageError) as exc:
                raise SampleError(f"cannot decode frame image {self.files[int(i)]}: {exc}") from exc
        if len({f.shape for f in frames}) > 1:
            raise SampleError(f"cannot decode video {self.folder}: frame images differ in size")
        return np.stack(frames), indices / self.fps

    def count(self) -> int:
        return self.total

    def close(self) -> None:
        pass
