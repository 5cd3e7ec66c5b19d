"""Optional trace arrays for scorers (received attention, rollout, value norms) against eager attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample, random_video, tiny

from flowlens.analyses.options import results_settings
from flowlens.analyses.trace import TraceOptions, trace_sample
from flowlens.compat import language_attention_implementation
from flowlens.engine.capture import RECEIVED_QUERIES, ROLLOUT_QUERIES, query_positions
from flowlens.engine.sizing import estimate_trace_size

FRAMES = 4
ATOL = 1e-5


def eager(lm, inputs):
    with torch.no_grad(), language_attention_implementation(lm.model, "eager"):
        out = lm.model(**inputs, output_attentions=True)
    return torch.stack(out.attentions)[:, 0].double().numpy()  # (L, H, T, T)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision", "qwen3_vl"])
def test_extras_equal_eager(family):
    lm = tiny(family)
    sample = make_sample(random_video(frames=FRAMES))
    options = TraceOptions(frames=FRAMES, received_attention=True, rollout=True, value_norms=True)
    trace = trace_sample(lm, sample, options)
    inputs, layout = lm.prepare(sample, frames=FRAMES)
    att = eager(lm, inputs)
    video = layout["video_features"]

    received = np.stack(
        [att[:, :, query_positions(layout, q)][:, :, :, video].sum(2) for q in RECEIVED_QUERIES], axis=2
    )
    np.testing.assert_allclose(trace.received_attention, received, atol=ATOL * 10)
    assert trace.received_attention.shape == (layout.n_layers, layout.n_heads, 3, layout.n_video)

    state = np.eye(layout.seq_len)[:, video]
    expected = []
    for layer in range(layout.n_layers):
        state = 0.5 * att[layer].mean(0) @ state + 0.5 * state
        expected.append([state[query_positions(layout, q)].mean(0) for q in ROLLOUT_QUERIES])
    np.testing.assert_allclose(trace.rollout, np.array(expected), atol=ATOL)

    values = []
    layers = lm.adapter.language_layers()
    hooks = [
        layer.self_attn.v_proj.register_forward_hook(lambda m, i, o: values.append(o[0].float()))
        for layer in layers
    ]
    try:
        with torch.no_grad():
            lm.model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    head_dim = lm.adapter.text_config.hidden_size // lm.adapter.text_config.num_attention_heads
    head_dim = getattr(lm.adapter.text_config, "head_dim", None) or head_dim
    norms = np.stack(
        [v.reshape(v.shape[0], -1, head_dim)[video].abs().sum(-1).mean(-1).numpy() for v in values]
    )
    np.testing.assert_allclose(trace.value_norm, norms, rtol=1e-4, atol=1e-5)


def test_extras_round_trip_and_sizes(tmp_path):
    from flowlens.analyses.trace_run import trace

    lm = tiny("qwen2_vl")
    sample = make_sample(random_video(frames=FRAMES))
    options = TraceOptions(frames=FRAMES, received_attention=True, value_norms=True)
    run = trace(lm, [sample], tmp_path, options, report=False, progress=False)
    with run:
        assert "received_attention" in run.arrays("t0") and "rollout" not in run.arrays("t0")
        stored = run.array("t0", "value_norm")
        assert stored.dtype == np.float32 and stored.shape == (lm.n_layers, run.layout("t0").n_video)
        assert run.sample("t0").received_attention is not None
        size = estimate_trace_size(run.layout("t0"), 0, True, False, True)
        layout = run.layout("t0")
        assert size.received_attention == layout.n_layers * layout.n_heads * 3 * layout.n_video * 4
        assert size.rollout == 0
    plain = TraceOptions(frames=FRAMES)
    assert "received_attention" not in results_settings(plain)  # runs written before the option resume
