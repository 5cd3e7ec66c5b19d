"""A plain attention-knockout implementation, as Map the Flow computes it, to check flowlens against.

One full forward per condition; every layer's attention is eager softmax(QK^T * s + M) V with an
explicit 4-D additive mask M built with loops over the layout's positions. Shares no code with
flowlens' knockout engine.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AttentionInterface

from flowlens.compat import language_attention_implementation

REFERENCE = "flowlens_reference_eager"


def reference_mask(layout, blocks, n_heads: int, heads=None) -> torch.Tensor:
    """(1, H, T, T) additive mask: 0 where allowed, float32 min where causal-masked or blocked."""
    t = layout.seq_len
    allowed = np.tril(np.ones((t, t), dtype=bool))
    for block in blocks:
        if block.is_cross_frame:
            frames = [layout[f"frame{i}"] for i in range(layout.n_frames)]
            pairs = [(frames[i], np.concatenate(frames[:i])) for i in range(1, len(frames))]
        else:
            pairs = [(layout[block.dst], layout[block.src])]
        for queries, keys in pairs:
            for q in queries:
                for k in keys:
                    allowed[q, k] = False
    for q in range(t):  # a row with no key left keeps itself (flowlens' documented rule)
        if not allowed[q].any():
            allowed[q, q] = True
    causal = np.tril(np.ones((t, t), dtype=bool))
    per_head = np.stack([allowed if heads is None or h in heads else causal for h in range(n_heads)])
    mask = np.where(per_head, 0.0, np.finfo(np.float32).min).astype(np.float32)
    return torch.from_numpy(mask)[None]


def reference_logits(lm, inputs, layout, knockout) -> torch.Tensor:
    """Logits at `last` of one full eager forward with `knockout` (or None) applied by an explicit mask."""
    if knockout is None:
        return reference_logits_per_layer(lm, inputs, layout, {})
    mask = reference_mask(layout, knockout.blocks, layout.n_heads, knockout.heads)
    return reference_logits_per_layer(lm, inputs, layout, {layer: mask for layer in knockout.layers})


def reference_pathway_masks(layout, knockouts) -> dict:
    """Per layer, the additive mask with the blocks of every knockout active there (a rule table's pathway)."""
    masks = {}
    for layer in range(layout.n_layers):
        blocks = [b for k in knockouts if layer in k.layers for b in k.blocks]
        if blocks:
            masks[layer] = reference_mask(layout, blocks, layout.n_heads)
    return masks


def reference_logits_per_layer(lm, inputs, layout, masks: dict) -> torch.Tensor:
    """One full eager forward where layer l uses the additive mask `masks[l]` (plain causal if absent)."""
    t = layout.seq_len
    causal = torch.from_numpy(np.where(np.tril(np.ones((t, t), dtype=bool)), 0.0, np.finfo(np.float32).min))
    causal = causal.float()[None, None]

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        groups = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
        mask = masks.get(module.layer_idx, causal)
        scores = torch.matmul(query, key.transpose(2, 3)).float() * scaling + mask
        probs = torch.softmax(scores, dim=-1).to(value.dtype)
        return torch.matmul(probs, value).transpose(1, 2).contiguous(), None

    AttentionInterface.register(REFERENCE, attention)
    with torch.no_grad(), language_attention_implementation(lm.model, REFERENCE):
        return lm.model(**inputs, use_cache=False).logits[0, t - 1].float()
