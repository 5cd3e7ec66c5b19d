"""Capture handler: exact attention reduced on the device as it is computed, never materialised.

Per layer and head it keeps the segment x segment and frame x frame flow (mean over a target group's
queries of the attention mass on each source group), the `last` row over video tokens, and the
question rows over video tokens (head mean). The flows come out of the fused attention kernel itself
(one-hot segment indicators appended to the values); only the few kept rows are computed explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flowlens import compat
from flowlens.models.layout import TokenLayout


@dataclass
class CaptureOptions:
    """Which reductions to compute."""

    flows: bool = True
    last_to_video: bool = True
    question_to_video: bool = True
    canary: bool = True  # check the first captured layer against transformers' SDPA (see `_check`)


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
        self.video = torch.as_tensor(layout["video_features"], device=device)
        self.last = int(layout["last"][0])
        self.rows = torch.cat([torch.as_tensor(layout["question"]), torch.tensor([self.last])]).to(device)
        n_layers = layout.n_layers
        self.flow_sums: list[torch.Tensor | None] = [None] * n_layers
        self.last_rows: list[torch.Tensor | None] = [None] * n_layers
        self.question_rows: list[torch.Tensor | None] = [None] * n_layers
        self._flow_means: np.ndarray | None = None
        self._unchecked = self.options.canary
        self._copies: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(onehot, video, rows) on `device`: a layer placed on another device (a device map) gets its own copy."""
        if device not in self._copies:
            self._copies[device] = (self.onehot.to(device), self.video.to(device), self.rows.to(device))
        return self._copies[device]

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
        if batch != 1 or q_len != self.layout.seq_len or key.shape[2] != q_len:
            return None  # not the prefill of the traced sample (e.g. a decode step): plain SDPA
        layer = int(module.layer_idx)
        gqa = key.shape[1] != heads
        if self.options.flows:
            out, mass = self._output_and_mass(query, key, value, mask, scaling, gqa)
            onehot = self._on(query.device)[0]
            self.flow_sums[layer] = torch.einsum("ts,hta->hsa", onehot, mass[0]).to(self.onehot.device)
            if self._unchecked:
                self._check(module, query, key, value, mask, scaling, out, mass)
        else:
            out = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, is_causal=mask is None, scale=scaling, enable_gqa=gqa
            )
        if self.options.last_to_video or self.options.question_to_video:
            self._record_rows(layer, query, key, mask, scaling)
        return out.transpose(1, 2).contiguous()

    def _output_and_mass(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        scaling: float,
        gqa: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention output and each query's mass on each segment, from one fused attention call.

        The segment mass of query q is softmax(q K^T) @ onehot: attention with one-hot "values". Appending
        the one-hot columns to V (and zero columns to Q and K, which leaves the scores unchanged) gives
        both in one fused SDPA kernel, so no probability matrix is ever materialised. In fp32 the mass is
        exact to float rounding; for half-precision models it is computed in a separate fp32 call.
        """
        segments = self.onehot.shape[1]
        kv_heads = key.shape[1]
        local = self._on(query.device)[0]
        causal = mask is None
        if value.dtype == torch.float32:
            onehot = local.expand(1, kv_heads, -1, -1)
            fused = F.scaled_dot_product_attention(
                F.pad(query, (0, segments)),
                F.pad(key, (0, segments)),
                torch.cat([value, onehot], dim=-1),
                attn_mask=mask,
                is_causal=causal,
                scale=scaling,
                enable_gqa=gqa,
            )
            return fused[..., : value.shape[-1]], fused[..., value.shape[-1] :]
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, is_causal=causal, scale=scaling, enable_gqa=gqa
        )
        float_mask = None if mask is None or mask.dtype == torch.bool else mask.float()
        mass = F.scaled_dot_product_attention(
            query.float(),
            key.float(),
            local.expand(1, kv_heads, -1, -1),
            attn_mask=mask if float_mask is None else float_mask,
            is_causal=causal,
            scale=scaling,
            enable_gqa=gqa,
        )
        return out, mass

    def _check(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        scaling: float,
        out: torch.Tensor,
        mass: torch.Tensor,
    ) -> None:
        """Canary, once per sample (first captured layer): every query's attention mass over the segments
        sums to 1, and the handler's output equals transformers' own SDPA attention. Costs one SDPA call."""
        self._unchecked = False
        total = mass[0].sum(-1)
        mass_error = float((total - 1).abs().max())
        if not mass_error <= 1e-4:
            raise compat.CompatError(
                "capture (attention mass)",
                f"captured attention rows sum to 1 within {mass_error:.3g}, not 1e-4",
            )
        reference, _ = compat.sdpa_attention(module, query, key, value, mask, scaling=scaling)
        ours = out.transpose(1, 2).float()
        error = float((ours - reference.float()).abs().max())
        scale = max(1.0, float(reference.abs().max()))
        tolerance = (1e-5 if value.dtype in (torch.float32, torch.float64) else 2e-2) * scale
        if not error <= tolerance:
            raise compat.CompatError(
                "capture (attention output)",
                f"the capture's attention output differs from transformers' SDPA by {error:.3g} "
                f"(tolerance {tolerance:.3g})",
            )

    def _record_rows(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float
    ) -> None:
        """Explicit probabilities of the few rows kept whole: `last` and the question tokens, over video keys."""
        _, video, rows = self._on(query.device)
        keys = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)[0].float()  # (H, T, D)
        scores = torch.matmul(query[0, :, rows].float(), keys.transpose(-1, -2)) * scaling  # (H, R, T)
        if mask is None:
            allowed = torch.arange(key.shape[2], device=key.device)[None, :] <= rows[:, None]
            scores = scores.masked_fill(~allowed, float("-inf"))
        elif mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask[0, :, rows], float("-inf"))
        else:
            scores = scores + mask[0, :, rows].float()
        probs = torch.softmax(scores, dim=-1)[:, :, video]  # (H, R, V)
        home = self.onehot.device  # results gather on one device, whatever device each layer runs on
        if self.options.last_to_video:
            self.last_rows[layer] = probs[:, -1].to(home, copy=True)
        if self.options.question_to_video:
            self.question_rows[layer] = probs[:, :-1].mean(0).to(home)

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
