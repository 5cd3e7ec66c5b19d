"""DTD on pixels: `pixel_novelty` against hand numbers, through real tiny models into a run file and back,
the scorer's `pixels` mode, and what it picks on the synthetic set."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import make_sample, random_video, tiny

import flowlens
from flowlens.analyses.options import results_settings
from flowlens.analyses.trace import TraceOptions, trace_sample
from flowlens.engine.sizing import estimate_trace_size
from flowlens.errors import FlowlensError
from flowlens.pruning.pixels import block_bounds, pixel_novelty
from flowlens.pruning.run import PruneRunOptions, prune_sample, scorer_needs
from flowlens.pruning.scorers import ScoreContext, score
from flowlens.pruning.spec import PRESETS, PruneSpec, load_spec
from flowlens.zoo import TOY_DIR

needs_toy = pytest.mark.skipif(not (TOY_DIR / "config.json").exists(), reason="toy weights not built")
FRAMES = 8


def fake_layout(cells, grids, sources):
    """What pixel_novelty reads of a layout: video_cells, frame_grid, frame_sources."""
    return SimpleNamespace(
        video_cells=np.asarray(cells, dtype=np.int64), frame_grid=grids, frame_sources=sources
    )


# ------------------------------------------------------------------ the pure function, by hand
def test_block_bounds_tile_the_frame_with_floor_bounds():
    assert [block_bounds(i, 2, 6) for i in range(2)] == [(0, 3), (3, 6)]
    assert [block_bounds(i, 2, 5) for i in range(2)] == [(0, 2), (2, 5)]  # floor(2.5) = 2
    assert [block_bounds(i, 3, 8) for i in range(3)] == [(0, 2), (2, 5), (5, 8)]
    assert [block_bounds(i, 4, 2) for i in range(4)] == [(0, 1), (0, 1), (1, 2), (1, 2)]  # never empty


def test_pixel_novelty_equals_hand_numbers():
    # 3 frames of 6 x 8, a 2 x 2 grid: cell (r, c) covers rows 3r..3r+3, cols 4c..4c+4 (12 pixels)
    frames = np.zeros((3, 6, 8, 3), dtype=np.uint8)
    frames[1:, 0:3, 4:8] = 51  # cell (0, 1) brightens by 51 / 255 = 0.2 in frame 1 and stays in frame 2
    frames[2, 3:6, 0:2, 0] = 255  # cell (1, 0): red full on 6 of its 12 pixels in frame 2 only
    cells = [(f, r, c) for f in range(3) for r in range(2) for c in range(2)]
    cells += [(1, -1, -1), (2, -1, -1)]  # separators of groups 1 and 2
    layout = fake_layout(cells, [(2, 2)] * 3, [[0], [1], [2]])
    got = pixel_novelty(frames, layout)
    expected = np.array(
        [1.0, 1.0, 1.0, 1.0]  # group 0: no previous group, the maximum
        + [0.0, 0.2, 0.0, 0.0]  # group 1: only cell (0, 1) changed, by 0.2 on every pixel and channel
        + [0.0, 0.0, 6 / 36, 0.0]  # group 2: 6 pixels x 1 channel of 12 x 3 changed by 1.0
        + [1.0, 1.0],  # separators
        dtype=np.float32,
    )
    assert got.dtype == np.float32 and got.shape == (len(cells),)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    # a 3 x 2 grid on the same frames: rows [0, 2), [2, 4), [4, 6); cell (1, 0) of frame 2 holds the red
    # pixels of rows 3 only (2 of its 8 pixels), cell (2, 0) rows 4 and 5 (4 of 8)
    layout = fake_layout([(2, 1, 0), (2, 2, 0), (2, 0, 1)], [(3, 2)] * 3, [[0], [1], [2]])
    np.testing.assert_allclose(
        pixel_novelty(frames, layout), np.array([2 / 24, 4 / 24, 0.0], dtype=np.float32), rtol=1e-6
    )


def test_merged_groups_compare_the_mean_of_their_source_frames():
    # 5 frames of 2 x 4 in groups of 2 (the last group holds one frame, as Qwen2-VL's odd tail); grid 1 x 2
    frames = np.zeros((5, 2, 4, 3), dtype=np.uint8)
    frames[1] = 100  # group 0 = mean(0, 100) = 50 everywhere
    frames[2] = 50
    frames[3, :, :2] = 50
    frames[3, :, 2:] = 250  # group 1: left 50 (unchanged), right mean(50, 250) = 150 (+100)
    frames[4, :, :2] = 20
    frames[4, :, 2:] = 150  # group 2 = frame 4: left 20 (-30), right 150 (unchanged)
    cells = [(g, 0, c) for g in range(3) for c in range(2)] + [(2, -1, -1)]
    layout = fake_layout(cells, [(1, 2)] * 3, [[0, 1], [2, 3], [4]])
    got = pixel_novelty(frames, layout)
    expected = np.array([1.0, 1.0, 0.0, 100 / 255, 30 / 255, 0.0, 1.0], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    # a frame pair compared one by one would differ: the mean, not the last source frame, is what counts
    layout_last = fake_layout(cells, [(1, 2)] * 3, [[1], [3], [4]])
    assert not np.allclose(pixel_novelty(frames, layout_last), expected)
    with pytest.raises(FlowlensError, match="only 5 were sampled"):
        pixel_novelty(frames, fake_layout(cells, [(1, 2)] * 3, [[0, 1], [2, 3], [7]]))


# ------------------------------------------------------------------ through real tiny models
def _check_traced(lm, sample, frames_n, tmp_path):
    from flowlens.analyses.trace_run import trace

    options = TraceOptions(frames=frames_n, pixel_novelty=True)
    in_memory = trace_sample(lm, sample, options)
    layout = in_memory.layout
    expected = pixel_novelty(lm.adapter.sample_frames(sample, frames_n).frames, layout)
    np.testing.assert_array_equal(in_memory.pixel_novelty, expected)
    run = trace(lm, [sample], tmp_path, options, report=False, progress=False)
    with run:
        sample_id = str(sample.id)
        assert "pixel_novelty" in run.arrays(sample_id)
        stored = run.array(sample_id, "pixel_novelty")
        assert stored.dtype == np.float32 and stored.shape == (layout.n_video,)
        np.testing.assert_array_equal(stored, expected)
        np.testing.assert_array_equal(run.sample(sample_id).pixel_novelty, expected)
        scores = score("temporal_novelty", ScoreContext(run, sample_id), mode="pixels")
        np.testing.assert_array_equal(scores, expected.astype(np.float64))
        first = layout.video_cells[:, 0] == 0
        assert (scores[first] == 1.0).all() and (scores[~first] <= 1.0).all()
    plain = trace_sample(lm, sample, TraceOptions(frames=frames_n))
    assert plain.pixel_novelty is None
    return layout, expected


@needs_toy
def test_toy_trace_stores_pixel_novelty_and_the_scorer_reads_it(tmp_path):
    lm = flowlens.load("toy")
    sample = flowlens.data.load("synthetic", split="test", limit=3)[2]
    layout, expected = _check_traced(lm, sample, FRAMES, tmp_path)
    assert all(len(s) == 1 for s in layout.frame_sources)
    assert (expected[layout.video_cells[:, 0] > 0] > 0).any()  # the object moves: not all zero
    size = estimate_trace_size(layout, pixel_novelty=True)
    assert size.pixel_novelty == layout.n_video * 4 and estimate_trace_size(layout).pixel_novelty == 0
    with_novelty = TraceOptions(frames=FRAMES, pixel_novelty=True).bytes_per_sample(layout)
    assert with_novelty - TraceOptions(frames=FRAMES).bytes_per_sample(layout) == layout.n_video * 4
    assert "pixel_novelty" not in results_settings(TraceOptions(frames=FRAMES))  # older runs resume
    assert results_settings(TraceOptions(frames=FRAMES, pixel_novelty=True))["pixel_novelty"] is True


def test_qwen2_vl_merged_groups_through_a_trace(tmp_path):
    lm = tiny("qwen2_vl")
    sample = make_sample(random_video(frames=5))
    layout, expected = _check_traced(lm, sample, 5, tmp_path)
    assert [len(s) for s in layout.frame_sources] == [2, 2, 1]  # merged temporal patches, odd tail
    later = layout.video_cells[:, 0] > 0
    assert (expected[later] > 0).all() and (expected[later] < 1).all()  # noise frames: every block changes


# ------------------------------------------------------------------ scorer, needs, errors, preset
@needs_toy
def test_missing_pixel_novelty_names_the_trace_option_and_modes_are_checked():
    lm = flowlens.load("toy")
    sample = flowlens.data.load("synthetic", split="test", limit=1)[0]
    trace = trace_sample(lm, sample, TraceOptions(frames=FRAMES))
    context = ScoreContext(None, str(sample.id), trace=trace)
    with pytest.raises(FlowlensError, match="--pixel-novelty"):
        score("temporal_novelty", context, mode="pixels")
    with pytest.raises(FlowlensError, match="'feature' or 'pixels'"):
        score("temporal_novelty", context, mode="optical_flow")
    given = np.linspace(0, 1, trace.layout.n_video)
    supplied = ScoreContext(None, str(sample.id), trace=trace, arrays={"pixel_novelty": given})
    np.testing.assert_array_equal(score("temporal_novelty", supplied, mode="pixels"), given)


def test_needs_follow_the_mode_and_the_preset_loads():
    spec = load_spec("dtd_pixels")
    assert [scorer_needs(s) for s in spec.scorers] == [{"pixel_novelty"}]
    assert [scorer_needs(s) for s in load_spec("dtd").scorers] == [{"embeddings"}]
    assert PruneSpec.from_yaml(spec.to_yaml()) == spec
    pixels, feature = PRESETS["dtd_pixels"], PRESETS["dtd"]
    same = ("layers", "modes", "position_ids")  # DTD's stage and positions; pixels rank by top fraction
    assert {k: pixels[k] for k in same} == {k: feature[k] for k in same}
    assert pixels["policies"] == ["topk_ratio"] and pixels["budgets"]


@needs_toy
def test_prune_sample_traces_pixel_novelty_itself():
    lm = flowlens.load("toy")
    sample = flowlens.data.load("synthetic", split="test", limit=3)[2]
    spec = load_spec(
        {
            "name": "t",
            "scorers": [{"name": "temporal_novelty", "mode": "pixels"}],
            "policies": [{"kind": "threshold", "budgets": [0.05]}],
            "layers": [0],
            "modes": ["mask"],
            "position_ids": ["original"],
        }
    )
    result = prune_sample(lm, sample, spec, PruneRunOptions(frames=FRAMES))
    layout = result.layout
    expected = pixel_novelty(lm.adapter.sample_frames(sample, FRAMES).frames, layout)
    rows = result.rows
    method = [i for i, role in enumerate(rows["role"]) if role == "method"]
    assert len(method) == 1
    assert rows["kept"][method[0]] == int((expected >= 0.05).sum())


# ------------------------------------------------------------------ what it picks on the synthetic set
@needs_toy
def test_synthetic_novelty_sits_where_the_frames_differ():
    lm = flowlens.load("toy")
    samples = flowlens.data.load("synthetic", split="test", limit=6)
    moving = 0
    for sample in samples:
        frames = np.asarray(lm.adapter.sample_frames(sample, FRAMES).frames)
        _, layout = lm.prepare(sample, frames=FRAMES)
        novelty = pixel_novelty(frames, layout)
        cells = layout.video_cells
        rows, cols = layout.frame_grid[0]
        height, width = frames.shape[1:3]
        changed = np.zeros(len(cells), dtype=int)  # pixels of the block that differ from the previous frame
        for i, (f, r, c) in enumerate(cells):
            if f > 0 and r >= 0:
                r0, r1 = r * height // rows, (r + 1) * height // rows
                c0, c1 = c * width // cols, (c + 1) * width // cols
                changed[i] = (frames[f, r0:r1, c0:c1] != frames[f - 1, r0:r1, c0:c1]).any(-1).sum()
        later = np.flatnonzero(cells[:, 0] > 0)
        # a later token scores > 0 exactly where its block differs from the previous frame's
        np.testing.assert_array_equal(novelty[later] > 0, changed[later] > 0)
        if not changed[later].any():
            assert (novelty[later] == 0).all()  # a static video: nothing novel after the first frame
            continue
        moving += 1
        top = later[np.argsort(-novelty[later], kind="stable")[: max(1, int((changed[later] > 0).sum()))]]
        assert (changed[top] > 0).all()
        assert (changed[later] > 0).mean() < 0.5  # the object is small: most blocks do not change
    assert moving >= 2
