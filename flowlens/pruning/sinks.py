"""Sink and padding tokens among the video tokens, and masking them out of any scorer's scores.

Sinks (`received_sinks`): a token is an outlier in one (layer, head) when the attention it receives is at
least `ratio` times the median over the video tokens there; a sink is an outlier in at least `share` of
the (layer, head) pairs. Massive residual norms (`norm_sinks`): the token's residual L2 norm is at least
`ratio` times the median video-token norm at some stored layer. Padding (`letterbox_pad_fraction`): the
share of each cell that a pad-to-square processor (LLaVA-1.5's expand2square) filled with padding; the
video processors of the seven built-in families resize or crop instead of padding (`FAMILY_PADDING`).
"""

from __future__ import annotations

import numpy as np

from flowlens.errors import FlowlensError

# How each built-in family's video processor fits a frame to its grid (none of them pads video frames).
FAMILY_PADDING = {
    "llava_next_video": "none",  # resize shortest edge + centre crop (AnyRes tiles are for images only)
    "llava_onevision": "none",  # each frame resized to the square input size (no AnyRes for video)
    "qwen2_vl": "none",  # smart_resize to multiples of the patch size
    "qwen2_5_vl": "none",
    "qwen3_vl": "none",
    "video_llama_3": "none",  # resized to patch multiples
    "internvl": "none",  # each frame resized to the tile size
}
PADDING_MODES = ("auto", "none", "letterbox")


def received_sinks(received: np.ndarray, ratio: float = 10.0, share: float = 0.5) -> np.ndarray:
    """bool[V]: outlier received attention (>= ratio x the (layer, head) median) in >= `share` of pairs.

    `received`: (..., V) received attention, every leading axis (layers, heads) one pair.
    """
    if ratio <= 0 or not 0 < share <= 1:
        raise FlowlensError(f"sink detection: ratio > 0 and 0 < share <= 1, got {ratio}, {share}")
    flat = np.asarray(received, dtype=np.float64).reshape(-1, np.shape(received)[-1])
    median = np.median(flat, axis=1, keepdims=True)
    outlier = (flat >= ratio * median) & (flat > 0)
    return outlier.mean(axis=0) >= share


def norm_sinks(norms: np.ndarray, ratio: float = 5.0) -> np.ndarray:
    """bool[V]: residual norm >= ratio x the median video-token norm at any stored layer (`norms`: (L, V))."""
    if ratio <= 0:
        raise FlowlensError(f"massive-norm detection: ratio > 0, got {ratio}")
    norms = np.atleast_2d(np.asarray(norms, dtype=np.float64))
    if not norms.size:
        return np.zeros(0, dtype=bool)
    return (norms >= ratio * np.median(norms, axis=1, keepdims=True)).any(axis=0)


def letterbox_pad_fraction(height: int, width: int, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) share of each grid cell lying in the padding of a frame padded to a centred square."""
    if min(height, width, rows, cols) <= 0:
        raise FlowlensError(f"padding geometry needs positive sizes, got {height}x{width} on {rows}x{cols}")
    side = max(height, width)
    top, left = (side - height) / 2, (side - width) / 2

    def inside(n: int, start: float, length: float) -> np.ndarray:
        edges = np.linspace(0, side, n + 1)
        lo, hi = np.maximum(edges[:-1], start), np.minimum(edges[1:], start + length)
        return np.clip(hi - lo, 0, None) / np.diff(edges)

    return 1.0 - np.outer(inside(rows, top, height), inside(cols, left, width))


def pad_fractions(
    cells: np.ndarray, family: str, mode: str = "auto", frame_size: tuple[int, int] | None = None
) -> np.ndarray:
    """float[V] pad fraction of each video token (0 for separators) from the preprocessing geometry.

    `auto` uses the family's processor (`FAMILY_PADDING`); `letterbox` needs the frame (height, width).
    """
    if mode not in PADDING_MODES:
        raise FlowlensError(f"unknown padding mode {mode!r}; modes: {', '.join(PADDING_MODES)}")
    if mode == "auto":
        mode = FAMILY_PADDING.get(family, "none")
    cells = np.asarray(cells, dtype=np.int64)
    out = np.zeros(cells.shape[0])
    if mode == "none" or not cells.size:
        return out
    if frame_size is None:
        raise FlowlensError(
            "letterbox padding needs each frame's original size: sample metadata `frame_height` and "
            "`frame_width`"
        )
    placed = cells[:, 1] >= 0
    rows, cols = int(cells[placed, 1].max()) + 1, int(cells[placed, 2].max()) + 1
    grid = letterbox_pad_fraction(int(frame_size[0]), int(frame_size[1]), rows, cols)
    out[placed] = grid[cells[placed, 1], cells[placed, 2]]
    return out


def mask_scores(scores: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """Scores with masked tokens set below every other score (min - 1 - |range|), so they are kept last."""
    scores = np.asarray(scores, dtype=np.float64)
    masked = np.asarray(masked, dtype=bool)
    if masked.shape != scores.shape:
        raise FlowlensError(f"{masked.size} mask values for {scores.size} scores")
    if not masked.any():
        return scores
    low = float(scores.min()) - 1.0 - float(np.ptp(scores))
    return np.where(masked, low, scores)
