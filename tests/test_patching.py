"""Activation patching (`flowlens patch`): corruption specs, the batched engine against a plain forward-hook
reference (one full forward per cell, fp32, three families), sanity cells, the metric and the run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample, tiny

import flowlens
from flowlens.analyses.patch import PatchOptions, logit_diff, normalised, patch_sample
from flowlens.data.video import Frames
from flowlens.engine.corruption import Corruption
from flowlens.engine.patching import PatchCell, run_patched, source_run, sweep
from flowlens.errors import FlowlensError

FRAMES = 4
PARITY_FAMILIES = ["llava_next_video", "qwen2_vl", "internvl"]


# ---------------------------------------------------------------------------- corruptions
def _frames(n: int = 6) -> Frames:
    pixels = np.stack([np.full((4, 5, 3), 10 * i, dtype=np.uint8) for i in range(n)])
    return Frames(pixels, np.arange(n) * 3, np.arange(n) / 2.0, 2.0, 3 * n)


@pytest.mark.parametrize("text", ["reverse", "shuffle:3", "replace:2=0", "mask:1", "noise:40:2"])
def test_corruption_specs_round_trip(text):
    spec = Corruption.parse(text)
    assert str(spec) == text and Corruption.parse(str(spec)) == spec
    assert spec.to_data()["spec"] == text


def test_corruptions_change_pixels_only():
    clean = _frames()
    first = clean.frames[:, 0, 0, 0]
    assert list(Corruption.parse("reverse").apply(clean).frames[:, 0, 0, 0]) == list(first[::-1])
    replaced = Corruption.parse("replace:2=0").apply(clean).frames[:, 0, 0, 0]
    assert list(replaced) == [0, 10, 0, 30, 40, 50]
    masked = Corruption.parse("mask:1").apply(clean)
    assert masked.frames[1].max() == 0 and np.array_equal(masked.frames[2], clean.frames[2])
    shuffled = Corruption.parse("shuffle:0").apply(clean).frames[:, 0, 0, 0]
    assert sorted(shuffled) == sorted(first) and list(shuffled) != list(first)
    noisy = Corruption.parse("noise:20:1").apply(clean).frames.astype(float)
    assert 10 < np.abs(noisy - clean.frames).mean() < 25
    assert np.array_equal(noisy, Corruption.parse("noise:20:1").apply(clean).frames)  # seeded
    for out in (masked,):
        assert np.array_equal(out.indices, clean.indices) and np.array_equal(out.timestamps, clean.timestamps)
    for bad in ["upside-down", "mask", "replace:1", "noise:x"]:
        with pytest.raises(FlowlensError, match="use one of"):
            Corruption.parse(bad)
    with pytest.raises(FlowlensError, match="not one of the 6"):
        Corruption.parse("mask:9").apply(clean)


def test_a_different_video_replaces_every_frame_at_the_clean_size(tmp_path):
    clean = _frames(4)
    from PIL import Image

    folder = tmp_path / "other"  # an image folder is a video to flowlens
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 10, 3), 200 - 40 * i, dtype=np.uint8)).save(folder / f"{i:03d}.png")
    spec = Corruption.parse(f"video:{folder}")
    assert str(spec) == f"video:{folder}" and Corruption.parse(str(spec)) == spec
    out = spec.apply(clean)
    assert out.frames.shape == clean.frames.shape  # resized to the clean frames' (4, 5)
    assert list(out.frames[:, 2, 2, 0]) == [200, 160, 120, 80]  # frame i of the other video, in order
    assert np.array_equal(out.indices, clean.indices)  # the prompt (timestamps) stays the clean one's
    with pytest.raises(FlowlensError, match="corruption video:"):
        Corruption.parse(f"video:{tmp_path / 'missing.mp4'}").apply(clean)


def test_cell_names_parse():
    assert PatchCell.parse("frame3@blocks.5.hook_resid_post") == PatchCell("frame3", 5, "hook_resid_post")
    assert str(PatchCell.parse("last@blocks.2.hook_z.h1")) == "last@blocks.2.hook_z.h1"
    for bad in ["frame3@blocks.5.hook_pattern", "last@blocks.1.hook_attn_out.h0", "frame3"]:
        with pytest.raises(FlowlensError):
            PatchCell.parse(bad)


# ---------------------------------------------------------------------------- plain forward-hook reference
def _module(lm, layer: int, hook: str):
    """(module, pre?) found through the public decoder, independently of flowlens' adapters."""
    block = lm.model.get_decoder().layers[layer]
    return {
        "hook_resid_pre": (block, True),
        "hook_resid_post": (block, False),
        "hook_attn_out": (block.self_attn, False),
        "hook_mlp_out": (block.mlp, False),
        "hook_z": (block.self_attn.o_proj, True),
    }[hook]


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def reference_patched_logits(lm, target, source, layout, cell) -> torch.Tensor:
    """One full forward on `source` recording the activation, one on `target` replacing it at the cell."""
    module, pre = _module(lm, cell.layer, cell.hook)
    stored = {}

    def keep(m, args, kwargs_or_out):
        x = (args[0] if args else kwargs_or_out["hidden_states"]) if pre else _first(kwargs_or_out)
        stored["x"] = x.clone()

    if pre:
        handle = module.register_forward_pre_hook(keep, with_kwargs=True)
    else:
        handle = module.register_forward_hook(keep)
    with torch.no_grad():
        lm.model(**source)
    handle.remove()
    where = layout.seq_len if cell.group == "all" else layout[cell.group]
    pos = torch.arange(layout.seq_len) if cell.group == "all" else torch.as_tensor(where)
    cfg = lm.model.config.get_text_config()
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cols = slice(None) if cell.head is None else slice(cell.head * d_head, (cell.head + 1) * d_head)

    def replace(x):
        x = x.clone()
        x[0, pos, cols] = stored["x"][0, pos, cols]
        return x

    if pre:

        def hook(m, args, kwargs):
            if args:
                return (replace(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": replace(kwargs["hidden_states"])}

        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    else:
        handle = module.register_forward_hook(
            lambda m, a, out: (replace(out[0]), *out[1:]) if isinstance(out, tuple) else replace(out)
        )
    with torch.no_grad():
        logits = lm.model(**target).logits[0, -1].float()
    handle.remove()
    return logits


def _prepared(lm, corruption="reverse"):
    sample = make_sample()
    clean, layout = lm.prepare(sample, frames=FRAMES)
    corrupt, corrupt_layout = lm.prepare(sample, frames=FRAMES, transform=Corruption.parse(corruption).apply)
    assert corrupt_layout.to_dict() == layout.to_dict()
    return clean, corrupt, layout


@pytest.mark.parametrize("family", PARITY_FAMILIES)
def test_batched_sweep_matches_one_forward_per_cell(family):
    lm = tiny(family)
    clean, corrupt, layout = _prepared(lm)
    frames = layout.frame_groups
    cells = [
        PatchCell(frames[0], 0, "hook_resid_pre"),
        PatchCell(frames[-1], 1, "hook_resid_post"),
        PatchCell("video", 2, "hook_attn_out"),
        PatchCell("question", 1, "hook_mlp_out"),
        PatchCell("last", 3, "hook_resid_post"),
        PatchCell(frames[1], 0, "hook_z", head=1),
        PatchCell("video", 3, "hook_z", head=0),
    ]
    sites = {(c.layer, c.hook) for c in cells}
    clean_run, clean_values = source_run(lm, clean, layout, sites)
    corrupt_run, corrupt_values = source_run(lm, corrupt, layout, sites)
    for target, values, target_inputs, source_inputs, checked in [
        (corrupt_run, clean_values, corrupt, clean, cells),  # denoising
        (clean_run, corrupt_values, clean, corrupt, cells[1:5:2]),  # noising (two cells: the same code path)
    ]:
        batched = sweep(target, checked, values, batch_size=4)  # two batches for denoising
        for cell, row in zip(checked, batched, strict=True):
            expected = reference_patched_logits(lm, target_inputs, source_inputs, layout, cell)
            assert torch.allclose(row, expected, atol=1e-5, rtol=0), (family, str(cell))
    # the corruption matters: some cell moves the logits
    assert float((corrupt_run.logits - clean_run.logits).abs().max()) > 1e-3


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "qwen3_vl", "video_llama_3"])
def test_the_other_families_match_the_reference_too(family):
    """Two cells on each remaining family (Qwen3-VL: DeepStack features added between layers)."""
    lm = tiny(family)
    clean, corrupt, layout = _prepared(lm)
    cells = [PatchCell(layout.frame_groups[0], 0, "hook_resid_pre"), PatchCell("last", 1, "hook_z", head=1)]
    _, clean_values = source_run(lm, clean, layout, {(c.layer, c.hook) for c in cells})
    target, _ = source_run(lm, corrupt, layout, {(c.layer, c.hook) for c in cells})
    for cell, row in zip(cells, sweep(target, cells, clean_values), strict=True):
        expected = reference_patched_logits(lm, corrupt, clean, layout, cell)
        assert torch.allclose(row, expected, atol=1e-5, rtol=0), (family, str(cell))


@pytest.mark.parametrize("family", PARITY_FAMILIES)
def test_patch_everything_restores_and_patch_nothing_leaves(family):
    lm = tiny(family)
    clean, corrupt, layout = _prepared(lm)
    everything = PatchCell("all", 0, "hook_resid_pre")
    clean_run, clean_values = source_run(lm, clean, layout, {(0, "hook_resid_pre")})
    corrupt_run, _ = source_run(lm, corrupt, layout, {(0, "hook_resid_pre")})
    restored, untouched = run_patched(corrupt_run, [[everything], []], clean_values)
    assert torch.allclose(restored, clean_run.logits, atol=1e-5, rtol=0)
    assert torch.allclose(untouched, corrupt_run.logits, atol=1e-5, rtol=0)
    reference_clean = lm.model(**clean).logits[0, -1].float()
    assert torch.allclose(restored, reference_clean, atol=1e-5, rtol=0)


def test_sample_rows_and_metric_definitions():
    lm = tiny("llava_next_video")
    sample = make_sample()
    options = PatchOptions(
        frames=FRAMES, hooks=["hook_resid_pre"], groups=["all", "frames", "last"], patch_layers=[0, 2]
    )
    result = patch_sample(lm, sample, options)
    rows = result.rows
    layout = result.layout
    assert rows["cell"][:2] == ["all@blocks.0.hook_resid_pre", "frame0@blocks.0.hook_resid_pre"]
    assert len(rows["cell"]) == 2 * 2 * (2 + layout.n_frames)
    answer = layout.option_token_ids[layout.option_letters.index("B")]
    wrong_letter = rows["corrupted_answer"][0]
    wrong = layout.option_token_ids[layout.option_letters.index(wrong_letter)]
    ld_clean = float(result.clean_logits[answer] - result.clean_logits[wrong])
    ld_corrupt = float(result.corrupted_logits[answer] - result.corrupted_logits[wrong])
    assert rows["clean_logit_diff"][0] == pytest.approx(ld_clean, abs=1e-5)
    assert rows["corrupted_logit_diff"][0] == pytest.approx(ld_corrupt, abs=1e-5)
    for i, cell in enumerate(rows["cell"]):
        expected = (rows["logit_diff"][i] - ld_corrupt) / (ld_clean - ld_corrupt)
        assert rows["logit_diff_norm"][i] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        if cell == "all@blocks.0.hook_resid_pre":  # everything at layer 0: the source run exactly
            full = 1.0 if rows["direction"][i] == "denoise" else 0.0
            assert rows["logit_diff_norm"][i] == pytest.approx(full, abs=1e-4)
            p = torch.softmax(result.clean_logits if full else result.corrupted_logits, -1)[answer]
            assert rows["p_answer"][i] == pytest.approx(float(p), abs=1e-6)
    # the helpers themselves, on numbers worked by hand
    logits = torch.tensor([[1.0, 3.0, -2.0]])
    assert float(logit_diff(logits, 1, 2)[0]) == 5.0
    assert float(normalised(torch.tensor(2.0), 5.0, -1.0)) == pytest.approx(0.5)
    assert torch.isnan(normalised(torch.tensor([2.0]), 1.0, 1.0)).all()  # nothing to restore


def test_corrupted_answer_is_the_corrupted_runs_preferred_option():
    from flowlens.analyses.patch import corrupted_answer

    lm = tiny("llava_next_video")
    _, layout = lm.prepare(make_sample(), frames=FRAMES)
    ids = layout.option_token_ids
    logits = torch.zeros(max(ids) + 1)
    logits[ids[3]] = 2.0
    assert corrupted_answer(logits, layout) == 3
    logits[ids[1]] = 5.0  # still prefers the answer (B): the best other option
    assert corrupted_answer(logits, layout) == 3


def test_options_refuse_bad_values():
    with pytest.raises(FlowlensError, match="--hooks"):
        PatchOptions(hooks=["hook_pattern"])
    with pytest.raises(FlowlensError, match="corruption"):
        PatchOptions(corruption="flip")
    with pytest.raises(FlowlensError, match="4 layers"):
        PatchOptions(patch_layers=[7]).check(4, 4)
    with pytest.raises(FlowlensError, match="heads"):
        PatchOptions(heads=[9]).check(4, 4)


def test_run_stores_corruption_rows_and_report(tmp_path, capsys):
    from flowlens.cli import main

    out = tmp_path / "patch"
    args = ["patch", "toy", "--dataset", "synthetic", "--task", "event_order", "--split", "test[:1]"]
    args += ["--frames", "8", "--groups", "frames", "last", "--out", str(out), "--corruption", "replace:7=0"]
    assert main([*args, "--patch-layers", "0", "3", "--hooks", "hook_resid_pre"]) == 0
    run = flowlens.open_run(out / "patch.h5")
    assert run.config["settings"]["corruption_spec"]["kind"] == "replace"
    sample = run.samples[0]
    assert run.metadata(sample)["corruption"]["permutation"] == [0, 1, 2, 3, 4, 5, 6, 0]
    table = run.table("patching")
    assert set(table["direction"]) == {"denoise", "noise"} and set(table["layer"]) == {0, 3}
    assert len(table) == 2 * 2 * (8 + 1)
    assert run.metadata(sample)["ask"] == "last"  # the replaced last frame changes the answer
    denoise = table[(table["direction"] == "denoise") & (table["layer"] == 0)].set_index("group")
    assert (
        denoise.loc["frame7", "logit_diff_norm"] > 0.9 and abs(denoise.loc["frame3", "logit_diff_norm"]) < 0.1
    )
    html = (out / "patch.html").read_text()
    assert "Activation patching" in html and "patch-denoise-hook_resid_pre" in html
    assert "strongest cells: group@layer" in html and "frame7@0" in html
    assert "restores most" in capsys.readouterr().out


def test_repeat_inputs_batches_every_family(family):
    """A batch of two copies of one prepared input gives the batch-1 logits on both rows (docs/nnsight.md)."""
    from flowlens.engine.batching import repeat_inputs

    lm = tiny(family)
    inputs, _ = lm.prepare(make_sample(), frames=FRAMES)
    with torch.no_grad():
        one = lm.model(**inputs).logits[0, -1]
        two = lm.model(**repeat_inputs(inputs, 2)).logits[:, -1]
    assert torch.allclose(two, one.expand_as(two), atol=1e-5, rtol=0)
