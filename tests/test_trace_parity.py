"""Every captured reduction equals the same reduction of transformers' eager attention (fp32, <= 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample, random_video, tiny

from flowlens.analyses.trace import TraceOptions, trace_sample
from flowlens.compat import attention_implementation, language_attention_implementation
from flowlens.engine.backend import active_handler, language_attention
from flowlens.engine.capture import CaptureOptions, FlowCapture

FRAMES = 8
ATOL = 1e-5


def eager_run(lm, inputs):
    """Attention probabilities (L, H, T, T) and hidden states from HF eager attention."""
    with torch.no_grad(), language_attention_implementation(lm.model, "eager"):
        out = lm.model(**inputs, output_attentions=True, output_hidden_states=True)
    return torch.stack(out.attentions)[:, 0].double().numpy(), out


def reduce_groups(att: np.ndarray, layout, names: list[str]) -> np.ndarray:
    """Plain reference: mean over each target group's queries of the mass on each source group."""
    onehot = np.zeros((layout.seq_len, len(names)))
    for g, name in enumerate(names):
        onehot[layout[name], g] = 1.0
    mass = att @ onehot
    return np.einsum("tg,lhts->lhgs", onehot, mass) / np.maximum(onehot.sum(0), 1)[None, None, :, None]


@pytest.fixture
def traced(family):
    lm = tiny(family)
    sample = make_sample(random_video(frames=FRAMES))
    trace = trace_sample(lm, sample, TraceOptions(frames=FRAMES, video_layers=[1]))
    inputs, layout = lm.prepare(sample, frames=FRAMES)
    att, eager = eager_run(lm, inputs)
    return lm, inputs, layout, trace, att, eager


def test_reductions_equal_eager(traced):
    lm, inputs, layout, trace, att, _ = traced
    video, question = layout["video_features"], layout["question"]
    np.testing.assert_allclose(trace.segment_flow, reduce_groups(att, layout, layout.partition), atol=ATOL)
    np.testing.assert_allclose(trace.frame_flow, reduce_groups(att, layout, layout.frame_groups), atol=ATOL)
    np.testing.assert_allclose(trace.last_to_video, att[:, :, -1][:, :, video], atol=ATOL)
    np.testing.assert_allclose(
        trace.question_to_video, att[:, :, question][:, :, :, video].mean(1), atol=ATOL
    )
    assert trace.segment_flow.shape == (
        layout.n_layers,
        layout.n_heads,
        len(layout.partition),
        len(layout.partition),
    )


def test_segment_rows_sum_to_one(traced):
    _, _, layout, trace, _, _ = traced
    nonempty = [i for i, name in enumerate(layout.partition) if layout[name].size]
    sums = trace.segment_flow[:, :, nonempty].sum(-1)
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)


def test_logits_equal_sdpa(family):
    lm = tiny(family)
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    with torch.no_grad():
        sdpa = lm.model(**inputs).logits
        capture = FlowCapture(layout, lm.device, CaptureOptions())
        with language_attention(lm.model), active_handler(capture, layout.n_layers):
            flowlens_logits = lm.model(**inputs).logits
    assert capture.frame_flow().shape[0] == layout.n_layers
    torch.testing.assert_close(flowlens_logits, sdpa, atol=1e-4, rtol=0)
    assert attention_implementation(lm.adapter.text_config) == "sdpa"  # restored


def test_residuals_and_answer(traced):
    lm, inputs, layout, trace, _, eager = traced
    hidden = [h[0].double().numpy() for h in eager.hidden_states]
    last, frames = layout["last"][0], layout.frame_groups
    for layer in range(layout.n_layers - 1):  # HF's final hidden state is after the final norm
        if lm.family == "qwen3_vl" and layer < len(lm.model.config.vision_config.deepstack_visual_indexes):
            continue  # DeepStack adds visual features after these blocks: HF's states include them
        h = hidden[layer + 1]
        np.testing.assert_allclose(trace.resid_last[layer], h[last], rtol=2e-3, atol=2e-3)
        means = np.stack([h[layout.frame_features(f)].mean(0) for f in range(len(frames))])
        np.testing.assert_allclose(trace.resid_frame_mean[layer], means, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(
        trace.resid_video[1], hidden[2][layout["video_features"]], rtol=2e-3, atol=2e-3
    )
    everything = torch.softmax(eager.logits[0, -1].double(), -1)
    probs = everything[layout.option_token_ids].numpy()
    np.testing.assert_allclose(trace.answer.probs, probs, atol=1e-6)
    # the paper's answer: argmax over the whole vocabulary, decoded; the letter-restricted one beside it
    top = int(everything.argmax())
    expected = "ABCD"[layout.option_token_ids.index(top)] if top in layout.option_token_ids else None
    assert trace.answer.predicted == (expected or lm.tokenizer.decode([top]).strip())
    assert trace.answer.correct == (trace.answer.predicted == "B")
    assert trace.answer.predicted_letter == "ABCD"[int(np.argmax(probs))]
    assert trace.answer.correct_letter == (trace.answer.predicted_letter == "B")


@pytest.mark.parametrize("mask_kind", ["none", "causal", "padded", "additive"])
def test_handler_matches_plain_attention_under_any_mask(mask_kind):
    """The capture handler against a plain softmax(QK^T + M)V, for every kind of mask transformers may pass."""
    lm = tiny("qwen2_vl")
    _, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    t, heads, kv_heads, dim = layout.seq_len, 4, 2, 16
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, t, dim, generator=gen) for h in (heads, kv_heads, kv_heads))
    allowed = torch.ones(t, t).tril().bool()
    if mask_kind == "padded":
        allowed[:, :3] = False  # left padding: nobody attends the first three keys
        allowed[torch.arange(3), torch.arange(3)] = True  # (padding rows attend themselves, as HF does)
    mask = {"none": None, "causal": allowed[None, None], "padded": allowed[None, None]}.get(mask_kind)
    if mask_kind == "additive":
        mask = torch.zeros(1, 1, t, t).masked_fill(~allowed, torch.finfo(torch.float32).min)

    class Layer(torch.nn.Module):  # what an HF attention module carries that attention functions read
        layer_idx = 0
        num_key_value_groups = heads // kv_heads
        is_causal = True

    capture = FlowCapture(layout, torch.device("cpu"), CaptureOptions())
    out = capture(Layer(), q, k, v, mask, dim**-0.5)
    kk, vv = (x.repeat_interleave(heads // kv_heads, dim=1) for x in (k, v))
    scores = (q @ kk.transpose(-1, -2)) * dim**-0.5
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
    torch.testing.assert_close(out, (probs @ vv).transpose(1, 2), atol=1e-5, rtol=0)
    capture.flow_sums[1:] = [capture.flow_sums[0]] * (layout.n_layers - 1)  # only layer 0 ran
    expected = reduce_groups(probs[0].double().numpy()[None], layout, layout.partition)[0]
    np.testing.assert_allclose(capture.segment_flow()[0], expected, atol=ATOL)
