"""Quantities some scorers need that a plain trace does not keep, from one extra forward (batch size 1).

`AttentionExtras` is an attention handler: at each language layer it forms the head-mean attention
matrix Ā (T, T) of that layer only (never layers x heads x T x T) and keeps, per layer, the video
tokens' received attention summed over all queries and over the text queries, and the attention
rollout of the `last` row (the video columns of Π(0.5·Ā + 0.5·I), propagated forward as a (T, V)
matrix). The layer's output itself is left to SDPA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flowlens.engine.backend import active_handler, language_attention

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM
    from flowlens.models.layout import TokenLayout

EXTRAS = ("received_all", "received_text", "rollout")


def head_mean_attention(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """(T, T) fp32 softmax attention averaged over heads, for batch element 0 (GQA keys repeated)."""
    q, k = query[0].float(), key[0].float()
    if k.shape[0] != q.shape[0]:
        k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    scores = (q @ k.transpose(-1, -2)) * scaling
    t = scores.shape[-1]
    if mask is None:
        allowed = torch.ones(t, t, dtype=torch.bool, device=scores.device).tril_()
        scores = scores.masked_fill(~allowed, float("-inf"))
    elif mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask[0], float("-inf"))
    else:
        scores = scores + mask[0].float()
    return torch.softmax(scores, dim=-1).mean(dim=0)


class AttentionExtras:
    """Attention handler recording received attention (all / text queries) and the `last` row's rollout."""

    def __init__(self, layout: TokenLayout, device: torch.device):
        self.layout = layout
        self.video = torch.as_tensor(layout["video_features"], device=device)
        outside = np.setdiff1d(np.arange(layout.seq_len), layout["video"])
        self.text = torch.as_tensor(outside, device=device)
        self.last = int(layout["last"][0])
        n = layout.n_layers
        self.received_all: list[np.ndarray | None] = [None] * n
        self.received_text: list[np.ndarray | None] = [None] * n
        self.rollout: list[np.ndarray | None] = [None] * n
        self.carry = torch.eye(layout.seq_len, device=device)[:, self.video]  # (T, V)

    def __call__(
        self,
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        scaling: float,
    ) -> None:
        if query.shape[0] != 1 or query.shape[2] != self.layout.seq_len or key.shape[2] != query.shape[2]:
            return None
        layer = int(module.layer_idx)
        attention = head_mean_attention(query, key, mask, scaling)
        to_video = attention[:, self.video]
        self.received_all[layer] = to_video.sum(0).cpu().numpy()
        self.received_text[layer] = to_video[self.text].sum(0).cpu().numpy()
        self.carry = 0.5 * (attention @ self.carry) + 0.5 * self.carry
        self.rollout[layer] = self.carry[self.last].cpu().numpy()
        return None

    def result(self) -> dict[str, np.ndarray]:
        return {name: np.stack(getattr(self, name)).astype(np.float64) for name in EXTRAS}


@torch.no_grad()
def attention_extras(lm: VideoLM, inputs: Any, layout: TokenLayout) -> dict[str, np.ndarray]:
    """{received_all, received_text, rollout}: (L, V) each, from one forward on prepared `inputs`."""
    handler = AttentionExtras(layout, lm.device)
    with language_attention(lm.model), active_handler(handler, expected_calls=layout.n_layers):
        lm.model(**inputs, use_cache=False, logits_to_keep=1)
    return handler.result()
