"""Stored activations (`--activations`) equal transformers' own hidden states and module outputs (fp32, 1e-6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample, random_video, tiny

import flowlens
from flowlens.analyses.trace import TraceOptions, trace_sample
from flowlens.errors import FlowlensError
from flowlens.hooks import HOOKS, ActivationSpec, estimate_bytes, resolve

FRAMES = 4
EVERYTHING = "+".join(f"blocks.*.{h}" for h in HOOKS) + "@last,video,question,frame_mean"
ATOL = 1e-6


def reference(lm, inputs) -> tuple[dict[str, torch.Tensor], tuple]:
    """Plain SDPA forward (no flowlens backend): every layer's input and output and its attention and MLP
    outputs by the test's own hooks, and transformers' `output_hidden_states`."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(lm.adapter.language_layers()):

        def pre(module, args, kwargs, i=i):
            seen[f"blocks.{i}.hook_resid_pre"] = (args[0] if args else kwargs["hidden_states"])[0].clone()

        def post(module, args, output, i=i):
            seen[f"blocks.{i}.hook_resid_post"] = (output[0] if isinstance(output, tuple) else output)[
                0
            ].clone()

        def attn(module, args, output, i=i):
            seen[f"blocks.{i}.hook_attn_out"] = output[0][0].clone()

        def mlp(module, args, output, i=i):
            seen[f"blocks.{i}.hook_mlp_out"] = output[0].clone()

        handles += [
            layer.register_forward_pre_hook(pre, with_kwargs=True),
            layer.register_forward_hook(post),
            layer.self_attn.register_forward_hook(attn),
            layer.mlp.register_forward_hook(mlp),
        ]
    try:
        with torch.no_grad():
            out = lm.model(**inputs, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    for i in range(lm.n_layers):
        seen[f"blocks.{i}.hook_resid_mid"] = (
            seen[f"blocks.{i}.hook_resid_pre"] + seen[f"blocks.{i}.hook_attn_out"]
        )
    return seen, out.hidden_states


def test_stored_activations_equal_transformers_values(family):
    lm = tiny(family)
    sample = make_sample(random_video(frames=FRAMES))
    inputs, layout = lm.prepare(sample, frames=FRAMES)
    trace = trace_sample(
        lm, sample, TraceOptions(frames=FRAMES, activations=[EVERYTHING], activations_dtype="float32")
    )
    seen, hidden_states = reference(lm, inputs)
    assert set(trace.activations) == set(seen)
    frames = [layout.frame_features(f) for f in range(layout.n_frames)]
    for name, groups in trace.activations.items():
        full = seen[name].double().numpy()
        for group, stored in groups.items():
            assert stored.dtype == np.float32
            if group == "frame_mean":
                expected = np.stack([full[p].mean(0) for p in frames])
            else:
                expected = full[layout[group]]
            np.testing.assert_allclose(stored, expected, atol=ATOL, rtol=0, err_msg=f"{name}@{group}")
    deepstack = len(
        getattr(getattr(lm.model.config, "vision_config", None), "deepstack_visual_indexes", []) or []
    )
    for layer in range(lm.n_layers - 1):  # transformers' last hidden state is after the final norm
        if layer < deepstack:
            continue  # Qwen3-VL adds DeepStack features after these layers: HF's states include them, resid_post not
        np.testing.assert_allclose(
            trace.activations[f"blocks.{layer}.hook_resid_post"]["video"],
            hidden_states[layer + 1][0][layout["video"]].numpy(),
            atol=ATOL,
            rtol=0,
        )


def test_activations_round_trip_the_run_file_with_their_index(tmp_path):
    lm = tiny("internvl")  # markup inside the video: rows of `video` without a cell
    samples = [make_sample(random_video(seed=i, frames=FRAMES)) for i in range(2)]
    for i, s in enumerate(samples):
        s.id = f"s{i}"
    spec = "blocks.1.hook_resid_post+blocks.2.hook_attn_out@video,last,frame_mean"
    run = lm.trace(samples, out=tmp_path, frames=FRAMES, activations=[spec], progress=False)
    layout = run.layout("s0")
    found = run.activations("blocks.1.hook_resid_post", group="video")
    direct = [trace_sample(lm, s, TraceOptions(frames=FRAMES, activations=[spec])) for s in samples]
    np.testing.assert_array_equal(
        found.values, np.concatenate([t.activations["blocks.1.hook_resid_post"]["video"] for t in direct])
    )
    assert found.values.dtype == np.float16 and len(found) == 2 * layout["video"].size
    first = found.index[found.index["sample"] == "s0"]
    np.testing.assert_array_equal(first["position"], layout["video"])
    features = np.isin(layout["video"], layout["video_features"])
    np.testing.assert_array_equal(first["row"].to_numpy()[features], layout.video_cells[:, 1])
    assert (first["row"].to_numpy()[~features] == -1).all() and (first["frame"] >= 0).all()  # markup: no cell
    means = run.activations("blocks.2.hook_attn_out", group="frame_mean")
    assert (
        means.index["frame"].tolist() == [*range(layout.n_frames)] * 2
        and (means.index["position"] == -1).all()
    )
    table = run.activation_table("blocks.1.hook_resid_post", group="last")
    assert list(table.columns[:5]) == ["sample", "position", "frame", "row", "col"] and len(table) == 2
    assert table.shape[1] == 5 + layout.d_model
    # the summaries every trace keeps read the same way
    summary = run.activations("blocks.3.hook_resid_post", group="last")
    np.testing.assert_array_equal(summary.values, np.stack([t.resid_last[3] for t in direct]))
    assert ("blocks.1.hook_resid_post", "video") in run.activation_names()
    with pytest.raises(FlowlensError, match="holds blocks.1.hook_mlp_out@video"):
        run.activations("blocks.1.hook_mlp_out", group="video")


def test_specs_parse_glob_and_refuse_clearly():
    lm = tiny("llava_next_video")
    _, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    wanted = resolve(
        ["blocks.*.hook_resid_post@last,video", "blocks.1?.hook_attn_out+blocks.[02].hook_mlp_out@last"],
        layout,
    )
    assert sorted(wanted) == sorted(
        [
            "blocks.0.hook_resid_post",
            "blocks.0.hook_mlp_out",
            "blocks.1.hook_resid_post",
            "blocks.2.hook_resid_post",
            "blocks.2.hook_mlp_out",
            "blocks.3.hook_resid_post",
        ]
    )
    assert wanted["blocks.0.hook_resid_post"] == ["last", "video"]
    size = estimate_bytes(["blocks.*.hook_resid_post@last"], layout, "float32")
    assert size == 4 * layout.n_layers * layout.d_model
    for bad, message in [
        ("blocks.*.hook_resid_post", "HOOKS@GROUPS"),
        ("blocks.*.hook_nope@last", "matches no hook"),
        ("layers.1.hook_resid_post@last", "matches no hook"),
    ]:
        with pytest.raises(FlowlensError, match=message):
            ActivationSpec.parse(bad)
    with pytest.raises(FlowlensError, match="selects no hook of a model with 4 layers"):
        resolve(["blocks.7.hook_resid_post@last"], layout)
    with pytest.raises(FlowlensError, match="activation group 'frame9' is not in the layout"):
        resolve(["blocks.0.hook_resid_post@frame9"], layout)


def test_the_size_is_announced_and_max_gb_refuses(tmp_path, capsys):
    from flowlens.cli import main

    args = [
        "trace",
        "tiny:llava_next_video",
        "--dataset",
        "synthetic",
        "--split",
        "test[:2]",
        "--frames",
        "4",
    ]
    spec = ["--activations", "blocks.*.hook_resid_post@video", "--out", str(tmp_path / "t")]
    assert main([*args, *spec, "--max-gb", "1e-7"]) == 2
    err = capsys.readouterr().err
    assert "more than --max-gb 1e-07 GB" in err and "tracing 2 samples" in err
    assert not (tmp_path / "t" / "trace.h5").exists()
    assert main([*args, *spec]) == 0
    assert "tracing 2 samples of" in capsys.readouterr().err
    run = flowlens.open_run(tmp_path / "t")
    assert (
        len(run.activations("blocks.0.hook_resid_post", group="video"))
        == 2 * run.layout(run.samples[0])["video"].size
    )
