"""Every place flowlens leans on transformers behaviour that is not a stable public API, in one module.

Each function here is pinned by its own test in tests/test_compat.py, so a transformers release that
changes one of these behaviours fails exactly one named test (and, at run time, a canary in the engine
raises `CompatError` instead of producing a wrong number). Everything else in flowlens uses public APIs:
`get_decoder()`, `get_output_embeddings()`, `set_attn_implementation()`, `Cache.update()`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AttentionInterface, Cache, DynamicCache
from transformers.masking_utils import sdpa_mask as _sdpa_mask

from flowlens.errors import FlowlensError

TRANSFORMERS_VERSION = transformers.__version__

# The language model's KV-cache keyword: `cache` from transformers 5.24, `past_key_values` before.
CACHE_KEYWORDS = ("cache", "past_key_values")
# Call arguments a recorded language-model call must not replay (the replay sets its own).
_NOT_REPLAYED = {"inputs_embeds", "input_ids", "use_cache", "return_dict", "cache_position", *CACHE_KEYWORDS}


class CompatError(FlowlensError):
    """transformers behaves differently from what flowlens was built and tested against."""

    def __init__(self, mechanism: str, detail: str):
        super().__init__(
            f"{detail} [mechanism: {mechanism}; transformers {TRANSFORMERS_VERSION}] -- flowlens does not "
            "support this transformers version for this operation; install the locked set (`make venv`) "
            "or report it"
        )
        self.mechanism = mechanism


# ---------------------------------------------------------------- model structure (public API)
def decoder(model: nn.Module) -> nn.Module:
    """The language model's decoder stack (embeddings excluded from its call, final norm included)."""
    return model.get_decoder()


def output_head(model: nn.Module) -> nn.Module:
    """The unembedding applied to the final (normed) hidden state."""
    return model.get_output_embeddings()


# ---------------------------------------------------------------- attention implementation
_ATTENTION_FUNCTIONS = AttentionInterface()


def sdpa_attention(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """transformers' own SDPA attention function (the one `attn_implementation="sdpa"` uses)."""
    return _ATTENTION_FUNCTIONS["sdpa"](*args, **kwargs)


def sdpa_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """transformers' SDPA mask function: a boolean mask, or None where SDPA's causal path suffices."""
    return _sdpa_mask(*args, **kwargs)


def attention_implementation(config: Any) -> str:
    """The attention implementation a (sub-)config currently selects."""
    return config._attn_implementation


def _text_config_key(model: nn.Module) -> str | None:
    """Name of the sub-config holding the language model's config (None: the top-level config is it)."""
    text = model.config.get_text_config()
    for key in getattr(model.config, "sub_configs", {}):
        if getattr(model.config, key, None) is text:
            return key
    return None


@contextlib.contextmanager
def language_attention_implementation(model: nn.Module, name: str) -> Iterator[None]:
    """Switch only the language model to attention implementation `name`; restore the previous one on exit."""
    key = _text_config_key(model)
    text = model.config.get_text_config()
    previous = attention_implementation(text)
    if previous == name:
        yield
        return
    model.set_attn_implementation({key: name} if key else name)
    if attention_implementation(text) != name:
        raise CompatError("set_attn_implementation", f"the language model did not switch to {name!r}")
    try:
        yield
    finally:
        model.set_attn_implementation({key: previous} if key else previous)


# ---------------------------------------------------------------- KV cache hand-off
def cache_keyword(module: nn.Module) -> str:
    """The keyword `module.forward` takes its KV cache under (`cache` on transformers >= 5.24)."""
    parameters = inspect.signature(module.forward).parameters
    for name in CACHE_KEYWORDS:
        if name in parameters:
            return name
    raise CompatError("cache keyword", f"{type(module).__name__}.forward takes none of {CACHE_KEYWORDS}")


def replayable_call(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A recorded language-model call without its inputs and every cache argument (by name and by type)."""
    return {
        key: value
        for key, value in kwargs.items()
        if key not in _NOT_REPLAYED and not isinstance(value, Cache)
    }


def prefix_cache(
    keys: list[torch.Tensor], values: list[torch.Tensor], length: int, batch: int, first_layer: int = 0
) -> Cache:
    """A fresh KV cache holding positions < `length` of the recorded per-layer (1, H_kv, T, D) keys and values.

    Layers >= `first_layer` (the ones the replay runs) are repeated over `batch`; earlier layers, which
    only tell the mask functions the cache length, keep batch 1. Every layer is a full (non-sliding)
    cache layer, so sliding-window masks are built over all keys and stay exact.
    """
    cache = DynamicCache()
    for layer, (key, value) in enumerate(zip(keys, values, strict=True)):
        rows = batch if layer >= first_layer else 1
        shape = (rows, key.shape[1], length, key.shape[-1])
        cache.update(key[:, :, :length].expand(shape), value[:, :, :length].expand(shape), layer)
    return cache


def cache_length(cache: Cache, layer: int = 0) -> int:
    """Number of positions the cache holds in `layer`."""
    return int(cache.get_seq_length(layer))


# ---------------------------------------------------------------- replaying part of the decoder
def expand_batch(value: Any, batch: int) -> Any:
    """Repeat a batch-1 tensor argument to `batch` along its batch axis (axis 1 for (3|4, 1, T) M-RoPE ids)."""
    if not isinstance(value, torch.Tensor) or batch == 1:
        return value
    if value.dim() == 3 and value.shape[1] == 1 and value.shape[0] in (3, 4):
        return value.expand(value.shape[0], batch, *value.shape[2:])
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    return value


def position_suffix(position_ids: torch.Tensor, start: int) -> torch.Tensor:
    """Position ids of positions >= `start` (the sequence is the last axis, also for M-RoPE ids)."""
    return position_ids[..., start:]


@contextlib.contextmanager
def decoder_layers_from(language_model: nn.Module, start: int) -> Iterator[None]:
    """Run only `layers[start:]` of the decoder (each keeps its own `layer_idx`).

    Decoders that look a layer's mask type up as `config.layer_types[i]` by loop index (Qwen2, Qwen2-VL)
    get the list cut the same way, so a sliding-window layer keeps its sliding mask.
    """
    layers = language_model.layers
    config = getattr(language_model, "config", None)
    layer_types = getattr(config, "layer_types", None)
    language_model.layers = nn.ModuleList(list(layers)[start:])
    if layer_types is not None:
        config.layer_types = list(layer_types)[start:]
    try:
        yield
    finally:
        language_model.layers = layers
        if layer_types is not None:
            config.layer_types = layer_types


# ---------------------------------------------------------------- shortening the sequence (drop-mode pruning)
def final_norm(language_model: nn.Module) -> nn.Module:
    """The decoder's final norm: its input is the residual stream after the last layer (and any DeepStack add)."""
    norm = getattr(language_model, "norm", None)
    if not isinstance(norm, nn.Module):
        raise CompatError("final norm", f"{type(language_model).__name__} has no module `norm`")
    return norm


def recorded_position_ids(call: dict[str, Any], seq_len: int, device: torch.device) -> torch.Tensor:
    """The position ids a recorded batch-1 call runs with: its own ((3|4, 1, T) M-RoPE or (1, T)), else 0..T-1.

    A decoder called without `position_ids` numbers positions 0..T-1 (from `cache_position`).
    """
    ids = call.get("position_ids")
    if ids is None:
        return torch.arange(seq_len, device=device)[None]
    return ids


def uses_mrope(text_config: Any) -> bool:
    """Whether a language model's config selects multi-axis rotary positions (an `mrope_section` in its rope settings)."""
    for name in ("rope_parameters", "rope_scaling"):
        settings = getattr(text_config, name, None)
        if isinstance(settings, dict) and "mrope_section" in settings:
            return True
    return False


def uses_sliding_window(text_config: Any) -> bool:
    """Whether any language layer attends through a sliding window (`layer_types`, or Qwen2's `use_sliding_window`)."""
    if "sliding_attention" in (getattr(text_config, "layer_types", None) or ()):
        return True
    return bool(getattr(text_config, "use_sliding_window", False)) and bool(
        getattr(text_config, "sliding_window", None)
    )


def is_mrope(position_ids: torch.Tensor) -> bool:
    """Whether recorded position ids are multi-axis rotary ids (Qwen2-VL/2.5-VL/3-VL: (3|4, 1, T))."""
    return position_ids.dim() == 3


def position_ids_at(position_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Recorded batch-1 position ids ((1, T) or (3|4, 1, T)) at positions `keep` (B, n): (B, n) or (3|4, B, n)."""
    if is_mrope(position_ids):
        return position_ids[:, 0][:, keep]
    return position_ids[0][keep]


def shortened_call(
    call: dict[str, Any], keep: torch.Tensor, position_ids: torch.Tensor, start: int = 0
) -> dict[str, Any]:
    """A recorded batch-1 language-model call for a batch of shorter sequences: row b holds positions keep[b].

    `keep` (B, n) sorted positions of the recorded sequence; `position_ids` the ids those rows run with
    ((B, n), or (3|4, B, n) for M-RoPE). The attention mask is the recorded one at the kept positions and
    is always passed: with no mask and no cache, transformers reads position ids that skip values (the
    dropped tokens) as packed sequences and blocks attention between them. Qwen3-VL's DeepStack inputs
    keep the visual positions that remain, for layers >= `start` (the replay's first layer).
    """
    batch, n = keep.shape
    out = {key: value for key, value in call.items() if key not in ("position_ids", "attention_mask")}
    mask = call.get("attention_mask")
    if mask is None or mask.dim() != 2:
        mask = torch.ones(1, int(keep.max()) + 1, dtype=torch.long, device=keep.device)
    out["attention_mask"] = mask[0][keep]
    out["position_ids"] = position_ids
    if call.get("deepstack_visual_embeds") is not None:
        visual = call["visual_pos_masks"][0]  # (T,) bool
        rank = visual.long().cumsum(0) - 1  # row of each visual position in the DeepStack features
        kept_visual = visual[keep]  # (B, n)
        rows = rank[keep][kept_visual]  # flattened row-major, as the decoder indexes hidden[mask]
        embeds = [x[rows] for x in call["deepstack_visual_embeds"]][start:]
        if not embeds or not bool(kept_visual.any()):
            out["deepstack_visual_embeds"], out["visual_pos_masks"] = None, None
        else:
            out["deepstack_visual_embeds"], out["visual_pos_masks"] = embeds, kept_visual
    return out
