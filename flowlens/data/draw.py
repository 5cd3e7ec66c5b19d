"""Solid-colour shapes on numpy frames: the drawing primitives of the synthetic benchmark."""

from __future__ import annotations

import numpy as np

# Saturated, mutually distinct colours a tiny vision tower can tell apart after 2x2 pooling.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 190, 50),
    "blue": (35, 70, 235),
    "yellow": (240, 225, 30),
    "purple": (150, 40, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "cyan": (30, 215, 225),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
BACKGROUND: tuple[int, int, int] = (96, 96, 96)


def blank(n_frames: int, size: int, color: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """`n_frames` frames of `size` x `size` filled with one colour, (T, H, W, 3) uint8."""
    video = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    video[...] = np.asarray(color, dtype=np.uint8)
    return video


def shape_mask(shape: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Boolean (size, size) mask of `shape` centred at (cx, cy) with half-extent `radius` pixels."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (np.abs(dx) <= radius * 0.9) & (np.abs(dy) <= radius * 0.9)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= radius * 1.15
    if shape == "triangle":  # apex up, base at the bottom
        rel = (dy + radius) / (2 * radius)  # 0 at the apex, 1 at the base
        return (rel >= 0) & (rel <= 1) & (np.abs(dx) <= rel * radius)
    raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")


def draw(frame: np.ndarray, shape: str, color: str, cx: float, cy: float, radius: float) -> None:
    """Paint a solid shape of a named colour onto one (H, W, 3) frame in place."""
    frame[shape_mask(shape, frame.shape[0], cx, cy, radius)] = COLORS[color]
