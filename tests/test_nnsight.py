"""nnsight interop: envoys over the same model for every family, flowlens knockouts inside nnsight traces (equal
to `lm.knockout` and to a plain eager reference), nnsight-saved tensors written into runs, multimodal batching,
patching written in nnsight equal to the flowlens engine, and the version gate."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, make_sample, tiny
from reference_knockout import reference_logits

import flowlens
from flowlens.engine.activations import ActivationCapture
from flowlens.engine.batching import repeat_inputs
from flowlens.engine.corruption import Corruption
from flowlens.engine.patching import PatchCell, run_patched, source_run
from flowlens.engine.spec import Block, BlockSet, Knockout
from flowlens.errors import FlowlensError
from flowlens.interop import nnsight as interop

nnsight = pytest.importorskip("nnsight")  # installed by the dev extra: flowlens[nnsight]
FRAMES = 4


def test_version_gate(monkeypatch):
    assert interop.require() is nnsight
    for version in ["0.5.3", "0.9.0", "1.0"]:
        monkeypatch.setattr(nnsight, "__version__", version)
        with pytest.raises(FlowlensError, match=r"outside the range flowlens is tested with \(>=0.8,<0.9\)"):
            interop.require()


@pytest.mark.parametrize("family", FAMILIES)
def test_envoy_paths_and_no_copy(family):
    lm = tiny(family)
    env = lm.nnsight()
    assert env._module is lm.model  # the same module tree, so the same weights
    assert interop.layers_path(lm) == "model.language_model.layers"  # docs/nnsight.md's table
    assert lm.nnsight_layers(env)[0]._module is lm.adapter.language_layers()[0]


@pytest.mark.parametrize("family", ["llava_next_video", "qwen2_vl", "internvl"])
def test_saved_rows_index_with_the_layout(family):
    lm = tiny(family)
    inputs, layout = lm.prepare(make_sample(), frames=FRAMES)
    env = lm.nnsight()
    with torch.no_grad(), env.trace(**inputs):
        h = lm.nnsight_layers(env)[1].output[:, layout["frame1"]].save()
        full = lm.nnsight_layers(env)[2].output.save()
    capture = ActivationCapture(
        layout, ["blocks.1.hook_resid_post@frame1", "blocks.2.hook_resid_post@last"], "float32"
    )
    with torch.no_grad(), capture.attached(lm.adapter.language_layers(), lm.adapter.block_parts):
        lm.model(**inputs)
    stored = capture.result()
    assert torch.allclose(h[0], torch.as_tensor(stored["blocks.1.hook_resid_post"]["frame1"]), atol=1e-5)
    rows = interop.activation_rows(full, layout, ["last"])["last"]
    assert torch.allclose(
        torch.as_tensor(rows), torch.as_tensor(stored["blocks.2.hook_resid_post"]["last"]), atol=1e-5
    )


def _knockout_logits(env, inputs, ctx, order: int) -> torch.Tensor:
    if order == 1:  # as docs/nnsight.md writes it
        with torch.no_grad(), env.trace(**inputs), ctx:
            logits = env.output.logits[0, -1].save()
    else:
        with torch.no_grad(), ctx, env.trace(**inputs):
            logits = env.output.logits[0, -1].save()
    return logits.float()


@pytest.mark.parametrize("family", ["llava_next_video", "qwen2_vl", "internvl"])
def test_knockout_inside_a_trace_equals_lm_knockout(family, tmp_path):
    lm = tiny(family)
    sample = make_sample()
    inputs, layout = lm.prepare(sample, frames=FRAMES)
    knockout = Knockout((Block("video", "last"), Block("question", "last")), layers=(0, 1, 2))
    env = lm.nnsight()
    implementation = lm.model.config.get_text_config()._attn_implementation
    clean = lm.model(**inputs).logits[0, -1].float().detach()
    expected = reference_logits(lm, inputs, layout, knockout)  # plain eager forward, explicit mask
    for order in (1, 2):
        ctx = lm.knockout_context(knockout, layout)
        logits = _knockout_logits(env, inputs, ctx, order)
        assert ctx.forwards == 1, order
        assert torch.allclose(logits, expected, atol=1e-5, rtol=0), order
        # left cleanly: the user's attention implementation is back and no hook stays behind
        assert lm.model.config.get_text_config()._attn_implementation == implementation
        assert torch.allclose(lm.model(**inputs).logits[0, -1].float(), clean, atol=1e-6)
    assert float((expected - clean).abs().max()) > 1e-3  # the knockout changes the answer logits
    if family != "llava_next_video":
        return
    # the same spec through lm.knockout (window 3 centred on layer 1 = layers 0, 1, 2)
    spec = BlockSet("t", [("ko", knockout.blocks)])
    run = lm.knockout([sample], spec, window=3, centres=[1], frames=FRAMES, out=tmp_path, progress=False)
    row = run.table("knockout").iloc[0]
    assert row["layers"] == "0,1,2"
    gt = layout.option_token_ids[layout.option_letters.index(sample.answer)]
    assert row["p_new_gt"] == pytest.approx(float(torch.softmax(logits, -1)[gt]), abs=1e-6)


def test_knockout_context_outside_nnsight_and_on_error():
    lm = tiny("llava_next_video")
    inputs, layout = lm.prepare(make_sample(), frames=FRAMES)
    knockout = Knockout((Block("video", "last"),), layers=(1,))
    expected = reference_logits(lm, inputs, layout, knockout)
    seen = {}

    def read(
        module, args, kwargs
    ):  # what nnsight's transformers wrapper reads, and the vision tower's choice
        config = lm.model.config
        seen.update(text=config.get_text_config()._attn_implementation, top=config._attn_implementation)
        seen.update(vision=config.vision_config._attn_implementation)

    before = dict(
        top=lm.model.config._attn_implementation, vision=lm.model.config.vision_config._attn_implementation
    )
    handle = lm.adapter.language_model().register_forward_pre_hook(read, with_kwargs=True)
    with torch.no_grad(), lm.knockout_context(knockout, layout):
        got = lm.model(**inputs).logits[0, -1].float()
    handle.remove()
    assert seen == {"text": "flowlens", **before}  # only the language model switched
    with torch.no_grad(), lm.knockout_context(knockout, layout):
        again = lm.model(**repeat_inputs(inputs, 2)).logits[:, -1].float()  # any batch size
    assert torch.allclose(got, expected, atol=1e-5) and torch.allclose(again[1], expected, atol=1e-5)
    with pytest.raises(ValueError), lm.knockout_context(knockout, layout):  # a failed forward restores too
        lm.model(input_ids=inputs["input_ids"][:, :3], pixel_values_videos=inputs["pixel_values_videos"])
    assert lm.model.config.get_text_config()._attn_implementation != "flowlens"


@pytest.mark.parametrize("family", ["llava_next_video", "qwen2_vl", "internvl"])
def test_multimodal_batch_and_patching_in_nnsight_equal_the_engine(family):
    lm = tiny(family)
    sample = make_sample()
    clean, layout = lm.prepare(sample, frames=FRAMES)
    corrupt, _ = lm.prepare(sample, frames=FRAMES, transform=Corruption.parse("reverse").apply)
    env = lm.nnsight()
    frame = layout.frame_groups[1]
    with torch.no_grad(), env.trace(**clean):
        source = lm.nnsight_layers(env)[1].output.save()
    # denoising frame1@blocks.1.hook_resid_post, written in nnsight on row 1 of a batch of 2
    index = torch.as_tensor(layout[frame])
    with torch.no_grad(), env.trace(**repeat_inputs(corrupt, 2)):
        out = lm.nnsight_layers(env)[1].output
        out[1, index] = source[0, index]
        logits = env.output.logits[:, -1].save()
    cell = PatchCell(frame, 1, "hook_resid_post")
    _, values = source_run(lm, clean, layout, {(1, "hook_resid_post")})
    target, _ = source_run(lm, corrupt, layout, {(1, "hook_resid_post")})
    engine = run_patched(target, [[cell]], values)[0]
    assert torch.allclose(logits[0].float(), target.logits, atol=1e-5)  # row 0: unpatched
    assert torch.allclose(logits[1].float(), engine, atol=1e-5)


def test_saved_tensor_written_into_a_run(tmp_path):
    lm = tiny("llava_next_video")
    sample = make_sample()
    inputs, layout = lm.prepare(sample, frames=FRAMES)
    env = lm.nnsight()
    with torch.no_grad(), env.trace(**inputs):
        h = lm.nnsight_layers(env)[2].output.save()
    run = interop.write_activations(
        lm, sample, {"blocks.2.hook_resid_post": h}, tmp_path, groups=("video", "frame_mean"), frames=FRAMES
    )
    got = run.activations("blocks.2.hook_resid_post", "video")
    assert torch.allclose(torch.as_tensor(got.values), h[0, layout["video"]].float(), atol=1e-6)
    assert list(got.index["position"]) == list(layout["video"])
    assert got.index["frame"].max() == layout.n_frames - 1
    means = run.activations("blocks.2.hook_resid_post", "frame_mean").values
    expected = h[0, layout.frame_features(1)].float().mean(0)
    assert torch.allclose(torch.as_tensor(means[1]), expected, atol=1e-6)
    assert run.config["settings"]["activations_source"] == "nnsight"
    with pytest.raises(FlowlensError, match="expected a"):
        interop.activation_rows(h[:, :5], layout, ["last"])
    assert isinstance(flowlens.open_run(run.path), type(run))
