"""flowlens prune: scorers against independent computations, mask mode against an explicit-mask knockout,
drop mode against the unpruned run and mask mode, specs as data, and the analysis end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_sample, random_video, tiny
from reference_knockout import reference_logits_per_layer

import flowlens
from flowlens.analyses.trace import trace_sample
from flowlens.compat import language_attention_implementation
from flowlens.engine.prune import (
    _compact_batches,
    compact_supported,
    kept_positions,
    run_drop,
    run_mask,
    run_mask_compact,
    run_mask_full,
)
from flowlens.engine.resume import CleanRun
from flowlens.errors import FlowlensError
from flowlens.pruning.scorers import ScoreContext, maxmin_order, score
from flowlens.pruning.spec import PRESETS, PruneSpec, load_spec, register_debias
from flowlens.zoo import TOY_DIR

FRAMES = 8
needs_toy = pytest.mark.skipif(not (TOY_DIR / "config.json").exists(), reason="toy weights not built")


def explicit_prune_mask(t: int, pruned) -> torch.Tensor:
    """(1, 1, T, T) additive mask built with loops: causal, and no query but j itself may attend pruned j."""
    allowed = np.zeros((t, t), dtype=bool)
    gone = set(int(p) for p in pruned)
    for q in range(t):
        for k in range(q + 1):
            allowed[q, k] = k not in gone or k == q
    mask = np.where(allowed, 0.0, np.finfo(np.float32).min).astype(np.float32)
    return torch.from_numpy(mask)[None, None]


def eager_attentions(lm, inputs) -> list[torch.Tensor]:
    """Per layer (H, T, T) attention probabilities from transformers' eager `output_attentions`."""
    with torch.no_grad(), language_attention_implementation(lm.model, "eager"):
        out = lm.model(**inputs, output_attentions=True, use_cache=False)
    return [a[0].float() for a in out.attentions]


def some_pruned(layout, share: float = 0.6, seed: int = 0) -> tuple[int, ...]:
    video = layout["video_features"]
    rng = np.random.default_rng(seed)
    return tuple(sorted(int(p) for p in rng.choice(video, int(share * video.size), replace=False)))


# ------------------------------------------------------------------ engine: mask and drop modes
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl", "qwen3_vl"])
def test_mask_mode_equals_explicit_mask_knockout(family):
    lm = tiny(family)
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    clean = CleanRun(lm, inputs, layout)
    items = [
        (k, some_pruned(layout, share, seed)) for k, share, seed in [(0, 0.5, 0), (1, 0.75, 1), (1, 0.25, 2)]
    ]
    logits = run_mask(clean, items)
    for (k, pruned), row in zip(items, logits, strict=True):
        mask = explicit_prune_mask(layout.seq_len, pruned)
        reference = reference_logits_per_layer(
            lm, inputs, layout, {layer: mask for layer in range(k, layout.n_layers)}
        )
        torch.testing.assert_close(row, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["toy", "llava_next_video", "qwen2_vl", "qwen3_vl"])
def test_compact_mask_mode_equals_every_row_under_the_mask(family):
    """Only the kept rows after the first pruned one run (padded batches, KV-cache prefix): same logits as
    recomputing every row under the explicit allowed matrix, for M-RoPE and DeepStack families too."""
    if family == "toy" and not (TOY_DIR / "config.json").exists():
        pytest.skip("toy weights not built")
    lm = flowlens.load("toy") if family == "toy" else tiny(family)
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    clean = CleanRun(lm, inputs, layout)
    video = layout["video_features"]
    late = tuple(int(p) for p in video[video.size // 2 :: 3])  # first pruned token mid-video
    items = [
        (k, some_pruned(layout, share, seed))
        for k in (0, 1)
        for share, seed in [(0.5, 0), (0.9, 1), (0.1, 2)]
    ]
    items += [(1, late), (2, (int(video[0]),))]
    compact = run_mask_compact(clean, items)
    full = run_mask_full(clean, items)
    shuffled = run_mask(clean, [(k, tuple(reversed(p))) for k, p in items[:2]])  # any order of positions
    for a, b in zip(shuffled, compact[:2], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # other batch mates: other rounding
    for (k, pruned), a, b in zip(items, compact, full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        assert float((a - clean.logits).abs().max()) > 1e-5, (k, len(pruned))  # pruning changed something
    batches = list(
        _compact_batches(
            [i for i in items if i[0] == 1], {i: kept_positions(layout.seq_len, i[1]) for i in items}, 32
        )
    )
    assert sum(map(len, batches)) == 4 and len(batches) < 4  # keep-sets of different lengths shared a batch


def test_compact_mask_mode_refuses_sliding_windows_and_checks_itself(monkeypatch):
    lm = tiny("llava_next_video")
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    clean = CleanRun(lm, inputs, layout)
    assert compact_supported(clean)
    config = lm.adapter.text_config
    monkeypatch.setattr(config, "layer_types", ["full_attention", "sliding_attention"], raising=False)
    assert not compact_supported(clean)  # a window counts cache slots: the pruned tokens' slots are gone
    monkeypatch.undo()
    # the once-per-model canary: a compact run that drifted from the full-row run is an error, not a number
    from flowlens.engine import prune as engine

    engine._COMPACT_CHECKED.discard(lm.model)
    real = engine.forward_rows
    monkeypatch.setattr(engine, "forward_rows", lambda *a, **k: real(*a, **k) + 0.1)
    with pytest.raises(flowlens.compat.CompatError, match="compact mask mode"):
        run_mask(clean, [(1, some_pruned(layout))])


@pytest.mark.parametrize("family", ["toy", "qwen2_vl"])
def test_full_budget_and_late_drop_reproduce_the_unpruned_logits(family):
    lm = flowlens.load("toy") if family == "toy" else tiny(family)
    if family == "toy" and not (TOY_DIR / "config.json").exists():
        pytest.skip("toy weights not built")
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    clean = CleanRun(lm, inputs, layout)
    n = layout.n_layers
    # mask mode, 100% budget: nothing pruned at any K is the clean run itself
    for row in run_mask(clean, [(0, ()), (1, ()), (n, some_pruned(layout))]):
        assert torch.equal(row, clean.logits)
    # drop mode, 100% budget (every token kept) re-entering at K, and K = L with tokens pruned
    rows = run_drop(clean, [(0, (), "original"), (1, (), "original"), (n, some_pruned(layout), "original")])
    for row in rows:
        assert torch.equal(row, clean.logits)


@pytest.mark.parametrize("family", ["toy", "llava_next_video", "qwen3_vl"])
def test_drop_with_original_positions_equals_mask_at_the_same_layer(family):
    """Same function: kept tokens attend the same keys at the same rotary positions; pruned rows are never read."""
    if family == "toy" and not (TOY_DIR / "config.json").exists():
        pytest.skip("toy weights not built")
    lm = flowlens.load("toy") if family == "toy" else tiny(family)
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    clean = CleanRun(lm, inputs, layout)
    pruned = [some_pruned(layout, 0.5, 0), some_pruned(layout, 0.75, 1)]
    for k in (0, 1, 2):
        masked = run_mask(clean, [(k, p) for p in pruned])
        dropped = run_drop(clean, [(k, p, "original") for p in pruned])
        for a, b in zip(masked, dropped, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
            assert float((a - clean.logits).abs().max()) > 1e-4  # pruning changed something
    if family in ("toy", "llava_next_video"):  # reindex changes the kept tokens' relative positions
        reindexed = run_drop(clean, [(0, pruned[1], "reindex")])[0]
        assert float((reindexed - masked[1]).abs().max()) > 1e-4


# ------------------------------------------------------------------ scorers
@pytest.fixture(scope="module")
def toy_sample():
    if not (TOY_DIR / "config.json").exists():
        pytest.skip("toy weights not built")
    lm = flowlens.load("toy")
    sample = flowlens.data.load("synthetic", split="test", limit=1)[0]
    inputs, layout = lm.prepare(sample, frames=FRAMES)
    from flowlens.analyses.trace import TraceOptions

    options = TraceOptions(
        frames=FRAMES,
        activations=["blocks.0.hook_resid_pre@video_features"],
        activations_dtype="float32",
        received_attention=True,
        rollout=True,
    )
    trace = trace_sample(lm, sample, options)
    context = ScoreContext(None, str(sample.id), trace=trace)
    return lm, inputs, layout, context, eager_attentions(lm, inputs)


def test_fastv_scorer_equals_eager_output_attentions(toy_sample):
    lm, inputs, layout, context, attentions = toy_sample
    video = layout["video_features"]
    for k in range(1, layout.n_layers + 1):  # FastV prunes at K from layer K-1's last row
        expected = attentions[k - 1][:, -1, video].mean(0).double().numpy()
        np.testing.assert_allclose(score("attn_last", context, layer=k - 1), expected, atol=1e-5, rtol=0)


def test_received_attention_and_rollout_equal_eager_computations(toy_sample):
    lm, inputs, layout, context, attentions = toy_sample
    video, t = layout["video_features"], layout.seq_len
    question = layout["question"]
    text = list(range(int(layout["video"].max()) + 1, t))  # the text after the video span
    rollout = np.eye(t)
    for layer, a in enumerate(attentions):
        mean = a.mean(0).double().numpy()
        # all queries, normalised by how many can see each token (q >= j)
        expected = np.array([mean[j:, j].sum() / (t - j) for j in video])
        got = score("attn_received", context, layer=layer, queries="all", normalise=True)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        expected = np.array([mean[text, j].mean() for j in video])
        got = score("attn_received", context, layer=layer, queries="text")
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        expected = np.array([mean[question, j].mean() for j in video])
        got = score("attn_received", context, layer=layer, queries="question")
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        rollout = (0.5 * mean + 0.5 * np.eye(t)) @ rollout
        np.testing.assert_allclose(
            score("rollout", context, layer=layer), rollout[-1, video], atol=1e-5, rtol=0
        )


def test_temporal_novelty_and_divprune_from_embeddings(toy_sample):
    lm, inputs, layout, context, _ = toy_sample
    with torch.no_grad():
        embeds = (
            lm.model.get_input_embeddings()
        )  # the toy's video rows come from its projector, so use the trace
    x = context.activations("blocks.0.hook_resid_pre", "video_features").astype(np.float64)
    assert x.shape == (layout.n_video, lm.adapter.text_config.hidden_size) and embeds is not None
    cells = layout.video_cells
    novelty = score("temporal_novelty", context)
    for i, (f, r, c) in enumerate(cells):
        if f == 0:
            assert novelty[i] == 2.0
            continue
        j = next(j for j, cell in enumerate(cells) if tuple(cell) == (f - 1, r, c))
        cos = x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
        assert novelty[i] == pytest.approx(1 - cos, abs=1e-9)
    # DivPrune: naive greedy max-min over cosine distance
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.round(1 - unit @ unit.T, 9)  # ties at the definition's precision go to the earlier token
    n = len(x)
    first = max(range(n), key=lambda i: (min(d[i, j] for j in range(n) if j != i), -i))
    chosen = [first]
    while len(chosen) < 20:
        rest = [i for i in range(n) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (min(d[i, j] for j in chosen), -i)))
    assert maxmin_order(x)[:20].tolist() == chosen
    scores = score("divprune", context)
    assert set(np.argsort(-scores, kind="stable")[:20].tolist()) == set(chosen)


def test_missing_stored_data_names_the_trace_option(toy_sample):
    lm, inputs, layout, context, _ = toy_sample
    bare = ScoreContext(None, "s", trace=context.trace)
    with pytest.raises(FlowlensError, match="--value-norms"):
        score("value_norm", bare)
    with pytest.raises(FlowlensError, match="--activations 'blocks.0.hook_resid_pre@video_features'"):
        score("divprune", ScoreContext(None, "s", trace=_without_activations(context.trace)))
    norms = np.arange(layout.n_layers * 2 * layout.n_video, dtype=float).reshape(layout.n_layers, 2, -1)
    given = ScoreContext(None, "s", trace=context.trace, arrays={"value_norm": norms})
    np.testing.assert_array_equal(score("value_norm", given, layer=1), norms[1].mean(0))


def _without_activations(trace):
    import dataclasses

    return dataclasses.replace(trace, activations={})


# ------------------------------------------------------------------ specs
def test_specs_round_trip_and_presets_load(tmp_path):
    for name in PRESETS:
        spec = load_spec(name)
        assert PruneSpec.from_yaml(spec.to_yaml()) == spec
        assert spec.to_dict() == PruneSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).to_dict()
    path = tmp_path / "fastv.yaml"
    path.write_text(load_spec("fastv").to_yaml())
    assert load_spec(str(path)) == load_spec("fastv")
    with pytest.raises(FlowlensError, match="position_ids"):
        PruneSpec.from_dict({"scorers": ["attn_last"]})
    spec = load_spec("fastv")
    roles = {c.role for c in spec.conditions()}
    assert roles == {"method", "random", "uniform_grid", "no_video", "all_tokens"}
    seeds = {c.seed for c in spec.conditions() if c.role == "random"}
    assert seeds == {0, 1, 2}


@register_debias("test_reverse")
def _reverse(scores, context, offset: float = 0.0):
    """A trivial debias step for the tests: reverses the ranking."""
    return offset - scores


# ------------------------------------------------------------------ the analysis
@needs_toy
def test_prune_run_rows_spec_summary_and_report(tmp_path):
    from flowlens.analyses.prune import prune, stored_spec

    lm = flowlens.load("toy")
    samples = flowlens.data.load("synthetic", split="test", limit=3)
    spec = {
        "name": "t",
        "scorers": [{"name": "attn_last", "layer": 0}],
        "debias": [None, {"method": "test_reverse", "offset": 1.0}],
        "budgets": [0.5, 0.25],
        "layers": [1],
        "modes": ["mask", "drop"],
        "position_ids": ["original"],
    }
    run = prune(lm, samples, spec, out=tmp_path, progress=False)
    assert stored_spec(run) == load_spec(spec)
    rows = run.table("prune")
    # 2 modes x (2 controls + 2 budgets x (2 methods + 3 random + 1 grid)) per sample
    assert len(rows) == 3 * 2 * (2 + 2 * 6)
    for record in rows.to_dict("records"):
        data = json.loads(record["spec"])
        assert (data["mode"], data["layer"], data["budget"], data["role"]) == (
            record["mode"],
            record["layer"],
            record["budget"],
            record["role"],
        )
    # the reversed ranking keeps the complement of the raw one at 50%
    assert (rows[rows.debias == ""]["kept"] == rows[rows.debias == ""]["kept"]).all()
    all_tokens = rows[rows.role == "all_tokens"]
    assert (all_tokens["kl"].abs() < 1e-9).all() and all_tokens["agree"].all()
    mask, drop = rows[rows["mode"] == "mask"], rows[rows["mode"] == "drop"]
    np.testing.assert_allclose(mask["kl"].to_numpy(), drop["kl"].to_numpy(), atol=1e-5)
    assert np.isnan(mask["flops_ratio_c2"]).all() and (drop["flops_ratio_c2"] <= 1).all()
    summary = run.table("prune_summary")
    random = summary[(summary.role == "random") & (summary["mode"] == "mask")]
    assert len(random) == 2 and (random["n_rows"] == 9).all()  # 3 seeds pooled per budget
    one = summary[(summary.curve == "attn_last(layer=0)") & (summary["mode"] == "mask")]
    accuracy = (
        rows[(rows.curve == "attn_last(layer=0)") & (rows["mode"] == "mask")]
        .groupby("budget")["correct"]
        .mean()
    )
    np.testing.assert_allclose(one.sort_values("budget")["accuracy"], accuracy.sort_index().to_numpy())
    expected_auc = float(accuracy.mean())  # two budgets: the trapezoid is their mean
    assert one["auc"].iloc[0] == pytest.approx(expected_auc)
    html = (tmp_path / "prune.html").read_text()
    assert "Token pruning: accuracy vs budget" in html
    # one panel per (policy, K, mode, positions) of the method; floor and ceiling drawn in each, none alone
    from flowlens.report.prune import prune_section

    figures = prune_section(run).figures
    assert len(figures) == 2  # topk_ratio x {mask, drop}
    for figure in figures.values():
        mode = "drop" if "drop" in figure.layout.title.text else "mask"
        expected = [
            float(summary[(summary.role == role) & (summary["mode"] == mode)]["accuracy"].iloc[0])
            for role in ("no_video", "all_tokens")
        ]
        assert [shape.y0 for shape in figure.layout.shapes] == expected


@needs_toy
def test_cli_prune_with_a_spec_file(tmp_path):
    from flowlens.cli import main

    path = tmp_path / "fastv.yaml"
    spec = load_spec("fastv").to_dict() | {"budgets": [0.25], "modes": ["mask"], "layers": [1]}
    spec["scorers"] = [{"name": "attn_last", "layer": 0}]
    path.write_text(PruneSpec.from_dict(spec).to_yaml())
    out = tmp_path / "run"
    code = main(
        ["prune", "toy", "--dataset", "synthetic", "--limit", "2", "--spec", str(path), "--out", str(out)]
    )
    assert code == 0
    run = flowlens.open_run(out / "prune.h5")
    assert run.config["settings"]["spec"] == PruneSpec.from_dict(spec).to_dict()
    run.close()
    # the spec is part of the run's identity: resuming with another spec is refused
    path.write_text(PruneSpec.from_dict(spec | {"budgets": [0.5]}).to_yaml())
    args = ["prune", "toy", "--dataset", "synthetic", "--limit", "2", "--spec", str(path), "--out", str(out)]
    assert main([*args, "--resume"]) == 2


@needs_toy
def test_prune_run_dir_scores_from_the_stored_trace_without_tracing(tmp_path, monkeypatch):
    """`flowlens prune RUN_DIR`: the trace's stored arrays give the scores (no trace forward), its model,
    samples and template are reused, and the rows equal pruning the model directly."""
    from flowlens.cli import main
    from flowlens.pruning import run as prune_run

    spec_path = tmp_path / "spec.yaml"
    spec = load_spec("fastv").to_dict() | {"budgets": [0.5, 0.25], "modes": ["mask", "drop"], "layers": [1]}
    spec["scorers"] = [
        {"name": "attn_last", "layer": 0},
        {"name": "attn_received", "layer": 1, "queries": "all"},
    ]
    spec_path.write_text(PruneSpec.from_dict(spec).to_yaml())
    data = ["--dataset", "synthetic", "--limit", "3"]
    assert main(["trace", "toy", *data, "--out", str(tmp_path / "t")]) == 0
    # the trace lacks received attention: refused before any work, naming the flag that stores it
    assert main(["prune", str(tmp_path / "t"), "--spec", str(spec_path)]) == 2
    assert (
        main(
            [
                "trace",
                "toy",
                *data,
                "--received-attention",
                "--out",
                str(tmp_path / "t"),
                "--overwrite",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prune",
                "toy",
                *data,
                "--spec",
                str(spec_path),
                "--out",
                str(tmp_path / "direct"),
            ]
        )
        == 0
    )
    monkeypatch.setattr(prune_run, "trace_sample", lambda *a, **k: pytest.fail("traced again"))
    assert main(["prune", str(tmp_path / "t"), "--spec", str(spec_path)]) == 0
    direct = flowlens.open_run(tmp_path / "direct" / "prune.h5")
    stored = flowlens.open_run(tmp_path / "t" / "prune.h5")
    a, b = direct.table("prune"), stored.table("prune")
    assert (
        len(a) == len(b) == 3 * 2 * (2 + 2 * (2 + 3 + 1))
    )  # modes x (controls + budgets x (scorers, seeds, grid))
    for column in ("sample", "spec", "kept", "answer", "correct", "agree"):
        assert a[column].tolist() == b[column].tolist(), column
    np.testing.assert_allclose(a["kl"], b["kl"], atol=1e-6)
    assert stored.config["identity"]["dataset"] == direct.config["identity"]["dataset"]
    assert stored.config["settings"]["scores_from"]["trace"]["analysis"] == "trace"
    direct.close()
    stored.close()
    from flowlens.analyses.prune import PruneOptions, prune

    trace = flowlens.open_run(tmp_path / "t" / "trace.h5")
    lm = flowlens.load("toy")
    samples = flowlens.data.load("synthetic", split="test", limit=1)
    with pytest.raises(FlowlensError, match="traced with 8 frames"):
        prune(lm, samples, spec, tmp_path / "x", PruneOptions(frames=4), trace=trace, progress=False)
    trace.close()


@needs_toy
def test_prune_run_dir_calibrates_the_positional_trend_over_the_trace_run(tmp_path):
    """intcomp's dataset-level calibration inside prune: from a trace run, `positional_trend` (auto) fits the
    trend over every traced sample, the same as the fit `calibrate` gives, given as `fit:` data."""
    from flowlens.analyses.prune import prune_from_run
    from flowlens.analyses.trace_run import trace
    from flowlens.pruning.debias import calibrate

    lm = flowlens.load("toy")
    samples = flowlens.data.load("synthetic", split="test", limit=4)
    traced = trace(
        lm,
        samples,
        out=tmp_path / "t",
        progress=False,
        report=False,
        dataset={"dataset": "synthetic", "split": "test", "limit": 4},
    )
    scorer = {"name": "attn_last", "layer": 1}
    fit = calibrate(traced, "attn_last", {"layer": 1}, "global_index", "exp")
    traced.close()
    base = {
        "scorers": [scorer],
        "budgets": [0.25, 0.1],
        "layers": [2],
        "modes": ["mask"],
        "position_ids": ["original"],
    }
    runs = {}
    for name, step in {
        "auto": {"method": "positional_trend"},
        "given": {"method": "positional_trend", "fit": json.loads(fit.to_json())},
        "sample": {"method": "positional_trend", "calibration": "sample"},
    }.items():
        spec = {**base, "name": name, "debias": [step]}
        run = prune_from_run(tmp_path / "t", spec, tmp_path / name, lm=lm, progress=False, report=False)
        rows = run.table("prune")
        runs[name] = rows[rows.role == "method"][["sample", "budget", "answer", "kl"]].reset_index(drop=True)
        run.close()
    assert runs["auto"].equals(runs["given"])
    assert not np.allclose(runs["auto"]["kl"], runs["sample"]["kl"])  # a per-sample fit is another trend


@needs_toy
def test_scores_from_a_stored_trace_equal_the_in_memory_trace(tmp_path, toy_sample):
    lm, inputs, layout, context, _ = toy_sample
    sample = flowlens.data.load("synthetic", split="test", limit=1)
    run = lm.trace(
        sample,
        out=tmp_path,
        activations=["blocks.0.hook_resid_pre@video_features"],
        activations_dtype="float32",
        progress=False,
        report=False,
    )
    stored = ScoreContext(run, run.samples[0])
    for name, params in [("attn_last", {"layer": 1}), ("attn_question", {"layer": 2}), ("divprune", {})]:
        np.testing.assert_allclose(score(name, stored, **params), score(name, context, **params), atol=1e-6)
    with pytest.raises(FlowlensError, match="--received-attention"):
        score("attn_received", stored, queries="all")


@needs_toy
def test_toy_quarter_budget_informed_vs_random_on_temporal_tasks(tmp_path):
    """docs/pruning.md states the 100-sample numbers: at 25% before the LLM (K = 0), FastV's score beats
    random on the order tasks and loses to it on object counting. The same direction on 16 samples."""
    from flowlens.analyses.prune import prune

    lm = flowlens.load("toy")
    tasks = ["event_order", "moving_direction", "object_count"]
    samples = flowlens.data.load("synthetic", split="test", task=tasks, limit=15)
    spec = {
        "name": "toy25",
        "scorers": [{"name": "attn_last", "layer": 0}],
        "budgets": [0.25],
        "layers": [0],
        "modes": ["mask"],
        "position_ids": ["original"],
    }
    rows = prune(lm, samples, spec, out=tmp_path, progress=False, report=False).table("prune")
    rows = rows[rows.budget == 0.25]
    accuracy = rows.groupby(["role", rows.task.isin(["event_order", "moving_direction"])])["correct"].mean()
    assert accuracy[("method", True)] >= accuracy[("random", True)] + 0.1, accuracy
    assert accuracy[("method", False)] < accuracy[("random", False)], accuracy


def test_threshold_controls_keep_as_many_tokens_as_the_method():
    from types import SimpleNamespace

    from flowlens.pruning.run import keep_sets
    from flowlens.pruning.scorers import register_scorer

    @register_scorer("test_position")
    def test_position(context: ScoreContext) -> np.ndarray:
        """Later video tokens score higher (a test scorer)."""
        return np.arange(context.n_video, dtype=float) / context.n_video

    lm = tiny("llava_onevision")
    _, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    context = ScoreContext(None, "s", trace=SimpleNamespace(layout=layout, activations={}))
    spec = load_spec(
        {
            "name": "dtd-like",
            "scorers": ["test_position"],
            "policies": [{"kind": "threshold", "budgets": [0.7]}],
            "layers": [0],
            "position_ids": ["original"],
        }
    )
    conditions = spec.conditions()
    keeps, _ = keep_sets(conditions, context)
    kept = {(c.role, c.seed): int(k.sum()) for c, k in zip(conditions, keeps, strict=True)}
    expected = int((np.arange(layout.n_video) / layout.n_video >= 0.7).sum())
    assert kept[("method", -1)] == expected
    assert kept[("random", 0)] == kept[("random", 2)] == kept[("uniform_grid", -1)] == expected
    assert kept[("no_video", -1)] == 0 and kept[("all_tokens", -1)] == layout.n_video
    method = keeps[[c.role for c in conditions].index("method")]
    assert method[-expected:].all() and not method[:-expected].any()
