"""Effective pathways: rule tables, edge accounting as the paper, the random control, and exact masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample, random_video, tiny
from reference_knockout import reference_logits_per_layer, reference_pathway_masks

from flowlens.analyses.pathways import PathwayOptions, pathways_sample
from flowlens.engine.masks import CompiledKnockout
from flowlens.engine.pathways import (
    RuleTable,
    edge_counts,
    map_the_flow_rules,
    per_layer_allowed,
    random_control,
)
from flowlens.engine.resume import CleanRun
from flowlens.engine.spec import Block, Knockout

FRAMES = 8


@pytest.fixture(scope="module")
def prepared():
    lm = tiny("llava_next_video")
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    return lm, inputs, layout


def test_rule_table_round_trip():
    rules = map_the_flow_rules(32, (5, 14), (5, 19), (15, 24))
    again = RuleTable.from_dict(rules.to_dict())
    assert again == rules
    knockouts = {k.name: k for k in rules.knockouts(32)}
    assert knockouts["cross_frame"].layers == tuple(x for x in range(32) if not 5 <= x <= 14)
    assert knockouts["video->last"].layers == tuple(range(32))
    assert knockouts["video->video"].layers == tuple(range(20, 32))


def test_edge_accounting_matches_hand_counts(prepared):
    _, _, layout = prepared
    n, layers = layout.seq_len, layout.n_layers
    full = layers * n * (n + 1) // 2
    assert edge_counts(layout, []) == (full, full)
    kept, _ = edge_counts(layout, [Knockout((Block("last", "last"),), range(layers))])
    assert kept == full - layers  # one pair (last, last) per layer
    sizes = [layout[g].size for g in layout.frame_groups]
    cross = sum(sizes[i] * sum(sizes[:i]) for i in range(len(sizes)))
    kept, _ = edge_counts(layout, [Knockout((Block.cross_frame(),), [0, 2])])
    assert kept == full - 2 * cross


def test_random_controls_block_as_many_pairs_after_the_video(prepared):
    _, _, layout = prepared
    knockouts = map_the_flow_rules(layout.n_layers, (0, 1), (0, 2), (1, 2)).knockouts(layout.n_layers)
    kept, total = edge_counts(layout, knockouts)
    n = layout.seq_len
    full = n * (n + 1) // 2
    # the paper's (default): int(r * N(N+1)/2) pairs in every layer, r = the pathway's suppressed fraction
    uniform = random_control(layout, knockouts, seed=3)
    per_layer_blocked = [int((~c.allowed).tril().sum()) for c in uniform]
    assert per_layer_blocked == [int((1 - kept / total) * full)] * layout.n_layers
    # the alternative: as many pairs as the pathway blocks in each layer
    per_layer = random_control(layout, knockouts, seed=3, mode="per-layer")
    pathway_blocked = [full - int(a.sum()) for a in per_layer_allowed(layout, knockouts)]
    assert {min(c.layers): int((~c.allowed).tril().sum()) for c in per_layer} == {
        layer: b for layer, b in enumerate(pathway_blocked) if b
    }
    assert len(set(pathway_blocked)) > 1  # the two controls really differ on this rule table
    control = per_layer
    blocked = sum(int((~c.allowed).tril().sum()) for c in control)
    assert blocked == total - kept
    first = int(layout["video"][0])
    for c in control:
        q, k = torch.nonzero(~c.allowed & torch.ones_like(c.allowed).tril()).T
        assert (q >= first).all() and (k >= first).all()
    again = random_control(layout, knockouts, seed=3, mode="per-layer")
    assert all(torch.equal(a.allowed, b.allowed) for a, b in zip(control, again, strict=True))


def test_pathway_logits_equal_per_layer_explicit_masks(prepared):
    lm, inputs, layout = prepared
    knockouts = map_the_flow_rules(layout.n_layers, (0, 1), (0, 2), (1, 2)).knockouts(layout.n_layers)
    clean = CleanRun(lm, inputs, layout)
    compiled = [CompiledKnockout.compile(k, layout) for k in knockouts]
    ours = clean.run_from(0, [compiled])[0]
    expected = reference_logits_per_layer(lm, inputs, layout, reference_pathway_masks(layout, knockouts))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    control = random_control(layout, knockouts, seed=0)
    masks = {
        min(c.layers): torch.where(c.allowed, 0.0, np.finfo(np.float32).min)[None, None].float()
        for c in control
    }
    torch.testing.assert_close(
        clean.run_from(0, [control])[0],
        reference_logits_per_layer(lm, inputs, layout, masks),
        atol=1e-5,
        rtol=0,
    )


def test_pathways_sample_rows(prepared):
    lm, _, layout = prepared
    rules = map_the_flow_rules(layout.n_layers, (0, 1), (0, 2), (1, 2))
    result = pathways_sample(
        lm, make_sample(random_video(frames=FRAMES)), rules, PathwayOptions(frames=FRAMES)
    )
    rows = result.rows
    assert rows["condition"] == ["full", "pathways", "random", "random_per_layer"]
    assert rows["kept_fraction"][0] == 1.0 and rows["kept_fraction"][1] == rows["kept_fraction"][3] < 1.0
    assert rows["kept_fraction"][2] == pytest.approx(rows["kept_fraction"][1], abs=1e-3)  # int() rounding
    assert rows["predicted"][0] == result.clean.predicted
