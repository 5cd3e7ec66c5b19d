"""Compile knockouts to attention masks and apply them through the flowlens backend, at any batch size.

A knockout becomes a (T, T) boolean `blocked` matrix over the prompt (query row, key column). In the
layers (and heads) it covers, the layer's attention uses `causal & ~blocked`; that is the same as
adding dtype-min to the blocked pre-softmax logits. A query row left with no key at all (every
earlier key blocked) keeps its own position, so its output stays finite and never looks ahead.
During generation, new query positions use the `last` row's pattern and may attend generated keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from flowlens import compat
from flowlens.engine.spec import Block, Knockout
from flowlens.errors import FlowlensError
from flowlens.models.layout import TokenLayout


def block_pairs(layout: TokenLayout, block: Block) -> list[tuple[np.ndarray, np.ndarray]]:
    """(query positions, key positions) pairs a block removes."""
    if block.is_cross_frame:
        frames = [layout[name] for name in layout.frame_groups]
        return [(frames[i], np.concatenate(frames[:i])) for i in range(1, len(frames))]
    for name in (block.src, block.dst):
        if name not in layout:
            raise FlowlensError(
                f"knockout group {name!r} is not in the layout; groups: {', '.join(layout.groups)}"
            )
    return [(layout[block.dst], layout[block.src])]


def blocked_matrix(layout: TokenLayout, blocks: tuple[Block, ...] | list[Block]) -> torch.Tensor:
    """(T, T) bool, True where query row may not attend key column (only causal pairs matter)."""
    blocked = torch.zeros(layout.seq_len, layout.seq_len, dtype=torch.bool)
    for block in blocks:
        for queries, keys in block_pairs(layout, block):
            if queries.size and keys.size:
                blocked[torch.as_tensor(queries)[:, None], torch.as_tensor(keys)[None, :]] = True
    return blocked


def allowed_matrix(blocked: torch.Tensor) -> torch.Tensor:
    """Causal minus blocked, with the diagonal restored on rows that would be left with no key."""
    t = blocked.shape[-1]
    allowed = torch.ones(t, t, dtype=torch.bool).tril_() & ~blocked
    empty = ~allowed.any(-1)
    allowed[empty, empty.nonzero().flatten()] = True
    return allowed


@dataclass
class CompiledKnockout:
    """A knockout bound to one layout: the allowed (T, T) pattern, its layers and heads."""

    allowed: torch.Tensor
    layers: frozenset[int]
    heads: tuple[int, ...] | None
    label: str

    @property
    def first_changed_position(self) -> int:
        """First query row the knockout touches: every earlier position computes exactly as in the clean run."""
        t = self.allowed.shape[0]
        causal = torch.ones(t, t, dtype=torch.bool, device=self.allowed.device).tril_()
        changed = (self.allowed != causal).any(-1).nonzero()
        return int(changed[0]) if changed.numel() else t - 1

    @classmethod
    def compile(
        cls, knockout: Knockout, layout: TokenLayout, device: torch.device | None = None
    ) -> CompiledKnockout:
        allowed = allowed_matrix(blocked_matrix(layout, knockout.blocks))
        if knockout.heads is not None and max(knockout.heads, default=-1) >= layout.n_heads:
            raise FlowlensError(
                f"knockout heads {knockout.heads} out of range (the model has {layout.n_heads})"
            )
        bad = [x for x in knockout.layers if not 0 <= x < layout.n_layers]
        if bad:
            raise FlowlensError(f"knockout layers {bad} out of range (the model has {layout.n_layers})")
        return cls(allowed.to(device or "cpu"), frozenset(knockout.layers), knockout.heads, knockout.label)

    def rows(self, q_len: int, k_len: int) -> torch.Tensor:
        """Allowed (q_len, k_len) block for the last q_len queries of a k_len-key step (prefill or decode)."""
        t = self.allowed.shape[0]
        if q_len == k_len == t:
            return self.allowed
        cache = self.__dict__.setdefault(
            "_rows_cache", {}
        )  # every layer of a forward asks for the same block
        if (q_len, k_len) not in cache:
            cache.clear()
            cache[(q_len, k_len)] = self._rows(q_len, k_len)
        return cache[(q_len, k_len)]

    def _rows(self, q_len: int, k_len: int) -> torch.Tensor:
        t = self.allowed.shape[0]
        positions = torch.arange(k_len - q_len, k_len, device=self.allowed.device)
        rows = self.allowed[positions.clamp(max=t - 1)]  # generated tokens follow the `last` row
        if k_len > t:
            new_keys = torch.arange(t, k_len, device=self.allowed.device)
            rows = torch.cat([rows[:, :t], (new_keys[None, :] <= positions[:, None])], dim=1)
        return rows[:, :k_len]


Condition = CompiledKnockout | list[CompiledKnockout] | None


class EdgeMask:
    """Attention handler: batch element b runs with `conditions[b]` -- a knockout, a list of knockouts
    whose blocks combine in the layers they share (effective pathways), or None (clean)."""

    def __init__(self, conditions: list[Condition]):
        self.conditions = [
            [] if c is None else [c] if isinstance(c, CompiledKnockout) else list(c) for c in conditions
        ]

    def __call__(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        scaling: float,
    ) -> torch.Tensor | None:
        layer = int(module.layer_idx)
        batch, heads, q_len, _ = query.shape
        k_len = key.shape[2]
        if batch != len(self.conditions):
            raise FlowlensError(f"batch of {batch} inputs but {len(self.conditions)} knockout conditions")
        active = [[k for k in knockouts if layer in k.layers] for knockouts in self.conditions]
        if not any(active):
            return None  # plain SDPA with the model's own mask
        per_head = any(k.heads is not None for knockouts in active for k in knockouts)
        base = _base_mask(mask, batch, q_len, k_len, query.device)  # (B, 1, Tq, Tk)
        allowed = base.expand(batch, heads if per_head else 1, q_len, k_len).clone()
        for b, knockouts in enumerate(active):
            for knockout in knockouts:
                target = slice(None) if knockout.heads is None else list(knockout.heads)
                allowed[b, target] &= knockout.rows(q_len, k_len).to(query.device)  # the layer's device
        _keep_diagonal(allowed, q_len, k_len)
        out, _ = compat.sdpa_attention(module, query, key, value, allowed, scaling=scaling)
        return out


def _base_mask(
    mask: torch.Tensor | None, batch: int, q_len: int, k_len: int, device: torch.device
) -> torch.Tensor:
    """The model's own mask as (B, 1, Tq, Tk) bool (None means plain causal)."""
    if mask is None:
        q = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        return (torch.arange(k_len, device=device)[None, :] <= q).expand(batch, 1, q_len, k_len)
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    return mask.expand(batch, 1, q_len, k_len)


def _keep_diagonal(allowed: torch.Tensor, q_len: int, k_len: int) -> None:
    """Rows with no allowed key attend their own position instead of producing NaN."""
    empty = ~allowed.any(-1)
    if empty.any():
        idx = empty.nonzero(as_tuple=True)
        allowed[(*idx, idx[-1] + (k_len - q_len))] = True
