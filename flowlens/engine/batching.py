"""Batches of one prepared input: processor outputs repeated along their first axis, for every family.

Processor outputs differ per family: LLaVA stacks videos as (B, F, C, H, W); Qwen-VL, VideoLLaMA3 and
InternVL flatten patches or frames of every video into one leading axis next to per-video rows
(`video_grid_thw`, `second_per_grid_ts`, `video_merge_sizes`, `video_compression_mask`). Concatenating
every tensor with copies of itself along axis 0 is the batch of `n` identical samples in every case
(tested per family: each row's logits equal the batch-1 logits).
"""

from __future__ import annotations

from typing import Any

import torch


def repeat_inputs(inputs: Any, n: int) -> dict[str, Any]:
    """`inputs` (a batch-1 `BatchFeature` or dict) as a batch of `n` identical samples."""
    out: dict[str, Any] = {}
    for key, value in dict(inputs).items():
        out[key] = torch.cat([value] * n, dim=0) if isinstance(value, torch.Tensor) and n > 1 else value
    return out
