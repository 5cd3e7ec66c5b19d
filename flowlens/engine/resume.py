"""Run the language model from any layer and position, starting from a clean run.

A knockout whose first layer is `a` leaves layers < a untouched, and one whose first blocked query
row is `p` leaves every position < p untouched in every layer (causal attention: earlier positions
never see later ones). Its run can therefore start from the clean run's input to layer `a` at
positions >= p, attending the clean keys and values of positions < p through a KV cache; many
conditions sharing (a, p) run together as one batch. This module records the clean run (the language
model's call, each layer's input, each layer's keys and values) and re-enters the language model's own
forward with its layer list cut to `layers[a:]`: the model code runs as written, nothing is reimplemented.

Canaries turn a silent change of transformers' behaviour into an error: every resumed batch carries one
clean row whose logits must reproduce the clean run's, the cache must have grown to the full length
after a forward resumed at a position > 0, and the flowlens attention backend must have run once per
replayed layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from flowlens import compat
from flowlens.engine.backend import active_handler, language_attention
from flowlens.engine.head import head_logits_fp32
from flowlens.engine.masks import CompiledKnockout, EdgeMask

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM
    from flowlens.models.layout import TokenLayout


def canary_tolerance(dtype: torch.dtype, reference: torch.Tensor) -> float:
    """Largest |logit difference| a resumed clean row may show: float rounding at the model's dtype.

    fp32/fp64: 1e-4 of the logit scale (measured differences are ~1e-6); fp16/bf16: 5% of the scale
    (batch-dependent kernels round differently). A lost KV cache changes logits by far more.
    """
    scale = max(1.0, float(reference.abs().max()))
    return (1e-4 if dtype in (torch.float32, torch.float64) else 5e-2) * scale


class KeyValueRecorder:
    """Attention handler for the clean run: keeps each layer's keys and values and lets SDPA compute."""

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def __call__(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        scaling: float,
    ) -> None:
        self.keys[int(module.layer_idx)] = key.detach()
        self.values[int(module.layer_idx)] = value.detach()
        return None


class CleanRun:
    """One clean forward: final logits at `last`, the language model's call, every layer's input (and the final
    norm's), keys and values."""

    def __init__(self, lm: VideoLM, inputs: Any, layout: TokenLayout, canary: bool = True):
        self.lm = lm
        self.layout = layout
        self.canary = canary
        self.language_model = lm.adapter.language_model()
        self.cache_keyword = compat.cache_keyword(self.language_model)
        layers = lm.adapter.language_layers()
        self.n_layers = len(layers)
        self.layer_inputs: list[torch.Tensor | None] = [None] * len(layers)
        self.call: dict[str, Any] = {}
        recorder = KeyValueRecorder(len(layers))
        handles = [self.language_model.register_forward_pre_hook(self._record_call, with_kwargs=True)]
        handles.append(self.language_model.register_forward_hook(self._record_output))
        handles.append(
            compat.final_norm(self.language_model).register_forward_pre_hook(self._record_norm_input)
        )
        handles += [
            layer.register_forward_pre_hook(self._record_layer(i), with_kwargs=True)
            for i, layer in enumerate(layers)
        ]
        try:
            with (
                torch.no_grad(),
                language_attention(lm.model),
                active_handler(recorder, expected_calls=len(layers)),
            ):
                lm.model(**inputs, use_cache=False, logits_to_keep=1)
        finally:
            for handle in handles:
                handle.remove()
        self.keys, self.values = recorder.keys, recorder.values
        self.logits = self._head(self.final_hidden)[0]

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits at `last` (the final position) from final hidden states, identical for clean and knockout runs."""
        with torch.no_grad():
            return head_logits_fp32(self.lm.adapter.output_head(), hidden[:, -1])

    def _record_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.final_hidden = output.last_hidden_state.detach()

    def _record_norm_input(self, module: nn.Module, args: tuple) -> None:
        self.norm_input = args[0].detach()

    def residual_input(self, layer: int) -> torch.Tensor:
        """The residual stream entering layer `layer` (1, T, D); `layer` = L gives the final norm's input."""
        return self.norm_input if layer == self.n_layers else self.layer_inputs[layer]

    def _record_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:
            raise RuntimeError("the language model was called with positional arguments; cannot resume it")
        self.call = compat.replayable_call(kwargs)

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
        With `canary` on, a clean row joins the batch (unless one is given) and must reproduce the clean logits.
        """
        conditions = list(conditions)
        canary_row = next((i for i, c in enumerate(conditions) if c is None), None)
        added = self.canary and canary_row is None
        if added:
            canary_row = len(conditions)
            conditions.append(None)
        logits = self._forward_from(start, conditions, position)
        if self.canary:
            self._check_canary(logits[canary_row], start, position)
        return logits[:-1] if added else logits

    def _forward_from(
        self, start: int, conditions: list[CompiledKnockout | None], position: int
    ) -> torch.Tensor:
        batch, t = len(conditions), self.layout.seq_len
        kwargs = {key: compat.expand_batch(value, batch) for key, value in self.call.items()}
        kwargs["inputs_embeds"] = compat.expand_batch(self.layer_inputs[start][:, position:], batch)
        kwargs["use_cache"] = position > 0
        cache = None
        if position > 0:
            cache = compat.prefix_cache(self.keys, self.values, position, batch, first_layer=start)
            kwargs[self.cache_keyword] = cache
            kwargs["position_ids"] = self._position_ids(position, batch)
        if (
            self.call.get("deepstack_visual_embeds") is not None
        ):  # Qwen3-VL: features added after early blocks
            kwargs.update(self._deepstack(start, position, batch))
        with (
            language_attention(self.lm.model),
            active_handler(EdgeMask(conditions), expected_calls=self.n_layers - start),
            compat.decoder_layers_from(self.language_model, start),
        ):
            hidden = self.language_model(**kwargs).last_hidden_state
        if cache is not None and compat.cache_length(cache, start) != t:
            raise compat.CompatError(
                "KV-cache hand-off",
                f"after a forward resumed at position {position} the cache holds "
                f"{compat.cache_length(cache, start)} positions instead of {t}: the language model ignored "
                f"the cache passed as `{self.cache_keyword}=`",
            )
        return self._head(hidden)

    def _check_canary(self, row: torch.Tensor, start: int, position: int) -> None:
        """The clean row of a resumed batch must reproduce the clean logits within the dtype's rounding."""
        error = float((row - self.logits).abs().max())
        tolerance = canary_tolerance(self.lm.dtype, self.logits)
        if not error <= tolerance:
            raise compat.CompatError(
                "resumed forward (clean-row canary)",
                f"a clean row resumed at layer {start}, position {position} differs from the clean run by "
                f"{error:.3g} in logits (tolerance {tolerance:.3g}): knockout numbers would be wrong",
            )

    def _position_ids(self, position: int, batch: int) -> torch.Tensor:
        ids = self.call.get("position_ids")
        if ids is None:
            ids = torch.arange(self.layout.seq_len, device=self.logits.device)[None]
        return compat.expand_batch(compat.position_suffix(ids, position), batch)

    def _deepstack(self, start: int, position: int, batch: int) -> dict[str, Any]:
        """Qwen3-VL DeepStack inputs for layers >= `start` and positions >= `position`."""
        visual = self.call["visual_pos_masks"]  # (1, T) bool
        kept = visual[:, position:]
        skip = int(visual[:, :position].sum())  # visual rows before `position`
        embeds = [x[skip:].repeat(batch, *[1] * (x.dim() - 1)) for x in self.call["deepstack_visual_embeds"]]
        embeds = embeds[start:]
        if not embeds or not bool(kept.any()):
            return {"deepstack_visual_embeds": None, "visual_pos_masks": None}
        return {"deepstack_visual_embeds": embeds, "visual_pos_masks": compat.expand_batch(kept, batch)}
