"""Under `cross_frame` in every layer no later frame may depend on frame 0 -- through markup tokens neither.

InternVL's `FrameN: <img>`, VideoLLaMA3's `Time t s:` and Qwen3-VL's timestamps sit between frames; each
frame group owns the markup that introduces it, so the knockout blocks that side route too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample, random_video, tiny

from flowlens.engine.backend import active_handler, language_attention
from flowlens.engine.masks import CompiledKnockout, EdgeMask
from flowlens.engine.spec import Block, Knockout

FRAMES = 4


def hidden_states(lm, inputs, knockout: CompiledKnockout) -> list[torch.Tensor]:
    """Every decoder layer's output (T, D) with `knockout` applied."""
    out: list[torch.Tensor] = []
    layers = lm.adapter.language_layers()
    handles = [
        layer.register_forward_hook(lambda m, a, o: out.append((o[0] if isinstance(o, tuple) else o)[0]))
        for layer in layers
    ]
    try:
        with torch.no_grad(), language_attention(lm.model), active_handler(EdgeMask([knockout])):
            lm.model(**inputs, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return out


def test_cross_frame_knockout_leaves_later_frames_independent_of_frame_0(family):
    lm = tiny(family)
    video = random_video(frames=FRAMES)
    changed = video.copy()
    changed[0] = np.random.default_rng(99).integers(0, 256, changed[0].shape, dtype=np.uint8)
    inputs, layout = lm.prepare(make_sample(video), frames=FRAMES)
    inputs2, layout2 = lm.prepare(make_sample(changed), frames=FRAMES)
    assert layout2.groups.keys() == layout.groups.keys()
    assert all(np.array_equal(layout[g], layout2[g]) for g in layout.groups)
    knockout = CompiledKnockout.compile(Knockout((Block.cross_frame(),), range(lm.n_layers)), layout)
    before, after = hidden_states(lm, inputs, knockout), hidden_states(lm, inputs2, knockout)
    later = np.concatenate([layout[g] for g in layout.frame_groups[1:]])
    first = layout[layout.frame_groups[0]]
    moved = max(float((a[first] - b[first]).abs().max()) for a, b in zip(before, after, strict=True))
    assert moved > 0  # frame 0 did change
    for layer, (a, b) in enumerate(zip(before, after, strict=True)):
        leak = float((a[later] - b[later]).abs().max())
        assert leak == 0.0, f"layer {layer}: later frames moved by {leak:.3g} when frame 0 changed"


@pytest.mark.parametrize("family", ["internvl", "video_llama_3", "qwen3_vl"])
def test_markup_between_frames_belongs_to_the_frame_it_introduces(family):
    lm = tiny(family)
    _, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    features = layout["video_features"]
    for f, name in enumerate(layout.frame_groups):
        group = layout[name]
        markup = layout[f"{name}_markup"] if f"{name}_markup" in layout else group[:0]
        np.testing.assert_array_equal(
            np.sort(np.concatenate([np.intersect1d(group, features), markup])), group
        )
        own = np.intersect1d(group, features)
        before = markup[markup < own[0]]
        if f > 0:  # markup that introduces frame f lies after frame f-1's last feature token
            previous = np.intersect1d(layout[layout.frame_groups[f - 1]], features)
            assert (before > previous[-1]).all()
        after = markup[markup > own[-1]]
        assert f == layout.n_frames - 1 or after.size == 0  # only the last group keeps closing markup
    assert layout["video"][0] == layout[layout.frame_groups[0]][0]
    np.testing.assert_array_equal(layout["video"], np.arange(layout["video"][0], layout["video"][-1] + 1))
