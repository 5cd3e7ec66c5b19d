"""Residual-stream capture with TransformerLens names (`blocks.{l}.hook_resid_post`), reduced as it runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from flowlens.models.layout import TokenLayout


def resid_post_name(layer: int) -> str:
    """TransformerLens name of a block's output."""
    return f"blocks.{layer}.hook_resid_post"


class ResidualCapture:
    """Keeps each layer's output at `last`, its mean over each frame group, and optionally every video token.

    For Qwen3-VL the block output is taken before DeepStack adds visual features for the next block.
    """

    def __init__(self, layout: TokenLayout, device: torch.device, video_layers: list[int] | None = None):
        self.last = int(layout["last"][0])
        frames = torch.zeros(layout.seq_len, layout.n_frames)
        for f in range(layout.n_frames):
            frames[torch.as_tensor(layout.frame_features(f)), f] = 1.0  # feature tokens; markup left out
        frames = frames.to(device)
        self.frame_mean = (frames / frames.sum(0).clamp_min(1.0)).T  # (F, T)
        self.video = torch.as_tensor(layout["video_features"], device=device)
        self.video_layers = set(video_layers or [])
        n = layout.n_layers
        self.last_rows: list[torch.Tensor | None] = [None] * n
        self.frame_rows: list[torch.Tensor | None] = [None] * n
        self.video_rows: dict[int, torch.Tensor] = {}

    def hook(self, layer: int):
        def record(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden[0].detach()  # batch size 1
            if hidden.shape[0] != self.frame_mean.shape[1]:
                return  # a decode step, not the traced prefill
            self.last_rows[layer] = hidden[self.last].float().cpu()
            self.frame_rows[layer] = (self.frame_mean.to(hidden.device) @ hidden.float()).cpu()
            if layer in self.video_layers:
                self.video_rows[layer] = hidden[self.video.to(hidden.device)].float().cpu()

        return record

    @contextlib.contextmanager
    def attached(self, layers: nn.ModuleList) -> Iterator[None]:
        handles = [layer.register_forward_hook(self.hook(i)) for i, layer in enumerate(layers)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def resid_last(self) -> np.ndarray:
        return torch.stack(self.last_rows).numpy().astype(np.float16)  # type: ignore[arg-type]

    def resid_frame_mean(self) -> np.ndarray:
        return torch.stack(self.frame_rows).numpy().astype(np.float16)  # type: ignore[arg-type]

    def resid_video(self) -> dict[int, np.ndarray]:
        return {layer: rows.numpy().astype(np.float16) for layer, rows in sorted(self.video_rows.items())}
