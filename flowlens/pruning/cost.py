"""Analytic prefill cost of a pruned language model (FastV's and DivPrune's formula, both FFN conventions).

Per layer with n tokens, hidden size d and FFN width m: 4·n·d² + 2·n²·d + c·n·d·m FLOPs, with c = 2
(FastV; vbdi/divprune `tflops.py`) or c = 3 (SparseVLM's counter, which counts SwiGLU's three matrices).
The FFN term is not standardised across papers, so both are reported. A pruned prefill runs K layers
on all T tokens and L − K layers on the n tokens kept. The vision tower, the embedding and the output
head are not counted (as in those papers), nor is the scoring itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs and KV-cache formulas need: layers, hidden size, FFN width, KV heads, head size, bytes."""

    n_layers: int
    d_model: int
    d_ffn: int
    n_kv_heads: int
    head_dim: int
    bytes_per_value: int = 4

    @classmethod
    def of(cls, text_config: Any, bytes_per_value: int = 4) -> ModelShape:
        heads = text_config.num_attention_heads
        d = text_config.hidden_size
        return cls(
            n_layers=text_config.num_hidden_layers,
            d_model=d,
            d_ffn=text_config.intermediate_size,
            n_kv_heads=getattr(text_config, "num_key_value_heads", None) or heads,
            head_dim=getattr(text_config, "head_dim", None) or d // heads,
            bytes_per_value=bytes_per_value,
        )


def layer_flops(n: int, shape: ModelShape, ffn_factor: int) -> float:
    """4nd² + 2n²d + c·n·d·m for one layer over n tokens (c = `ffn_factor`, 2 or 3)."""
    d, m = shape.d_model, shape.d_ffn
    return 4.0 * n * d * d + 2.0 * n * n * d + ffn_factor * n * d * m


def prefill_flops(total: int, kept: int, layer: int, shape: ModelShape, ffn_factor: int) -> float:
    """Layers < `layer` on `total` tokens, the others on `kept` tokens."""
    k = min(layer, shape.n_layers)
    return k * layer_flops(total, shape, ffn_factor) + (shape.n_layers - k) * layer_flops(
        kept, shape, ffn_factor
    )


def kv_bytes(total: int, kept: int, layer: int, shape: ModelShape) -> int:
    """KV-cache bytes after the prefill: 2·n_kv_heads·head_dim·bytes per token and layer (layers < K keep all)."""
    per_token = 2 * shape.n_kv_heads * shape.head_dim * shape.bytes_per_value
    k = min(layer, shape.n_layers)
    return int(per_token * (k * total + (shape.n_layers - k) * kept))


def cost_columns(total: int, kept: int, layer: int, shape: ModelShape) -> dict[str, float]:
    """Tokens at the LLM input, layer-mean tokens, FLOPs (c = 2 and 3) and their ratio to the unpruned prefill, KV bytes."""
    k = min(layer, shape.n_layers)
    out: dict[str, float] = {
        "tokens_llm_input": float(total if k > 0 else kept),
        "tokens_layer_mean": (k * total + (shape.n_layers - k) * kept) / shape.n_layers,
    }
    for c in (2, 3):
        pruned = prefill_flops(total, kept, layer, shape, c)
        out[f"prefill_flops_c{c}"] = pruned
        out[f"flops_ratio_c{c}"] = pruned / prefill_flops(total, total, 0, shape, c)
    out["kv_bytes"] = float(kv_bytes(total, kept, layer, shape))
    return out
