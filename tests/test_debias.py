"""Debiasing: planted trends recovered, flat trends flat, sinks and padding by hand, diagnostics against
independent computations, and `flowlens debias` end to end on the toy model (both modes)."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import spearmanr

from flowlens.errors import FlowlensError
from flowlens.pruning import diagnostics as dg
from flowlens.pruning import sinks as sk
from flowlens.pruning.trend import apply, fit_trend, position_means, token_positions


def planted(lam: float, n: int = 576, samples: int = 200, sigma: float = 0.5, seed: int = 0):
    """Scores exp(lam*i) times mean-one log-normal noise, `samples` vectors of length n."""
    rng = np.random.default_rng(seed)
    base = np.exp(lam * np.arange(n))
    scores = [base * np.exp(sigma * rng.standard_normal(n) - sigma**2 / 2) for _ in range(samples)]
    return scores, [np.arange(n)] * samples


@pytest.mark.parametrize("lam", [0.002, 0.004, -0.01])
def test_exp_fit_recovers_planted_lambda(lam):
    scores, positions = planted(lam)
    means, counts = position_means(scores, positions)
    fit = fit_trend(means, counts, "exp")
    assert abs(fit.lam - lam) <= 0.05 * abs(lam)
    assert abs(fit.amplification - math.exp(lam * 575)) <= 0.05 * math.exp(lam * 575)
    for family in ("poly3", "nonparametric"):  # the other families see the same bias strength, looser
        other = fit_trend(means, counts, family)
        assert abs(math.log(other.amplification) - lam * 575) <= 0.15 * abs(lam * 575), family


def test_flat_trend_amplification_is_one():
    rng = np.random.default_rng(1)
    scores = [rng.random(576) for _ in range(200)]
    means, counts = position_means(scores, [np.arange(576)] * 200)
    for family in ("exp", "poly3", "nonparametric"):
        fit = fit_trend(means, counts, family)
        assert abs(fit.amplification - 1.0) < 0.05, (family, fit.amplification)


def test_apply_divide_and_subtract():
    n = 50
    positions = np.arange(n)
    means, counts = position_means([np.exp(0.03 * positions)], [positions])
    fit = fit_trend(means, counts, "exp")
    scores = np.linspace(1, 2, n)
    np.testing.assert_allclose(apply(scores, positions, fit), scores * np.exp(-0.03 * positions), rtol=1e-9)
    expected = scores - (np.exp(0.03 * positions) - 1.0)
    np.testing.assert_allclose(apply(scores, positions, fit, "subtract"), expected, rtol=1e-9)
    separators = positions.copy()
    separators[::7] = -1  # tokens with no cell are left as they are
    assert np.array_equal(apply(scores, separators, fit)[::7], scores[::7])
    with pytest.raises(FlowlensError, match="fitted on positions"):
        apply(np.ones(n + 1), np.arange(n + 1), fit)


def test_nonparametric_follows_a_step():
    positions = np.arange(40)
    values = np.where(positions < 20, 1.0, 3.0)
    means, counts = position_means([values], [positions])
    fit = fit_trend(means, counts, "nonparametric", bins=8, smooth=0)
    np.testing.assert_allclose(fit.trend(np.array([0, 39])), [1.0, 3.0])
    assert fit.amplification == pytest.approx(3.0)


def test_token_positions_on_a_layout():
    from flowlens.models.layout import TokenLayout

    cells = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [0, -1, -1], [1, 0, 0], [1, 0, 1]])
    layout = TokenLayout(
        groups={"video_features": np.arange(7)},
        partition=[],
        video_cells=cells,
        frame_sources=[],
        frame_grid=[],
        seq_len=7,
        n_layers=1,
        n_heads=1,
        n_kv_heads=1,
        d_model=1,
    )
    assert token_positions(layout, "global_index").tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert token_positions(layout, "frame").tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert token_positions(layout, "within_frame_index").tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert token_positions(layout, "row").tolist() == [0, 0, 1, 1, -1, 0, 0]
    assert token_positions(layout, "col").tolist() == [0, 1, 0, 1, -1, 0, 1]


def test_sinks_by_hand():
    received = np.full((2, 2, 6), 0.01)
    received[0, 0, 3] = received[0, 1, 3] = received[1, 0, 3] = 0.5  # 3 of 4 (layer, head) pairs
    received[1, 1, 1] = 0.5  # 1 of 4
    received[:, :, 5] = 0.09  # 9x the median: below the ratio
    assert sk.received_sinks(received, ratio=10, share=0.5).tolist() == [0, 0, 0, 1, 0, 0]
    assert sk.received_sinks(received, ratio=10, share=0.25).tolist() == [0, 1, 0, 1, 0, 0]
    assert sk.received_sinks(received, ratio=5, share=1.0).tolist() == [0, 0, 0, 0, 0, 1]
    norms = np.array([[1.0, 1.1, 0.9, 1.0, 50.0], [1.0, 6.0, 1.0, 1.0, 1.0]])
    assert sk.norm_sinks(norms, ratio=5).tolist() == [0, 1, 0, 0, 1]


def test_letterbox_padding_by_hand():
    # a 2x4 frame padded to 4x4: the top and bottom grid rows are padding, the middle ones content
    np.testing.assert_allclose(
        sk.letterbox_pad_fraction(2, 4, 4, 4), np.repeat([[1.0], [0.0], [0.0], [1.0]], 4, axis=1)
    )
    # a 3x4 frame on a 2x2 grid: half a pixel of padding at the top and bottom = a quarter of each cell
    np.testing.assert_allclose(sk.letterbox_pad_fraction(3, 4, 2, 2), np.full((2, 2), 0.25))
    # portrait: the columns are padded
    np.testing.assert_allclose(sk.letterbox_pad_fraction(4, 2, 1, 4), [[1.0, 0.0, 0.0, 1.0]])
    cells = np.array([[0, 0, 0], [0, 1, 0], [0, -1, -1], [0, 3, 3]])
    np.testing.assert_allclose(sk.pad_fractions(cells, "x", "letterbox", (2, 4)), [1.0, 0.0, 0.0, 1.0])
    assert not sk.pad_fractions(cells, "qwen2_vl").any()  # its processor resizes, never pads
    with pytest.raises(FlowlensError, match="frame_height"):
        sk.pad_fractions(cells, "x", "letterbox")


def test_masked_tokens_rank_last():
    scores = np.array([5.0, -1.0, 3.0, 9.0])
    masked = sk.mask_scores(scores, np.array([False, False, False, True]))
    assert dg.topk_mask(masked, 0.75).tolist() == [True, True, True, False]


def _reference_topk(scores, ratio):
    k = min(len(scores), int(math.floor(ratio * len(scores) + 0.5)))
    return set(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


def test_diagnostics_against_independent_computation():
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(5, 60))
        a = rng.integers(0, 6, n).astype(float)  # many ties
        b = a + rng.normal(0, 2, n) if trial % 2 else rng.integers(0, 4, n).astype(float)
        assert dg.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
        for ratio in (0.5, 0.25, 0.15, 0.1):
            ka, kb = _reference_topk(a, ratio), _reference_topk(b, ratio)
            assert set(np.flatnonzero(dg.topk_mask(a, ratio))) == ka
            expected = len(ka & kb) / len(ka | kb) if ka | kb else 1.0
            assert dg.topk_jaccard(a, b, ratio) == pytest.approx(expected)
    keeps = [np.array([1, 0, 1, 1], bool), np.array([0, 1, 1, 0], bool)]
    positions = [np.array([0, 1, 2, -1]), np.array([2, 2, 0, 1])]
    counter = Counter(int(p) for k, pos in zip(keeps, positions, strict=True) for p in pos[k] if p >= 0)
    total = sum(counter.values())
    expected = [counter[i] / total for i in range(3)]
    np.testing.assert_allclose(dg.position_histogram(keeps, positions, 3), expected)
    assert dg.kept_share(keeps[0], np.array([1, 1, 0, 0], bool)) == pytest.approx(1 / 3)


def sinks_by_loop(received, ratio=10.0, share=0.5):
    """Independent sink rule: count, token by token, the (layer, head) pairs where it is an outlier."""
    layers, heads, n = received.shape
    out = []
    for j in range(n):
        hits = 0
        for layer in range(layers):
            for head in range(heads):
                row = received[layer, head]
                hits += row[j] >= ratio * float(np.median(row)) and row[j] > 0
        out.append(hits / (layers * heads) >= share)
    return np.array(out)


# ------------------------------------------------------------------ end to end on the toy model
@pytest.fixture(scope="module")
def toy_debias(tmp_path_factory):
    from flowlens.cli import main

    out = tmp_path_factory.mktemp("debias")
    code = main(
        [
            "debias",
            "toy",
            "--dataset",
            "synthetic",
            "--limit",
            "6",
            "--out",
            str(out),
            "--budgets",
            "0.5",
            "0.25",
        ]
    )
    assert code == 0
    return out


def test_cli_end_to_end(toy_debias):
    from flowlens.pruning.scorers import ScoreContext, attn_last
    from flowlens.store.run import open_run

    with open_run(toy_debias / "debias.h5") as run:
        fits = run.table("debias_fits")
        tables = set(run.run_tables)
    assert {"debias_fits", "debias_histograms", "debias_agreement", "debias_flags"} <= tables
    # independent: the exp fit of attn_last(layer=1) along the global index, from the trace's stored rows
    with open_run(toy_debias / "trace.h5") as trace:
        ids = trace.traced
        rows = np.stack([trace.array(s, "last_to_video")[1].mean(0) for s in ids])
        assert np.array_equal(rows[0], attn_last(ScoreContext(trace, ids[0]), layer=1))
        received = trace.array(ids[0], "received_attention")
        assert received.shape[2] == 3
    means = rows.astype(np.float64).mean(0)
    slope = np.polyfit(np.arange(means.size), np.log(means), 1)[0]
    row = fits[
        (fits["scorer_label"] == "attn_last(layer=1)")
        & (fits["axis"] == "global_index")
        & (fits["family"] == "exp")
        & (fits["stage"] == "raw")
    ].iloc[0]
    assert row["lam"] == pytest.approx(slope, rel=1e-9)
    assert row["amplification"] == pytest.approx(math.exp(slope * (means.size - 1)), rel=1e-9)
    assert json.loads(row["fit"])["key"]["frames"] == 8
    html = (toy_debias / "debias.html").read_text()
    assert 'id="debias-trend"' in html and 'id="debias-histograms"' in html


def test_run_folder_mode_and_debias_steps(toy_debias, tmp_path):
    from flowlens.analyses.debias import DebiasOptions, debias_run
    from flowlens.pruning.debias import (
        calibrate,
        calibrate_contexts,
        context_sinks,
        load_fit,
        positional_trend,
        sample_sinks,
        sample_trend,
    )
    from flowlens.pruning.scorers import ScoreContext
    from flowlens.store.run import open_run

    run = debias_run(toy_debias, tmp_path, DebiasOptions(budgets=[0.5, 0.25]), report=False, progress=False)
    with run, open_run(toy_debias / "debias.h5") as first:
        a, b = run.table("debias_fits"), first.table("debias_fits")
        np.testing.assert_allclose(a["lam"], b["lam"], rtol=1e-12)
    with open_run(toy_debias / "trace.h5") as trace:
        sample = trace.traced[0]
        context = ScoreContext(trace, sample)
        scores = context.array("last_to_video")[1].mean(0).astype(np.float64)
        fit = calibrate(trace, "attn_last", {"layer": 1})
        stored = load_fit(toy_debias, "global_index", "exp", "attn_last(layer=1)")
        assert stored.params == pytest.approx(fit.params)
        positions = token_positions(trace.layout(sample), "global_index")
        expected = apply(scores, positions, fit)
        via_run = positional_trend(scores, context, scorer={"name": "attn_last", "layer": 1})
        via_file = positional_trend(scores, context, fit=str(toy_debias), scorer="attn_last(layer=1)")
        np.testing.assert_allclose(via_run, expected)
        np.testing.assert_allclose(via_file, expected)
        embedded = positional_trend(scores, context, fit=json.loads(fit.to_json()))  # the fit as spec data
        np.testing.assert_allclose(embedded, expected)
        contexts = [ScoreContext(trace, s) for s in trace.traced]
        assert calibrate_contexts(contexts, "attn_last", {"layer": 1}).params == pytest.approx(fit.params)
        flags, source = context_sinks(context)
        assert source == "received" and np.array_equal(flags, sample_sinks(trace, sample)[0])
        received = trace.array(sample, "received_attention")[:, :, 0]
        assert np.array_equal(flags, sinks_by_loop(received))
        context.cache["scorer"] = {"name": "attn_last", "layer": 1}  # what the pruning engine may pass
        np.testing.assert_allclose(
            positional_trend(scores, ScoreContext(trace, sample, context.cache)), expected
        )
        with pytest.raises(FlowlensError, match="needs the scorer"):
            positional_trend(scores, ScoreContext(trace, sample), calibration="run")
        own = apply(scores, positions, sample_trend(scores, positions))  # auto without a scorer: per sample
        np.testing.assert_allclose(positional_trend(scores, ScoreContext(trace, sample)), own)
        # the pruning engine's context (an in-memory trace, no run file) through the spec registry
        from flowlens.pruning.spec import PRESETS, DebiasSpec, apply_debias

        step = DebiasSpec.from_data(PRESETS["fastv+debias"]["debias"][1])
        in_memory = ScoreContext(None, sample, trace=trace.sample(sample))
        np.testing.assert_allclose(apply_debias(scores, step, in_memory), own)
        flags, _ = context_sinks(in_memory)
        assert np.array_equal(flags, sample_sinks(trace, sample)[0])


def test_per_sample_variant_ignores_the_salient_few(monkeypatch):
    """`calibration: sample` fits the sample's low-score majority: a few planted salient tokens do not bend
    the trend, and the step plugs into a pruning-spec registry with the documented signature."""
    import sys
    import types

    import flowlens.pruning.debias as debias

    n, lam = 400, 0.004
    rng = np.random.default_rng(5)
    scores = np.exp(lam * np.arange(n)) * np.exp(0.05 * rng.standard_normal(n))
    salient = rng.choice(n // 2, 10, replace=False)  # early tokens made 50x more important
    scores[salient] *= 50

    class Context:
        layout = types.SimpleNamespace(video_cells=np.stack([np.zeros(n), np.zeros(n), np.arange(n)], 1))
        cache: dict = {}

    out = debias.positional_trend(scores, Context(), calibration="sample")
    means, counts = position_means([np.delete(scores, salient)], [np.delete(np.arange(n), salient)])
    reference = fit_trend(means, counts, "exp")
    first = fit_trend(*position_means([scores], [np.arange(n)]), "exp")
    ratio = scores / first.trend(np.arange(n))
    low = ratio <= np.quantile(ratio, 0.8)
    only_low = fit_trend(*position_means([scores[low]], [np.arange(n)[low]]), "exp")
    assert abs(first.lam - lam) > 0.1 * lam  # the salient few bend a plain fit (by 18 % here)
    assert abs(only_low.lam - lam) < 0.05 * lam and abs(reference.lam - lam) < 0.05 * lam
    np.testing.assert_allclose(out, apply(scores, np.arange(n), only_low))
    registered = {}
    fake = types.ModuleType("flowlens.pruning.spec")
    fake.register_debias = lambda name: lambda function: registered.setdefault(name, function)
    monkeypatch.setitem(sys.modules, "flowlens.pruning.spec", fake)
    debias._register()
    assert registered == {
        "positional_trend": debias.positional_trend,
        "pad_mask": debias.pad_mask,
        "sink_mask": debias.sink_mask,
    }


def test_cli_refuses_bad_scorers_before_any_forward(tmp_path, capsys):
    from flowlens.cli import main

    base = ["debias", "toy", "--dataset", "synthetic", "--limit", "2"]
    assert main([*base, "--scorer", "nosuch", "--out", str(tmp_path / "a")]) != 0
    assert "unknown scorer 'nosuch'" in capsys.readouterr().err
    assert main([*base, "--scorer-layers", "7", "--out", str(tmp_path / "b")]) != 0
    assert "the model has layers 0 to 3" in capsys.readouterr().err
    assert not (tmp_path / "a" / "trace.h5").exists() and not (tmp_path / "b" / "trace.h5").exists()
