"""Capture handler: exact attention reduced on the device as it is computed, never materialised.

Per layer and head it keeps the segment x segment and frame x frame flow (mean over a target group's
queries of the attention mass on each source group), the `last` row over video tokens, and the
question rows over video tokens (head mean). The flows come out of the fused attention kernel itself
(one-hot segment indicators appended to the values); only the few kept rows are computed explicitly.

Optional reductions for token scorers (`flowlens.pruning`), each off unless asked for:
- `received_attention`: per layer and head, the attention each video token receives summed over a query set
  (`RECEIVED_QUERIES`), from explicit probabilities computed a chunk of query rows at a time;
- `rollout`: attention rollout (Abnar & Zuidema) restricted to the video columns, R_l = (0.5 A_l + 0.5 I) R_{l-1}
  with A_l the head-mean attention and R_{-1} = I[:, video]: the running (T, V) matrix R is the *values* of a
  fused SDPA call, so A_l R comes out of the kernel and no T x T matrix exists; rows of R over `ROLLOUT_QUERIES`
  are kept per layer;
- `value_norms`: the L1 norm of each video token's value vector, mean over heads.
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
    received_attention: bool = False
    rollout: bool = False
    value_norms: bool = False
    canary: bool = True  # check the first captured layer against transformers' SDPA (see `_check`)


# Query sets of the optional reductions (the `query_set` axis of `received_attention` and `rollout`).
RECEIVED_QUERIES = ("all", "text", "question")
ROLLOUT_QUERIES = ("last", "question", "text", "all")
CHUNK_BYTES = 256 << 20  # explicit probabilities / rollout outputs: at most about this many bytes at a time


def query_positions(layout: TokenLayout, name: str) -> np.ndarray:
    """Positions of a query set: `all` (every position), `text` (every position after the video span: the
    text that can read the video), `question`, `last`."""
    if name == "all":
        return np.arange(layout.seq_len)
    if name == "text":
        video = layout["video"]
        start = int(video.max()) + 1 if video.size else 0
        return np.arange(start, layout.seq_len)
    if name in ("question", "last"):
        return np.asarray(layout[name])
    raise ValueError(f"unknown query set {name!r}")


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
        self.received: list[torch.Tensor | None] = [None] * n_layers
        self.rollout_rows: list[torch.Tensor | None] = [None] * n_layers
        self.value_norms: list[torch.Tensor | None] = [None] * n_layers
        self._rollout: torch.Tensor | None = None  # the running (T, V) rollout matrix
        self._rollout_layer = -1
        if self.options.received_attention:
            sets = [query_positions(layout, name) for name in RECEIVED_QUERIES]
            self.query_weights = torch.zeros(len(sets), layout.seq_len)
            for i, positions in enumerate(sets):
                self.query_weights[i, torch.as_tensor(positions, dtype=torch.long)] = 1.0
            self.query_weights = self.query_weights.to(device)
        self._flow_means: np.ndarray | None = None
        self._unchecked = self.options.canary

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
            self.flow_sums[layer] = torch.einsum("ts,hta->hsa", self.onehot, mass[0])
            if self._unchecked:
                self._check(module, query, key, value, mask, scaling, out, mass)
        else:
            out = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, is_causal=mask is None, scale=scaling, enable_gqa=gqa
            )
        if self.options.last_to_video or self.options.question_to_video:
            self._record_rows(layer, query, key, mask, scaling)
        if self.options.received_attention:
            self._record_received(layer, query, key, mask, scaling)
        if self.options.rollout:
            self._record_rollout(layer, query, key, mask, scaling)
        if self.options.value_norms:
            self.value_norms[layer] = value[0][:, self.video].float().abs().sum(-1).mean(0)
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
        causal = mask is None
        if value.dtype == torch.float32:
            onehot = self.onehot.expand(1, kv_heads, -1, -1)
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
            self.onehot.expand(1, kv_heads, -1, -1),
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

    @staticmethod
    def _probabilities(
        query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None, scaling: float, rows: torch.Tensor
    ) -> torch.Tensor:
        """(H, R, T) fp32 attention probabilities of the query rows `rows`; `keys` is (H, T, D) fp32."""
        scores = torch.matmul(query[0, :, rows].float(), keys.transpose(-1, -2)) * scaling  # (H, R, T)
        if mask is None:
            allowed = torch.arange(keys.shape[1], device=keys.device)[None, :] <= rows[:, None]
            scores = scores.masked_fill(~allowed, float("-inf"))
        elif mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask[0, :, rows], float("-inf"))
        else:
            scores = scores + mask[0, :, rows].float()
        return torch.softmax(scores, dim=-1)

    @staticmethod
    def _keys(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)[0].float()  # (H, T, D)

    def _record_received(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float
    ) -> None:
        """Attention each video token receives, summed over each query set (`RECEIVED_QUERIES`), per head.

        Probabilities are computed explicitly a chunk of query rows at a time (at most `CHUNK_BYTES` of
        scores), so working memory is H x chunk x T, never H x T x T.
        """
        keys = self._keys(query, key)
        heads, t = keys.shape[0], keys.shape[1]
        chunk = max(1, CHUNK_BYTES // (heads * t * 4 * 3))
        total = torch.zeros(heads, len(RECEIVED_QUERIES), self.video.numel(), device=keys.device)
        for start in range(0, t, chunk):
            rows = torch.arange(start, min(t, start + chunk), device=keys.device)
            probs = self._probabilities(query, keys, mask, scaling, rows)[:, :, self.video]  # (H, C, V)
            total += torch.einsum("hcv,sc->hsv", probs, self.query_weights[:, rows])
        self.received[layer] = total

    def _record_rollout(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float
    ) -> None:
        """One rollout step, R <- 0.5 * mean_h(A_h) R + 0.5 * R, with R (T, V) as the values of fused SDPA calls.

        The query heads of one key/value head share a call (in groups small enough that the (heads, T, V)
        output stays near `CHUNK_BYTES`); everything is fp32 whatever the model dtype.
        """
        if layer != self._rollout_layer + 1:
            raise RuntimeError(
                f"rollout expects the layers in order; got layer {layer} after {self._rollout_layer}"
            )
        t, heads, kv_heads = query.shape[2], query.shape[1], key.shape[1]
        if self._rollout is None:
            self._rollout = torch.zeros(t, self.video.numel(), dtype=torch.float32, device=query.device)
            self._rollout[self.video, torch.arange(self.video.numel(), device=query.device)] = 1.0
        rollout = self._rollout
        float_mask = mask if mask is None or mask.dtype == torch.bool else mask.float()
        group = heads // kv_heads
        step = max(1, min(group, CHUNK_BYTES // max(1, t * rollout.shape[1] * 4)))
        mixed = torch.zeros_like(rollout)
        for g in range(kv_heads):
            k = key[:, g : g + 1].float()
            for h0 in range(g * group, (g + 1) * group, step):
                h1 = min(h0 + step, (g + 1) * group)
                out = F.scaled_dot_product_attention(
                    query[:, h0:h1].float(),
                    k,
                    rollout[None, None],
                    attn_mask=float_mask,
                    is_causal=mask is None,
                    scale=scaling,
                    enable_gqa=h1 - h0 > 1,
                )
                mixed += out[0].sum(0)
        self._rollout = 0.5 * mixed / heads + 0.5 * rollout
        self._rollout_layer = layer
        sets = [torch.as_tensor(query_positions(self.layout, name)) for name in ROLLOUT_QUERIES]
        self.rollout_rows[layer] = torch.stack(
            [self._rollout[rows.to(query.device)].mean(0) for rows in sets]
        )

    def _record_rows(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float
    ) -> None:
        """Explicit probabilities of the few rows kept whole: `last` and the question tokens, over video keys."""
        probs = self._probabilities(query, self._keys(query, key), mask, scaling, self.rows)
        probs = probs[:, :, self.video]  # (H, R, V)
        if self.options.last_to_video:
            self.last_rows[layer] = probs[:, -1].clone()
        if self.options.question_to_video:
            self.question_rows[layer] = probs[:, :-1].mean(0)

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

    def received_attention(self) -> np.ndarray:
        """(L, H, 3, V) attention each video token receives, summed over the queries of each `RECEIVED_QUERIES` set."""
        self._check_complete(self.received, "received_attention")
        return torch.stack(self.received).cpu().numpy().astype(np.float32)  # type: ignore[arg-type]

    def rollout(self) -> np.ndarray:
        """(L, 4, V) rows of the video columns of the rollout after each layer, mean over each `ROLLOUT_QUERIES` set."""
        self._check_complete(self.rollout_rows, "rollout")
        return torch.stack(self.rollout_rows).cpu().numpy().astype(np.float32)  # type: ignore[arg-type]

    def value_norm(self) -> np.ndarray:
        """(L, V) L1 norm of each video token's value vector, mean over heads."""
        self._check_complete(self.value_norms, "value_norm")
        return torch.stack(self.value_norms).cpu().numpy().astype(np.float32)  # type: ignore[arg-type]

    @staticmethod
    def _check_complete(per_layer: list, what: str) -> None:
        missing = [i for i, x in enumerate(per_layer) if x is None]
        if missing:
            raise RuntimeError(f"no {what} captured for layers {missing}")
