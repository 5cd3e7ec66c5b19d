"""Run the language model from any layer and position, starting from a clean run.

A knockout whose first layer is `a` leaves layers < a untouched, and one whose first blocked query
row is `p` leaves every position < p untouched in every layer (causal attention: earlier positions
never see later ones). Its run can therefore start from the clean run's input to layer `a` at
positions >= p, attending the clean keys and values of positions < p from the clean KV cache; many
conditions sharing (a, p) run together as one batch. This module records the clean run (the language
model's call, each layer's input, the KV cache) and re-enters the language model's own forward with its
layer list cut to `layers[a:]`: the model code runs as written, nothing is reimplemented.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from flowlens.engine.backend import active_handler, language_attention
from flowlens.engine.masks import CompiledKnockout, EdgeMask

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM
    from flowlens.models.layout import TokenLayout


class CleanRun:
    """One clean forward: final logits at `last`, the language model's call, and every layer's input."""

    def __init__(self, lm: VideoLM, inputs: Any, layout: TokenLayout):
        self.lm = lm
        self.layout = layout
        self.language_model = lm.adapter.language_model()
        layers = lm.adapter.language_layers()
        self.layer_inputs: list[torch.Tensor | None] = [None] * len(layers)
        self.call: dict[str, Any] = {}
        handles = [self.language_model.register_forward_pre_hook(self._record_call, with_kwargs=True)]
        handles.append(self.language_model.register_forward_hook(self._record_output))
        handles += [
            layer.register_forward_pre_hook(self._record_layer(i), with_kwargs=True)
            for i, layer in enumerate(layers)
        ]
        try:
            with torch.no_grad():
                self.cache = lm.model(**inputs, use_cache=True, logits_to_keep=1).past_key_values
        finally:
            for handle in handles:
                handle.remove()
        self.logits = self._head(self.final_hidden)[0]

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits at `last` (the final position) from final hidden states, identical for clean and knockout runs."""
        with torch.no_grad():
            return self.lm.adapter.output_head()(hidden[:, -1:])[:, 0].float()

    def _record_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.final_hidden = output.last_hidden_state.detach()

    def _record_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.call = dict(kwargs)
        if args:
            raise RuntimeError("the language model was called with positional arguments; cannot resume it")

    def _record_layer(self, index: int):
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self.layer_inputs[index] = hidden.detach()

        return record

    @torch.no_grad()
    def run_from(
        self, start: int, conditions: list[CompiledKnockout | None], position: int = 0
    ) -> torch.Tensor:
        """Logits at `last` (B, vocab) with knockout b on batch element b, recomputing layers >= `start` at positions >= `position`.

        `position` must not exceed any condition's `first_changed_position` (0 recomputes every position).
        """
        batch, t = len(conditions), self.layout.seq_len
        kwargs = {key: _expand_batch(value, batch) for key, value in self.call.items() if key not in _DROP}
        kwargs["inputs_embeds"] = _expand_batch(self.layer_inputs[start][:, position:], batch)
        kwargs["use_cache"] = position > 0
        if position > 0:
            kwargs["past_key_values"] = self._cache_until(position, batch)
            kwargs["cache_position"] = torch.arange(position, t, device=self.logits.device)
            kwargs["position_ids"] = self._position_ids(position, batch)
        if (
            self.call.get("deepstack_visual_embeds") is not None
        ):  # Qwen3-VL: features added after the first blocks
            kwargs.update(self._deepstack(start, position, batch))
        handler = EdgeMask(conditions)
        with (
            language_attention(self.lm.model, self.lm.adapter.text_config),
            active_handler(handler),
            _layers_from(self.language_model, start),
        ):
            hidden = self.language_model(**kwargs).last_hidden_state
        return self._head(hidden)

    def _cache_until(self, position: int, batch: int) -> Any:
        """A copy of the clean KV cache holding positions < `position`, repeated over the batch."""
        cache = copy.deepcopy(self.cache)
        remove = position - cache.get_seq_length()
        if remove < 0:
            cache.crop(remove)  # transformers 5: a negative count of tokens to drop from the end
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache

    def _position_ids(self, position: int, batch: int) -> torch.Tensor:
        ids = self.call.get("position_ids")
        if ids is None:
            ids = torch.arange(self.layout.seq_len, device=self.logits.device)[None]
        return _expand_batch(ids[..., position:], batch)

    def _deepstack(self, start: int, position: int, batch: int) -> dict[str, Any]:
        """Qwen3-VL DeepStack inputs for layers >= `start` and positions >= `position`."""
        visual = self.call["visual_pos_masks"]  # (1, T) bool
        kept = visual[:, position:]
        skip = int(visual[:, :position].sum())  # visual rows before `position`
        embeds = [x[skip:].repeat(batch, *[1] * (x.dim() - 1)) for x in self.call["deepstack_visual_embeds"]]
        embeds = embeds[start:]
        if not embeds or not bool(kept.any()):
            return {"deepstack_visual_embeds": None, "visual_pos_masks": None}
        return {"deepstack_visual_embeds": embeds, "visual_pos_masks": _expand_batch(kept, batch)}


_DROP = {"inputs_embeds", "input_ids", "past_key_values", "use_cache", "return_dict", "cache_position"}


def _expand_batch(value: Any, batch: int) -> Any:
    """Repeat a batch-1 tensor argument to `batch` along its batch axis (axis 0, or 1 for M-RoPE position ids)."""
    if not isinstance(value, torch.Tensor) or batch == 1:
        return value
    if (
        value.dim() == 3 and value.shape[1] == 1 and value.shape[0] in (3, 4)
    ):  # (3|4, 1, T) M-RoPE position ids
        return value.expand(value.shape[0], batch, *value.shape[2:])
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    return value


@contextlib.contextmanager
def _layers_from(language_model: nn.Module, start: int) -> Iterator[None]:
    """Temporarily cut the language model's decoder layers to `layers[start:]` (layer_idx stays the original)."""
    layers = language_model.layers
    language_model.layers = nn.ModuleList(list(layers)[start:])
    try:
        yield
    finally:
        language_model.layers = layers
