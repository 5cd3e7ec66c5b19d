"""Pixel temporal novelty (DTD on pixels): how much each video token's image block changed since the
previous frame group.

For a video feature token with cell (group f, row r, col c) of `layout.video_cells`, the novelty is the mean
absolute difference, over the block's pixels and the three RGB channels scaled to [0, 1], between the
block of frame group f and the same block of group f - 1.

- The block: the processor maps the whole frame onto the group's token grid `layout.frame_grid[f] =
  (rows, cols)` (as `flowlens.report.video` also relies on), so cell (r, c) of an H x W frame covers pixel
  rows [floor(r * H / rows), floor((r + 1) * H / rows)) and columns [floor(c * W / cols), floor((c + 1) *
  W / cols)). Floor on both bounds tiles the frame exactly (no pixel in two cells, none left out); a grid
  finer than the frame (rows > H) would leave a block empty, so a block is widened to at least its first
  pixel.
- Frame groups built from several sampled frames (Qwen2-VL's temporal patches: `layout.frame_sources`)
  are compared as the pixel-wise mean of their source frames; source indices past the sampled frames
  (none today) are skipped.
- Tokens of group 0 (no previous group) and separator tokens (row = col = -1, no block) score 1.0, the
  maximum, so a threshold or top-k on novelty keeps them (the embedding mode gives them its maximum, 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from flowlens.errors import FlowlensError

if TYPE_CHECKING:
    from flowlens.models.layout import TokenLayout

MAX_NOVELTY = 1.0


def block_bounds(index: int, cells: int, size: int) -> tuple[int, int]:
    """Pixel bounds [start, stop) of cell `index` of `cells` along an axis of `size` pixels (floor both)."""
    start = min(index * size // cells, size - 1)
    stop = max((index + 1) * size // cells, start + 1)
    return start, stop


def group_images(frames: np.ndarray, groups: list[list[int]]) -> list[np.ndarray]:
    """Per frame group, the (H, W, 3) float64 image in [0, 1]: the mean of the group's source frames."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise FlowlensError(f"pixel novelty needs (n, H, W, 3) frames, got shape {frames.shape}")
    images = []
    for group, sources in enumerate(groups):
        present = [int(s) for s in sources if 0 <= int(s) < len(frames)]
        if not present:
            raise FlowlensError(
                f"frame group {group} is built from frames {list(sources)}, but only {len(frames)} were sampled"
            )
        images.append(frames[present].astype(np.float64).mean(axis=0) / 255.0)
    return images


def pixel_novelty(
    frames: np.ndarray, layout: TokenLayout, groups: list[list[int]] | None = None
) -> np.ndarray:
    """(V,) float32 pixel temporal novelty of every video feature token (see the module docstring).

    `frames` (n, H, W, 3) uint8 are the sampled frames as the model saw them (`adapter.sample_frames`);
    `groups` the sampled-frame indices of each frame group (default `layout.frame_sources`).
    """
    groups = layout.frame_sources if groups is None else groups
    cells = np.asarray(layout.video_cells)
    out = np.full(len(cells), MAX_NOVELTY, dtype=np.float64)
    if len(cells) == 0:
        return out.astype(np.float32)
    used = sorted({int(f) for f in cells[:, 0]})
    if used and used[-1] >= len(groups):
        raise FlowlensError(f"video_cells name frame group {used[-1]}, but the layout has {len(groups)}")
    images = group_images(frames, groups)
    height, width = images[0].shape[:2]
    for group in used:
        if group == 0:
            continue
        change = np.abs(images[group] - images[group - 1]).mean(axis=-1)  # (H, W): mean over RGB
        rows, cols = (int(x) for x in layout.frame_grid[group])
        for i in np.flatnonzero((cells[:, 0] == group) & (cells[:, 1] >= 0) & (cells[:, 2] >= 0)):
            r0, r1 = block_bounds(int(cells[i, 1]), rows, height)
            c0, c1 = block_bounds(int(cells[i, 2]), cols, width)
            out[i] = change[r0:r1, c0:c1].mean()
    return out.astype(np.float32)
