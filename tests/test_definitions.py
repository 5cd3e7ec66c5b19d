"""Map the Flow's definitions by default (issue 11): each test here failed on flowlens' earlier definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample, random_video

import flowlens
from flowlens.analyses.readout import answer_readout, last_logits
from flowlens.analyses.trace import TraceOptions, trace_sample
from flowlens.engine.resume import CleanRun

FRAMES = 4


@pytest.fixture(scope="module")
def bf16_llava():
    return flowlens.load("tiny:llava_next_video", dtype="bfloat16")


def test_answer_is_the_argmax_over_the_whole_vocabulary(bf16_llava):
    """A non-letter top token is the prediction (and wrong); the best letter is kept as `predicted_letter`."""
    lm = bf16_llava
    _, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    logits = torch.zeros(len(lm.tokenizer))
    ids = layout.option_token_ids
    other = next(i for i in range(len(logits)) if i not in ids and lm.tokenizer.decode([i]).strip())
    logits[other], logits[ids[1]], logits[ids[2]] = 9.0, 5.0, 4.0  # answer is B
    readout = answer_readout(logits, layout, lm.tokenizer)
    assert readout.predicted == lm.tokenizer.decode([other]).strip() and readout.correct is False
    assert readout.predicted_letter == "B" and readout.correct_letter is True
    logits[other] = 0.0
    readout = answer_readout(logits, layout, lm.tokenizer)
    assert readout.predicted == "B" and readout.correct is True


@torch.no_grad()
def _fp64_reference(lm, hidden: torch.Tensor) -> torch.Tensor:
    head = lm.adapter.output_head()
    return hidden.double() @ head.weight.double().T


def test_logits_at_last_go_through_the_head_in_fp32_in_every_read_out(bf16_llava):
    """bf16 model: clean-run, eval and trace logits equal an fp64 projection of the same final hidden state."""
    lm = bf16_llava
    sample = make_sample(random_video(frames=FRAMES))
    inputs, layout = lm.prepare(sample, frames=FRAMES)
    clean = CleanRun(lm, inputs, layout)
    hidden = clean.final_hidden[:, -1]
    reference = _fp64_reference(lm, hidden)[0]
    assert clean.logits.dtype == torch.float32
    torch.testing.assert_close(clean.logits.double(), reference, atol=1e-5, rtol=1e-6)
    with torch.no_grad():
        bf16_head = lm.adapter.output_head()(hidden)[0].double()  # what the model dtype gives
    assert float((bf16_head - reference).abs().max()) > 1e-4  # so the check above means something
    torch.testing.assert_close(last_logits(lm, inputs).double(), reference, atol=1e-5, rtol=1e-6)
    trace = trace_sample(lm, sample, TraceOptions(frames=FRAMES))
    expected = torch.softmax(reference, -1)[layout.option_token_ids].numpy()
    np.testing.assert_allclose(trace.answer.probs, expected, rtol=1e-4, atol=1e-9)
