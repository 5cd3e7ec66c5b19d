"""The answer at `last`, as Map the Flow reads it: fp32 logits from the output head, argmax over the whole vocabulary.

`predicted` is the decoded argmax token of the whole vocabulary (a non-letter prediction is simply
wrong); `predicted_letter` is the most probable option letter (flowlens' earlier, letter-restricted
answer, kept as a named alternative). Option probabilities are softmax over the whole vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from flowlens.engine.head import head_logits_fp32
from flowlens.store.records import AnswerReadout

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM
    from flowlens.models.layout import TokenLayout


@contextlib.contextmanager
def final_hidden(lm: VideoLM) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the decoder's final (normed) hidden state at the last position: `grab["last"]` (B, D)."""
    grab: dict[str, torch.Tensor] = {}

    def record(module: nn.Module, args: tuple, output: Any) -> None:
        grab["last"] = output.last_hidden_state[:, -1].detach()

    handle = lm.adapter.language_model().register_forward_hook(record)
    try:
        yield grab
    finally:
        handle.remove()


@torch.no_grad()
def last_logits(lm: VideoLM, inputs: Any) -> torch.Tensor:
    """fp32 logits (vocab,) at `last` of one forward on prepared inputs (batch 1)."""
    with final_hidden(lm) as grab:
        lm.model(**inputs, logits_to_keep=1)
    return head_logits_fp32(lm.adapter.output_head(), grab["last"])[0]


def decoded(tokenizer: Any, token_id: int) -> str:
    """A token id as the answer text it stands for (surrounding whitespace stripped, as the paper compares)."""
    return tokenizer.decode([int(token_id)]).strip()


def answer_readout(logits: torch.Tensor, layout: TokenLayout, tokenizer: Any) -> AnswerReadout:
    """Prediction (whole-vocabulary argmax), letter-restricted prediction and option probabilities at `last`."""
    probs_all = torch.softmax(logits.float(), dim=-1)
    probs = probs_all[layout.option_token_ids].cpu().numpy().astype(np.float32)
    letters = list(layout.option_letters)
    top = int(probs_all.argmax())
    predicted = letters[layout.option_token_ids.index(top)] if top in layout.option_token_ids else None
    if predicted is None:
        predicted = decoded(tokenizer, top)
    letter = letters[int(np.argmax(probs))] if letters else ""
    answer = layout.answer_letter
    return AnswerReadout(
        letters=letters,
        probs=probs,
        predicted=predicted,
        answer=answer,
        correct=None if answer is None else predicted == answer,
        predicted_letter=letter,
        correct_letter=None if answer is None else letter == answer,
    )
