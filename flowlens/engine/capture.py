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

from flowlens.models.layout import TokenLayout

DEFAULT_CHUNK_BYTES = 64 * 2**20


@dataclass
class CaptureOptions:
    """Which reductions to compute, and the probability-chunk budget in bytes."""

    flows: bool = True
    last_to_video: bool = True
    question_to_video: bool = True
    chunk_bytes: int = DEFAULT_CHUNK_BYTES


def _causal_structure(mask: torch.Tensor) -> tuple[bool, bool]:
    """(no query attends a later key, the mask is exactly the causal triangle) for a (B, 1, T, T) mask.

    The first lets a query chunk stop at its last key; the second lets it mask only its diagonal block.
    """
    if mask.dtype != torch.bool or mask.shape[0] != 1:
        return False, False
    square = mask[0, 0]
    causal = not torch.triu(square, diagonal=1).any().item()
    pure = causal and bool(torch.tril(square).sum().item() == square.shape[0] * (square.shape[0] + 1) // 2)
    return causal, pure


def key_runs(labels: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Maximal runs [a, b) of equal labels in sequence order, and the label of each run."""
    runs, run_labels = [], []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            runs.append((start, i))
            run_labels.append(labels[start])
            start = i
    return runs, run_labels


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
        self.runs, run_segment = key_runs(self.onehot.argmax(1).tolist())
        self.run_to_segment = torch.zeros(len(self.runs), self.onehot.shape[1], device=device)
        self.run_to_segment[torch.arange(len(self.runs)), torch.as_tensor(run_segment)] = 1.0
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
        causal, pure_causal = (True, True) if mask is None else _causal_structure(mask)
        chunk = max(1, self.options.chunk_bytes // (4 * heads * k_len * 3))
        out = torch.empty(batch, kv_heads, group, q_len, head_dim, dtype=query.dtype, device=query.device)
        flow = torch.zeros(heads, self.onehot.shape[1], self.onehot.shape[1], device=query.device)
        q = q * scaling  # scale the (small) queries instead of every score
        for start in range(0, q_len, chunk):
            stop = min(q_len, start + chunk)
            keys = stop if causal else k_len  # causal: queries before `stop` never see later keys
            scores = torch.matmul(q[..., start:stop, :], k[..., :keys, :].transpose(-1, -2)).float()
            if pure_causal:  # only the diagonal block holds masked entries
                diagonal = torch.ones(
                    stop - start, stop - start, dtype=torch.bool, device=query.device
                ).triu_(1)
                scores[..., start:].masked_fill_(diagonal, float("-inf"))
            elif mask.dtype == torch.bool:
                scores.masked_fill_(~mask[..., start:stop, :keys].unsqueeze(2), float("-inf"))
            else:
                scores.add_(mask[..., start:stop, :keys].unsqueeze(2).float())
            probs = torch.softmax(scores, dim=-1)
            del scores
            out[..., start:stop, :] = torch.matmul(probs.to(v.dtype), v[..., :keys, :])
            self._reduce(layer, probs.reshape(heads, stop - start, keys), start, stop, flow)
        if self.options.flows:
            self.flow_sums[layer] = flow
        return out.reshape(batch, heads, q_len, head_dim).transpose(1, 2).contiguous()

    def _reduce(self, layer: int, probs: torch.Tensor, start: int, stop: int, flow: torch.Tensor) -> None:
        """Fold one chunk of probabilities (H, C, Tk) into the layer's reductions."""
        if self.options.flows:
            keys = probs.shape[-1]
            # Mass of each query on each contiguous run of keys (slices are far cheaper than a one-hot matmul),
            # then on each segment, then summed over each target segment's queries.
            sums = [probs[..., a : min(b, keys)].sum(-1) for a, b in self.runs if a < keys]
            run_mass = torch.stack(sums, dim=-1)
            mass = torch.matmul(run_mass, self.run_to_segment[: run_mass.shape[-1]])
            flow += torch.matmul(self.onehot[start:stop].T, mass)
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
