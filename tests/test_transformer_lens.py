"""Captured attention matches TransformerLens's TransformerBridge `blocks.{l}.attn.hook_pattern` where TL supports the family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample, random_video, tiny
from test_trace_parity import reduce_groups

from flowlens.analyses.trace import TraceOptions, trace_sample
from flowlens.models.tiny import tiny_path

bridge_module = pytest.importorskip("transformer_lens.model_bridge", reason="needs the [tl] extra")

TL_FAMILIES = ["llava_onevision", "qwen2_5_vl", "qwen3_vl"]  # supported by TransformerLens 4.3


@pytest.mark.parametrize("family", TL_FAMILIES)
def test_patterns_match_transformer_bridge(family):
    lm = tiny(family)
    sample = make_sample(random_video(frames=8))
    trace = trace_sample(lm, sample, TraceOptions(frames=8))
    inputs, layout = lm.prepare(sample, frames=8)
    bridge = bridge_module.TransformerBridge.boot_transformers(
        str(tiny_path(family)), device="cpu", dtype=torch.float32
    )
    extra = {k: v for k, v in inputs.items() if k != "input_ids"}
    with torch.no_grad():
        _, cache = bridge.run_with_cache(
            inputs["input_ids"],
            names_filter=lambda name: name.startswith("blocks.") and name.endswith("hook_pattern"),
            **extra,
        )
    att = (
        torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(layout.n_layers)])
        .double()
        .numpy()
    )
    np.testing.assert_allclose(trace.segment_flow, reduce_groups(att, layout, layout.partition), atol=1e-5)
    np.testing.assert_allclose(trace.frame_flow, reduce_groups(att, layout, layout.frame_groups), atol=1e-5)
    np.testing.assert_allclose(trace.last_to_video, att[:, :, -1][:, :, layout["video_features"]], atol=1e-5)
