"""The logit lens (`flowlens lens`): its numbers against the model's own outputs and independent computations,
keyword statistics against a hand count, the two modes (model forward, stored activations) against each
other, resume, the CLI, and the tuned lens."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_sample, random_video, tiny

import flowlens
from flowlens.analyses.lens import LensOptions, forward_states, lens, lens_from_run, sample_tables
from flowlens.analyses.lens_keywords import (
    ALL_AVERAGE,
    PAPER_KEYWORDS,
    keyword_statistics,
    layer_bins,
    load_keywords,
    resolve_keywords,
)
from flowlens.analyses.lens_tables import TokenText
from flowlens.analyses.options import all_settings
from flowlens.analyses.readout import answer_readout
from flowlens.analyses.tuned_lens import TunedLens, fit_tuned_lens, kl_columns
from flowlens.engine.lens import LensHead, lens_states, stacked
from flowlens.errors import FlowlensError, UsageError
from flowlens.store.hdf5 import RunWriter

FRAMES = 4
ATOL = 1e-5


def _prepared(family: str, states: str = "paper", **kwargs):
    lm = tiny(family)
    sample = make_sample(random_video(frames=FRAMES))
    options = LensOptions(frames=FRAMES, states=states, **kwargs)
    layout, readout, activations = forward_states(lm, sample, options)
    inputs, _ = lm.prepare(sample, frames=FRAMES)
    return lm, sample, options, layout, readout, activations, inputs


@pytest.mark.parametrize("states", ["paper", "resid_post"])
def test_last_state_with_the_final_norm_is_the_models_own_output(family, states):
    lm, _, options, layout, _, activations, inputs = _prepared(family, states, projection="output")
    head = LensHead(lm)
    with torch.no_grad():
        out = lm.model(**inputs)
    own = out.logits[0].float().softmax(-1)  # (T, vocab)
    chosen = lens_states(lm.n_layers, states, "answer")
    lens_last = head.logits(
        head.prepared(chosen, stacked(activations, chosen, "last"), "final")[-1, 0], "output"
    )
    np.testing.assert_allclose(
        lens_last.softmax(-1).numpy(), own[layout["last"][0]].numpy(), atol=ATOL, rtol=0
    )
    # the stored rows say the same for the option letters
    rows = pd.DataFrame(
        sample_tables(head, activations, layout, options, TokenText(lm.tokenizer))["answer_lens"]
    )
    last = rows[(rows["layer"] == lm.n_layers - 1) & (rows["norm"] == "final")]
    np.testing.assert_allclose(
        last["p"].to_numpy(), own[layout["last"][0], layout.option_token_ids].numpy(), atol=ATOL, rtol=0
    )
    # the video-token lens through the head, final state: the model's own top-1 token at every video token
    video = pd.DataFrame(
        sample_tables(
            head, activations, layout, LensOptions(frames=FRAMES, states=states, projection="output", video_norm="final"),
            TokenText(lm.tokenizer),
        )["video_lens"]
    )  # fmt: skip
    final = video[video["layer"] == lm.n_layers - 1]
    expected = own[layout["video_features"]]
    np.testing.assert_array_equal(final["token_id"].to_numpy(), expected.argmax(-1).numpy())
    np.testing.assert_allclose(final["p"].to_numpy(), expected.max(-1).values.numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["llava_next_video", "qwen2_vl", "internvl"])
def test_answer_lens_without_norm_equals_an_independent_computation(family):
    lm, _, options, layout, _, activations, inputs = _prepared(family)
    outputs: dict[int, torch.Tensor] = {}
    handles = [
        layer.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, (o[0] if isinstance(o, tuple) else o)[0]))
        for i, layer in enumerate(lm.adapter.language_layers())
    ]  # fmt: skip
    try:
        with torch.no_grad():
            hidden = lm.model(**inputs, output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    last = int(layout["last"][0])
    w_u = lm.adapter.output_head().weight.detach().float()
    # the paper (§4): transformers' hidden_states[1:] at `last` (the last one after the final norm), softmax(h W_U^T)
    paper = torch.stack([hidden[i + 1][0, last] for i in range(lm.n_layers)]).float()
    # resid_post: every layer's raw output, captured by this test's own hooks
    raw = torch.stack([outputs[i][last] for i in range(lm.n_layers)]).float()
    head, text = LensHead(lm), TokenText(lm.tokenizer)
    for states, h in [("paper", paper), ("resid_post", raw)]:
        opts = LensOptions(frames=FRAMES, states=states, video_lens=False)
        rows = pd.DataFrame(sample_tables(head, activations, layout, opts, text)["answer_lens"])
        rows = rows[rows["norm"] == "none"]
        logits = h @ w_u.T
        probs = logits.softmax(-1)[:, layout.option_token_ids].numpy()  # (L, K)
        np.testing.assert_allclose(rows["p"].to_numpy(), probs.reshape(-1), atol=ATOL, rtol=0)
        at = logits[:, layout.option_token_ids]
        ranks = (logits[:, None, :] > at[:, :, None]).sum(-1) + 1
        np.testing.assert_array_equal(rows["rank"].to_numpy(), ranks.numpy().reshape(-1))
        truth = layout.option_letters.index(layout.answer_letter)
        assert rows["is_answer"].to_numpy().reshape(lm.n_layers, -1)[:, truth].all()
        assert rows["is_answer"].sum() == lm.n_layers
        last_hook = (
            "blocks.3.hook_resid_post" if states == "resid_post" else "final_norm(blocks.3.hook_resid_post)"
        )
        assert rows["hook"].iloc[-1] == last_hook and rows["hook"].iloc[0] == "blocks.0.hook_resid_post"


def test_keyword_statistics_match_a_hand_count_on_hand_built_residuals(tmp_path):
    lm = tiny("llava_next_video")
    sample = make_sample(random_video(frames=FRAMES))
    _, layout = lm.prepare(sample, frames=FRAMES)
    spatial, temporal = ["box", "ball", "star", "sandwich"], ["left", "right"]
    (tmp_path / "kw.yaml").write_text(f"spatial: {spatial}\ntemporal: {temporal}\n")
    keywords = resolve_keywords(lm.tokenizer, load_keywords(tmp_path / "kw.yaml"))
    assert keywords["dropped"] == [
        {"category": "spatial", "word": "sandwich", "reason": "not in the vocabulary"}
    ]
    assert keywords["categories"] == {
        "spatial": [["box", "box"], ["ball", "ball"], ["star", "star"]],
        "temporal": [["left", "left"], ["right", "right"]],
    }
    ids = {
        w: lm.tokenizer(w, add_special_tokens=False)["input_ids"][0]
        for w in ["box", "ball", "star", "left", "right", "the"]
    }
    embed = lm.model.get_input_embeddings().weight.detach().float()
    chosen = embed[list(ids.values())]
    assert (
        (chosen @ embed.T).argmax(-1) == torch.as_tensor(list(ids.values()))
    ).all()  # each row's top-1 is itself

    n_states, n_video = lm.n_layers, layout.n_video  # 4 states, 64 video tokens
    rng = np.random.default_rng(0)
    words = ["box", "ball", "star", "left", "right", "the"]
    assign = rng.choice(len(words), size=(2, n_states, n_video), p=[0.3, 0.05, 0.15, 0.2, 0.1, 0.2])
    options = LensOptions(
        frames=FRAMES,
        states="resid_post",
        projection="input",
        top_k=3,
        bin_size=3,
        min_count=12,
        keywords=str(tmp_path / "kw.yaml"),
    )
    head, text = LensHead(lm), TokenText(lm.tokenizer)
    config = {"analysis": "lens", "settings": {**all_settings(options), "keyword_tokens": keywords}}
    logits = torch.zeros(lm.adapter.output_head().weight.shape[0])
    with RunWriter(tmp_path / "lens.h5", config, {"model": lm.name}) as writer:
        for s in range(2):
            rows = (
                embed[[ids[words[k]] for k in assign[s].reshape(-1)]].reshape(n_states, n_video, -1).numpy()
            )
            acts = {
                f"blocks.{i}.hook_resid_post": {"video_features": rows[i], "last": rows[i][:1]}
                for i in range(n_states)
            }
            logits[:] = 0
            logits[layout.option_token_ids[1 if s == 0 else 2]] = (
                10.0  # sample 0 answers B (correct), sample 1 C
            )
            readout = answer_readout(logits, layout, lm.tokenizer)
            assert readout.correct is (s == 0)
            tables = sample_tables(head, acts, layout, options, text)
            writer.write_rows(f"s{s}", layout, readout, tables)
    run = flowlens.open_run(tmp_path / "lens.h5")
    video = run.table("video_lens")
    np.testing.assert_array_equal(video["token"].str.strip(), np.asarray(words)[assign.reshape(-1)])

    # the hand count: baseline-correct sample 0 only; states binned 1-3, 4-4; keywords under 12 hits dropped
    counts = {
        w: [(assign[0][:3] == words.index(w)).sum(), (assign[0][3:] == words.index(w)).sum()]
        for w in words[:5]
    }
    kept = {w: c for w, c in counts.items() if sum(c) >= 12}
    assert 0 < len(kept) < 5  # the test drops something and keeps something
    expected = []
    for category, members in [("spatial", ["box", "ball", "star"]), ("temporal", ["left", "right"])]:
        rows = [w for w in members if w in kept]
        for w in rows:
            expected += [(category, w, b, c / sum(kept[w])) for b, c in enumerate(kept[w])]
        if rows:
            mean = np.mean([[c / sum(kept[w]) for c in kept[w]] for w in rows], axis=0)
            expected += [(category, ALL_AVERAGE, b, mean[b]) for b in range(2)]
    stats = run.table("lens_keywords")
    assert list(zip(stats["category"], stats["keyword"], stats["bin"], strict=True)) == [
        e[:3] for e in expected
    ]
    np.testing.assert_allclose(stats["frequency"], [e[3] for e in expected], atol=1e-12)
    assert stats["layers"].unique().tolist() == ["1-3", "4-4"]
    hits = run.table("lens_keyword_hits")
    assert len(hits) == sum(sum(c) for c in counts.values()) and set(hits["sample"]) == {"s0"}
    first = hits.iloc[0]
    v = int(np.flatnonzero(assign[0][first["layer"]] == words.index(first["keyword"]))[0])
    assert (first["frame"], first["row"], first["col"]) == tuple(layout.video_cells[v])
    assert set(hits.loc[hits["kept"], "keyword"]) == set(kept)

    # the released code's inclusive slice: bins borrow one state from the next
    raw = np.asarray([[(assign[0][i] == words.index(w)).sum() for i in range(n_states)] for w in words[:5]])
    overlap = keyword_statistics(raw, keywords, bin_size=3, min_count=0, bin_overlap=1)
    box = overlap[overlap["keyword"] == "box"]
    assert box["count"].tolist() == [raw[0].sum(), raw[0][3]]
    assert layer_bins(10, 5, 1) == [("1-5", 0, 6), ("6-10", 5, 10)]


def test_paper_keyword_lists_and_first_sub_tokens():
    assert len(PAPER_KEYWORDS["spatial"]) == 22 and PAPER_KEYWORDS["spatial"].count("glass") == 2
    assert len(PAPER_KEYWORDS["temporal"]) == 14
    lm = flowlens.load("toy")  # a word-level vocabulary: most of the paper's words are unknown to it
    resolved = resolve_keywords(lm.tokenizer, load_keywords(None))
    assert resolved["categories"] == {
        "spatial": [["box", "box"]],
        "temporal": [["do", "do"], ["down", "down"], ["on", "on"], ["up", "up"]],
    }
    reasons = {(d["word"], d["reason"]) for d in resolved["dropped"]}
    assert ("glass", "not in the vocabulary") in reasons and ("tidy", "not in the vocabulary") in reasons


def _samples(n: int = 2) -> list[flowlens.Sample]:
    samples = [make_sample(random_video(seed=i, frames=FRAMES), answer="ABCD"[i % 4]) for i in range(n)]
    for i, s in enumerate(samples):
        s.id = f"s{i}"
    return samples


def test_model_mode_equals_run_dir_mode(tmp_path):
    lm = flowlens.load("toy")  # trained: baseline-correct samples and keyword hits ("up") to compare
    samples = flowlens.data.load("synthetic", split="test[:8]")
    options = LensOptions(frames=8, min_count=1, bin_size=2)
    direct = lens(lm, samples, tmp_path / "model", options, progress=False)
    specs = ["blocks.*.hook_resid_post@last,video", "blocks.*.hook_resid_pre@video"]
    lm.trace(
        samples,
        out=tmp_path / "trace",
        frames=8,
        activations=specs,
        activations_dtype="float32",
        progress=False,
    )
    forward = lm.model.forward
    lm.model.forward = lambda *a, **k: pytest.fail("the run-folder lens ran a forward")
    try:
        stored = lens_from_run(tmp_path / "trace", options=options, lm=lm, progress=False)
    finally:
        lm.model.forward = forward
    assert (
        stored.path == tmp_path / "trace" / "lens.h5"
        and stored.config["source"]["dtypes"]["last"] == "float32"
    )
    for name in ["answer_lens", "video_lens", "lens_keywords", "lens_keyword_hits"]:
        a, b = direct.table(name), stored.table(name)
        assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0, name
        for column in a.columns:
            if a[column].dtype.kind == "f":
                np.testing.assert_allclose(
                    a[column], b[column], atol=ATOL, rtol=0, err_msg=f"{name}.{column}"
                )
            else:
                assert a[column].astype(str).tolist() == b[column].astype(str).tolist(), f"{name}.{column}"
    # a trace without the video activations: refused, naming the flags to trace with
    lm.trace(samples[:1], out=tmp_path / "plain", frames=8, progress=False)
    with pytest.raises(
        FlowlensError, match=r"hook_resid_pre@video.*--activations-dtype float32.*--no-video-lens"
    ):
        lens_from_run(tmp_path / "plain", options=options, lm=lm, progress=False)
    answer_only = lens_from_run(
        tmp_path / "plain", options=LensOptions(video_lens=False), lm=lm, progress=False
    )
    assert answer_only.config["source"]["dtypes"] == {
        "last": "float16"
    }  # the resid_last summary every trace keeps
    np.testing.assert_allclose(
        answer_only.table("answer_lens")["p"],
        direct.table("answer_lens")["p"][: len(answer_only.table("answer_lens"))],
        atol=2e-2,
    )


def test_resume_refuses_other_states(tmp_path):
    lm = tiny("llava_next_video")
    samples = _samples(2)
    lens(
        lm, samples[:1], tmp_path, LensOptions(frames=FRAMES, video_lens=False), progress=False, report=False
    )
    with pytest.raises(UsageError, match=r"settings.states: 'paper' in the file, 'resid_post' now"):
        lens(
            lm,
            samples,
            tmp_path,
            LensOptions(frames=FRAMES, video_lens=False, states="resid_post"),
            resume=True,
            progress=False,
        )
    run = lens(
        lm, samples, tmp_path, LensOptions(frames=FRAMES, video_lens=False), resume=True, progress=False
    )
    assert run.samples == ["s0", "s1"]


def test_cli_writes_the_run_and_report(tmp_path, capsys):
    from flowlens.cli import main

    out = tmp_path / "lens"
    args = ["lens", "tiny:llava_next_video", "--dataset", "synthetic", "--split", "test[:2]", "--frames", "4"]
    assert main([*args, "--out", str(out), "--min-count", "1", "--bin-size", "2"]) == 0
    assert (out / "lens.h5").is_file() and (out / "lens.html").is_file()
    printed = capsys.readouterr().out
    assert "answer lens at `last`" in printed and "norm none" in printed
    html = (out / "lens.html").read_text()
    for element in ["lens-answer-figure", "lens-video-figure", "Logit lens: keywords over layers"]:
        assert element in html
    with flowlens.open_run(out / "lens.h5") as run:
        assert {"answer_lens", "video_lens", "lens_keywords", "lens_keyword_hits"} <= set(run.tables())
    assert main([*args, "--out", str(out), "--resume", "--states", "resid_post"]) == 2
    assert "settings.states" in capsys.readouterr().err
    # RUN_DIR mode on a plain trace: the answer lens from resid_last, beside it
    trace = tmp_path / "trace"
    assert (
        main(
            [
                "trace",
                "tiny:llava_next_video",
                "--dataset",
                "synthetic",
                "--split",
                "test[:2]",
                "--frames",
                "4",
                "--out",
                str(trace),
            ]
        )
        == 0
    )
    assert main(["lens", str(trace)]) == 2
    assert "--activations" in capsys.readouterr().err
    assert main(["lens", str(trace), "--no-video-lens"]) == 0
    assert (trace / "lens.h5").is_file() and (trace / "lens.html").is_file()


def test_tuned_lens_fit_recovers_a_known_affine_map_and_kl_columns():
    lm = tiny("llava_next_video")
    head = LensHead(lm)
    rng = np.random.default_rng(0)
    d = lm.adapter.text_config.hidden_size
    h = rng.normal(size=(400, d)).astype(np.float32)
    a = (np.eye(d) + 0.1 * rng.normal(size=(d, d))).astype(np.float32)
    b = rng.normal(size=d).astype(np.float32)
    rows = np.stack([h, h, h, h @ a.T + b])  # (L=4, N, D): the last layer is an affine map of the others
    fitted = fit_tuned_lens(head, rows, "lstsq")
    assert fitted.weight.shape == (3, d, d) and fitted.n_rows == 400
    np.testing.assert_allclose(fitted.weight[0], a, atol=1e-2)
    np.testing.assert_allclose(fitted.bias[0], b, atol=1e-2)
    # KL per layer: zero where the lens is exact, identity translators equal the plain final-norm lens
    acts = {f"blocks.{i}.hook_resid_post": {"last": rows[i][:1]} for i in range(4)}
    exact = kl_columns(head, acts, 4, "resid_post", fitted)
    np.testing.assert_allclose(exact["kl_tuned"], 0.0, atol=1e-4)
    assert exact["kl_final"][3] < 1e-6 and exact["kl_final"][0] > 1e-3
    identity = TunedLens(np.stack([np.eye(d, dtype=np.float32)] * 3), np.zeros((3, d), np.float32))
    same = kl_columns(head, acts, 4, "resid_post", identity)
    np.testing.assert_allclose(same["kl_tuned"], same["kl_final"], atol=1e-6)


@pytest.mark.slow
def test_tuned_lens_on_the_toy_beats_the_plain_lens_on_held_out_samples(tmp_path):
    lm = flowlens.load("toy")
    samples = flowlens.data.load("synthetic", split="test[:16]")
    options = LensOptions(video_lens=False, tuned=True, fit_on="synthetic@val[:128]", tuned_steps=300)
    run = lens(lm, samples, tmp_path, options, progress=False)
    table = run.table("tuned_lens")
    assert table["n"].tolist() == [16] * 4 and table["fit_rows"].iloc[0] == 128 * 65
    assert (table["kl_tuned"] <= table["kl_plain_final"] + 1e-9).all(), table
    assert table["kl_tuned"].iloc[0] < 0.7 * table["kl_plain_final"].iloc[0]
    assert run.run_array("tuned_lens_weight").shape == (3, 64, 64)
    assert "lens-tuned-figure" in (tmp_path / "lens.html").read_text()


def test_tuned_lens_from_a_run_folder_fits_on_stored_rows_and_resumes(tmp_path):
    lm = tiny("llava_next_video")
    samples = _samples(3)
    lm.trace(samples, out=tmp_path, frames=FRAMES, progress=False, report=False)
    options = LensOptions(video_lens=False, tuned=True, fit_on="2", tuned_steps=5)
    run = lens_from_run(tmp_path, options=options, lm=lm, progress=False, report=False)
    table = run.table("tuned_lens")
    assert table["n"].tolist() == [1] * 4 and table["fit_rows"].tolist() == [2] * 4  # `last` rows of s0, s1
    kl = run.table("tuned_kl")
    assert kl.groupby("sample")["held_out"].first().to_dict() == {"s0": False, "s1": False, "s2": True}
    weight = run.run_array("tuned_lens_weight")
    assert weight.shape == (3, 64, 64) and not np.allclose(weight[0], np.eye(64))
    run.close()
    again = lens_from_run(tmp_path, options=options, lm=lm, progress=False, report=False, resume=True)
    np.testing.assert_array_equal(again.run_array("tuned_lens_weight"), weight)  # reused, not refitted
    with pytest.raises(UsageError, match="none would be held out"):
        lens_from_run(
            tmp_path, options=LensOptions(video_lens=False, tuned=True, fit_on="3"), lm=lm, overwrite=True
        )
    with pytest.raises(UsageError, match="add --tuned"):
        LensOptions(fit_on="3")
