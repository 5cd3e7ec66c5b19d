"""The flowlens attention backend: one attention function and one mask function, registered with transformers.

Only the language model is switched to it (the vision tower keeps its own implementation). While no
handler is active it defers to SDPA, so a switched model computes exactly what SDPA computes. An
active handler (capture of reductions, later edge masks) computes attention itself, chunked over
queries, so layers x heads x T x T never exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface

from flowlens import compat
from flowlens.errors import FlowlensError

ATTENTION_NAME = "flowlens"


class AttentionHandler(Protocol):
    """Computes one layer's attention output (B, Tq, H, D), or returns None to let SDPA do it."""

    def __call__(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        scaling: float,
    ) -> torch.Tensor | None: ...


_handlers: list[AttentionHandler] = []
_calls = [0]


def flowlens_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention function registered as "flowlens": the active handler if any, else SDPA."""
    _calls[0] += 1
    if _handlers:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = _handlers[-1](module, query, key, value, attention_mask, scale)
        if out is not None:
            return out, None
    return compat.sdpa_attention(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def flowlens_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """SDPA's boolean mask; None (as for SDPA) when it is the plain causal triangle, which handlers then apply.

    Registering a mask function matters: without one transformers passes no mask at all, even with padding.
    """
    return compat.sdpa_mask(*args, **kwargs)


def register() -> None:
    """Register the attention and mask functions with transformers (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, flowlens_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, flowlens_mask)


@contextlib.contextmanager
def language_attention(model: nn.Module) -> Iterator[None]:
    """Switch the language model to the flowlens backend; restore the user's implementation on exit."""
    register()
    with compat.language_attention_implementation(model, ATTENTION_NAME):
        yield


@contextlib.contextmanager
def active_handler(handler: AttentionHandler, expected_calls: int | None = None) -> Iterator[None]:
    """Make `handler` compute attention inside the block; check it was really called.

    A model whose attention modules ignore `config._attn_implementation` would otherwise silently
    run without the handler (and return no reductions or apply no knockout).
    """
    _handlers.append(handler)
    start = _calls[0]
    try:
        yield
    finally:
        _handlers.pop()
    calls = _calls[0] - start
    if expected_calls is not None and calls < expected_calls:
        raise FlowlensError(
            f"the flowlens attention backend ran {calls} times, expected {expected_calls} (one per language layer): "
            "this model's attention does not go through transformers' AttentionInterface"
        )
