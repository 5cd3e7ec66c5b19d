"""Knockouts through the flowlens backend equal a plain explicit-mask implementation, for every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample, random_video, tiny
from reference_knockout import reference_logits

from flowlens.engine.masks import CompiledKnockout, allowed_matrix, blocked_matrix
from flowlens.engine.resume import CleanRun
from flowlens.engine.spec import Block, Knockout, window

FRAMES = 8


def knockouts(n_layers: int) -> list[Knockout]:
    mid = n_layers // 2
    return [
        Knockout((Block("video", "question"), Block("question", "last")), window(mid, n_layers, 3)),
        Knockout((Block.cross_frame(),), range(n_layers)),
        Knockout((Block("last", "last"), Block("video", "last")), [0, n_layers - 1]),
        Knockout((Block("true_option", "last"), Block("video", "question_only")), [1, 2], heads=(0, 3)),
        Knockout((Block("prefix", "video"), Block("video", "video")), [mid]),  # video rows lose most keys
    ]


@pytest.fixture
def setup(family):
    lm = tiny(family)
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    return lm, inputs, layout, CleanRun(lm, inputs, layout)


def test_empty_knockout_reproduces_clean_logits_exactly(setup):
    lm, inputs, layout, clean = setup
    with torch.no_grad():
        sdpa = lm.model(**inputs).logits[0, -1].float()
    torch.testing.assert_close(clean.logits, sdpa, atol=1e-6, rtol=0)
    assert torch.equal(clean.run_from(0, [None])[0], clean.logits)
    last = layout.seq_len - 1
    torch.testing.assert_close(clean.run_from(0, [None], last)[0], clean.logits, atol=1e-5, rtol=0)
    empty = CompiledKnockout.compile(Knockout((), range(layout.n_layers)), layout)
    torch.testing.assert_close(clean.run_from(0, [empty])[0], clean.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("from_position", [False, True])
def test_knockouts_equal_plain_explicit_mask(setup, from_position):
    """Batched, from each knockout's first layer (and first changed position, reusing the clean KV cache)."""
    lm, inputs, layout, clean = setup
    specs = knockouts(layout.n_layers)
    compiled = [CompiledKnockout.compile(k, layout) for k in specs]
    starts = sorted({min(k.layers) for k in specs})
    for start in starts:
        group = [(c, k) for c, k in zip(compiled, specs, strict=True) if min(k.layers) == start]
        position = min(c.first_changed_position for c, _ in group) if from_position else 0
        batch_logits = clean.run_from(start, [c for c, _ in group] + [None], position)  # plus a clean row
        for row, (_, knockout) in zip(batch_logits, group, strict=False):
            torch.testing.assert_close(row, reference_logits(lm, inputs, layout, knockout), atol=1e-5, rtol=0)
        torch.testing.assert_close(batch_logits[-1], clean.logits, atol=1e-5, rtol=0)


def test_fully_blocked_rows_stay_finite(setup):
    lm, inputs, layout, clean = setup
    everything = tuple(Block(src, "video") for src in layout.partition)  # video queries may attend nothing
    knockout = Knockout(everything, range(layout.n_layers))
    logits = clean.run_from(0, [CompiledKnockout.compile(knockout, layout)])[0]
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, reference_logits(lm, inputs, layout, knockout), atol=1e-5, rtol=0)


def test_mask_compilation():
    lm = tiny("llava_next_video")
    _, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    blocked = blocked_matrix(layout, [Block.cross_frame()])
    f1, f0 = layout["frame1"], layout["frame0"]
    assert blocked[f1][:, f0].all() and not blocked[f0][:, f1].any() and not blocked[f1][:, f1].any()
    allowed = allowed_matrix(blocked_matrix(layout, [Block("last", "last")]))
    last = layout.seq_len - 1
    assert not allowed[last, last] and allowed[last, :last].all()


def test_decode_rows_follow_last():
    lm = tiny("llava_next_video")
    _, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    ko = CompiledKnockout.compile(Knockout((Block("video", "last"),), [0]), layout)
    t = layout.seq_len
    rows = ko.rows(1, t + 2)  # the second generated token
    np.testing.assert_array_equal(rows[0, :t].numpy(), ko.allowed[t - 1].numpy())
    assert rows[0, t:].all()
