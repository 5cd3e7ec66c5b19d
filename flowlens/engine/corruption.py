"""Corrupted videos for activation patching: the same question on perturbed frames, as a spec that round-trips.

A `Corruption` acts on the sampled frames only (pixels); frame indices and timestamps stay, so the prompt
and therefore the token layout are the clean one's (checked when the corrupted input is prepared).
Specs: `reverse`, `shuffle[:SEED]`, `replace:F=S` (frame F becomes a copy of frame S), `mask:F` (frame F
black), `noise:SIGMA[:SEED]` (Gaussian pixel noise of std SIGMA in 0-255 units, clipped), `video:PATH`
(a different video: as many frames sampled from PATH, resized to the clean frames' size).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowlens.data.video import Frames
from flowlens.errors import FlowlensError

KINDS = ("reverse", "shuffle", "replace", "mask", "noise", "video")
_USAGE = "reverse, shuffle[:SEED], replace:F=S, mask:F, noise:SIGMA[:SEED] or video:PATH"


@dataclass(frozen=True)
class Corruption:
    """One perturbation of the sampled frames (see the module docstring for the spec syntax)."""

    kind: str
    frame: int | None = None
    source: int | None = None
    sigma: float = 0.0
    seed: int = 0
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> Corruption:
        """`reverse`, `shuffle:3`, `replace:3=0`, `mask:5`, `noise:40:1` -> Corruption."""
        kind, _, rest = str(text).strip().partition(":")
        if kind == "video" and rest:  # a path may hold colons
            return cls("video", path=rest)
        parts = rest.split(":") if rest else []
        try:
            if kind == "reverse" and not parts:
                return cls("reverse")
            if kind == "shuffle" and len(parts) <= 1:
                return cls("shuffle", seed=int(parts[0]) if parts else 0)
            if kind == "replace" and len(parts) == 1 and "=" in parts[0]:
                frame, source = parts[0].split("=")
                return cls("replace", frame=int(frame), source=int(source))
            if kind == "mask" and len(parts) == 1:
                return cls("mask", frame=int(parts[0]))
            if kind == "noise" and 1 <= len(parts) <= 2:
                return cls("noise", sigma=float(parts[0]), seed=int(parts[1]) if len(parts) == 2 else 0)
        except ValueError:
            pass
        raise FlowlensError(f"corruption {text!r}: use one of {_USAGE}")

    def __str__(self) -> str:
        if self.kind == "shuffle":
            return f"shuffle:{self.seed}"
        if self.kind == "replace":
            return f"replace:{self.frame}={self.source}"
        if self.kind == "mask":
            return f"mask:{self.frame}"
        if self.kind == "noise":
            return f"noise:{self.sigma:g}:{self.seed}"
        if self.kind == "video":
            return f"video:{self.path}"
        return self.kind

    def to_data(self) -> dict[str, Any]:
        """The spec as plain data (what the run file stores)."""
        return {"spec": str(self), **dataclasses.asdict(self)}

    def permutation(self, n: int) -> np.ndarray:
        """Which clean frame each corrupted frame shows (identity for pixel-level kinds)."""
        order = np.arange(n)
        if self.kind == "reverse":
            return order[::-1].copy()
        if self.kind == "shuffle":
            rng = np.random.default_rng(self.seed)
            for _ in range(100):  # a shuffle that leaves the order unchanged would corrupt nothing
                perm = rng.permutation(n)
                if n < 2 or not np.array_equal(perm, order):
                    return perm
        if self.kind == "replace":
            self._check_frame(self.frame, n)
            self._check_frame(self.source, n)
            order[self.frame] = self.source
        return order

    def apply(self, frames: Frames) -> Frames:
        """Corrupted copy of `frames` (pixels only; indices and timestamps unchanged)."""
        pixels = frames.frames
        n = pixels.shape[0]
        if self.kind in ("reverse", "shuffle", "replace"):
            pixels = pixels[self.permutation(n)]
        elif self.kind == "mask":
            self._check_frame(self.frame, n)
            pixels = pixels.copy()
            pixels[self.frame] = 0
        elif self.kind == "noise":
            rng = np.random.default_rng(self.seed)
            noisy = pixels.astype(np.float32) + rng.normal(0.0, self.sigma, pixels.shape)
            pixels = np.clip(np.rint(noisy), 0, 255).astype(pixels.dtype)
        elif self.kind == "video":
            pixels = self._other_video(n, pixels.shape[1:3])
        else:
            raise FlowlensError(f"corruption kind {self.kind!r}: use one of {', '.join(KINDS)}")
        return dataclasses.replace(frames, frames=np.ascontiguousarray(pixels))

    def _other_video(self, n: int, size: tuple[int, int]) -> np.ndarray:
        """`n` frames of the video at `path` (sampled as a sample's are), resized to `size` (H, W)."""
        import torch
        import torch.nn.functional as F

        from flowlens.data.video import read_frames

        try:
            other = read_frames(str(self.path), n=n).frames
        except FlowlensError as exc:
            raise FlowlensError(f"corruption {self}: {exc}") from exc
        if other.shape[0] != n:
            raise FlowlensError(f"corruption {self}: {other.shape[0]} frames in the video, {n} needed")
        if other.shape[1:3] != tuple(size):
            tensor = torch.from_numpy(np.ascontiguousarray(other)).permute(0, 3, 1, 2).float()
            resized = F.interpolate(
                tensor, size=tuple(size), mode="bilinear", antialias=True, align_corners=False
            )
            other = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return other

    def _check_frame(self, index: int | None, n: int) -> None:
        if index is None or not 0 <= index < n:
            raise FlowlensError(f"corruption {self}: frame {index} is not one of the {n} sampled frames")
