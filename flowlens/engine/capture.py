"""Capture handler: exact attention, chunked over queries, reduced on the device as it is computed.

Per layer and head it keeps the segment x segment and frame x frame flow (mean over a target group's
queries of the attention mass on each source group), the `last` row over video tokens, and the
question rows over video tokens (head mean). Only one chunk of probabilities is alive at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from flowlens.engine.backend import causal_bool_mask
from flowlens.models.layout import TokenLayout

DEFAULT_CHUNK_BYTES = 64 * 2**20


@dataclass
class CaptureOptions:
    """Which reductions to compute, and the probability-chunk budget in bytes."""

    flows: bool = True
    last_to_video: bool = True
    question_to_video: bool = True
    chunk_bytes: int = DEFAULT_CHUNK_BYTES


def _is_causal(mask: torch.Tensor) -> bool:
    """Whether no query may attend a later key (then a query chunk needs only the keys up to its end)."""
    if mask.dtype == torch.bool:
        return not torch.triu(mask[0, 0], diagonal=1).any().item()
    return bool((torch.triu(mask[0, 0], diagonal=1) <= torch.finfo(mask.dtype).min / 2).all().item())


def group_matrix(layout: TokenLayout, names: list[str], device: torch.device) -> torch.Tensor:
    """(T, G) float32 one-hot: column g marks the positions of group `names[g]`."""
    matrix = torch.zeros(layout.seq_len, len(names), dtype=torch.float32)
    for g, name in enumerate(names):
        matrix[torch.as_tensor(layout[name]), g] = 1.0
    return matrix.to(device)


class FlowCapture:
    """An attention handler that records reductions of every language layer's attention (batch size 1)."""

    def __init__(self, layout: TokenLayout, device: torch.device, options: CaptureOptions | None = None):
        self.layout = layout
        self.options = options or CaptureOptions()
        self.onehot = group_matrix(layout, list(layout.partition), device)  # (T, S); frames are segments too
        self.frame_index = [layout.partition.index(name) for name in layout.frame_groups]
        self.counts = self.onehot.sum(0).clamp_min(1.0)
        self.video = torch.as_tensor(layout["video"], device=device)
        self.question = torch.as_tensor(layout["question"], device=device)
        self.last = int(layout["last"][0])
        n_layers = layout.n_layers
        self.flow_sums: list[torch.Tensor | None] = [None] * n_layers
        self.last_rows: list[torch.Tensor | None] = [None] * n_layers
        self.question_rows: list[torch.Tensor | None] = [None] * n_layers
        self._flow_means: np.ndarray | None = None

    # ------------------------------------------------------------------ handler
    def __call__(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        scaling: float,
    ) -> torch.Tensor | None:
        batch, heads, q_len, head_dim = query.shape
        k_len = key.shape[2]
        if batch != 1 or q_len != self.layout.seq_len or k_len != q_len:
            return None  # not the prefill of the traced sample (e.g. a decode step): plain SDPA
        layer = int(module.layer_idx)
        kv_heads = key.shape[1]
        group = heads // kv_heads
        q = query.reshape(batch, kv_heads, group, q_len, head_dim)
        k = key.unsqueeze(2)
        v = value.unsqueeze(2)
        if mask is None:
            mask = causal_bool_mask(q_len, k_len, query.device)
        causal = _is_causal(mask)
        chunk = max(1, self.options.chunk_bytes // (4 * heads * k_len * 3))
        out = torch.empty(batch, kv_heads, group, q_len, head_dim, dtype=query.dtype, device=query.device)
        flow = torch.zeros(heads, self.onehot.shape[1], self.onehot.shape[1], device=query.device)
        # One matmul gives both the output and each query's mass per key segment: P @ [V | onehot].
        fused = self.options.flows and value.dtype == torch.float32
        if fused:
            v = torch.cat([v, self.onehot.expand(batch, kv_heads, 1, -1, -1)], dim=-1)
        for start in range(0, q_len, chunk):
            stop = min(q_len, start + chunk)
            keys = stop if causal else k_len  # causal: queries before `stop` never see later keys
            probs = self._probs(
                q[..., start:stop, :], k[..., :keys, :], mask[..., start:stop, :keys], scaling, start
            )
            product = torch.matmul(probs.to(v.dtype), v[..., :keys, :])
            out[..., start:stop, :] = product[..., :head_dim]
            flat = probs.reshape(heads, stop - start, keys)
            mass = product[..., head_dim:].reshape(heads, stop - start, -1) if fused else None
            self._reduce(layer, flat, start, stop, flow, mass)
        if self.options.flows:
            self.flow_sums[layer] = flow
        return out.reshape(batch, heads, q_len, head_dim).transpose(1, 2).contiguous()

    @staticmethod
    def _probs(
        q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, scaling: float, start: int
    ) -> torch.Tensor:
        """Softmax probabilities (fp32) for a chunk of queries starting at `start`, as eager attention computes them."""
        scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scaling)
        if mask.dtype == torch.bool:
            if mask[
                ..., :start
            ].all():  # keys before the chunk all allowed: only the diagonal block is masked
                scores[..., start:].masked_fill_(~mask[..., start:].unsqueeze(2), float("-inf"))
            else:
                scores.masked_fill_(~mask.unsqueeze(2), float("-inf"))
        else:
            scores.add_(mask.unsqueeze(2).float())
        return torch.softmax(scores, dim=-1)

    def _reduce(
        self,
        layer: int,
        probs: torch.Tensor,
        start: int,
        stop: int,
        flow: torch.Tensor,
        mass: torch.Tensor | None,
    ) -> None:
        """Fold one chunk of probabilities (H, C, Tk) into the layer's reductions."""
        if self.options.flows:
            if mass is None:  # (H, C, S): mass of each query on each key segment
                mass = torch.matmul(probs, self.onehot[: probs.shape[-1]])
            flow += torch.matmul(self.onehot[start:stop].T, mass)  # summed over each target segment's queries
        if self.options.last_to_video and start <= self.last < stop:
            self.last_rows[layer] = probs[:, self.last - start, self.video].clone()
        if self.options.question_to_video:
            rows = self.question[(self.question >= start) & (self.question < stop)]
            if rows.numel():
                block = probs[:, rows - start][:, :, self.video].mean(0)
                previous = self.question_rows[layer]
                self.question_rows[layer] = block if previous is None else torch.cat([previous, block])

    # ------------------------------------------------------------------ results
    def segment_flow(self) -> np.ndarray:
        """(L, H, S, S) mean mass of a target segment's queries on each source segment."""
        return self._flows()

    def frame_flow(self) -> np.ndarray:
        """(L, H, F, F) the same over frame groups (a sub-block: frame groups are segments)."""
        index = np.asarray(self.frame_index)
        return np.ascontiguousarray(self._flows()[:, :, index[:, None], index[None, :]])

    def _flows(self) -> np.ndarray:
        if self._flow_means is None:
            self._check_complete(self.flow_sums, "flows")
            stacked = torch.stack(self.flow_sums)  # type: ignore[arg-type]
            self._flow_means = (stacked / self.counts[None, None, :, None]).cpu().numpy().astype(np.float32)
        return self._flow_means

    def last_to_video(self) -> np.ndarray:
        """(L, H, V) the `last` query's attention on every video token."""
        self._check_complete(self.last_rows, "last_to_video")
        return torch.stack(self.last_rows).cpu().numpy().astype(np.float32)  # type: ignore[arg-type]

    def question_to_video(self) -> np.ndarray:
        """(L, Q, V) each question token's attention on every video token, mean over heads."""
        self._check_complete(self.question_rows, "question_to_video")
        return torch.stack(self.question_rows).cpu().numpy().astype(np.float32)  # type: ignore[arg-type]

    @staticmethod
    def _check_complete(per_layer: list, what: str) -> None:
        missing = [i for i, x in enumerate(per_layer) if x is None]
        if missing:
            raise RuntimeError(f"no {what} captured for layers {missing}")
