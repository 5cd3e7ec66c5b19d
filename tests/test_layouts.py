"""Token layouts of every family, checked against the processor's own outputs and the real model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_sample, random_video, tiny

import flowlens
from flowlens.models.layout import TokenLayout

FRAMES = 8


def expected_group_sizes(lm: flowlens.VideoLM, inputs) -> list[int]:
    """Tokens per frame group from config arithmetic and processor outputs, written independently of the adapters."""
    cfg = lm.model.config
    family = lm.family
    if family == "llava_next_video":
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size // cfg.spatial_pool_stride
        return [side * side] * FRAMES
    if family == "llava_onevision":
        side = math.ceil(cfg.vision_config.image_size // cfg.vision_config.patch_size / 2)
        return [side * side] * (FRAMES - 1) + [side * side + 1]  # one newline token after the last frame
    if family in {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"}:
        t, h, w = inputs["video_grid_thw"][0].tolist()
        merge = lm.processor.video_processor.merge_size
        assert t == math.ceil(FRAMES / lm.processor.video_processor.temporal_patch_size)
        return [h * w // merge**2] * t
    if family == "video_llama_3":
        mask = inputs["video_compression_mask"]
        return [int(m.sum()) for m in mask.reshape(FRAMES, -1)]
    if family == "internvl":
        return [lm.processor.image_seq_length] * FRAMES
    raise AssertionError(family)


def feature_token_ids(lm: flowlens.VideoLM) -> int:
    if lm.family == "internvl":
        return lm.processor.image_token_id
    return lm.processor.video_token_id


@pytest.fixture
def prepared(family):
    lm = tiny(family)
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    return lm, inputs, layout


def test_every_video_token_in_exactly_one_frame_group(prepared):
    lm, inputs, layout = prepared
    ids = inputs["input_ids"][0].numpy()
    video = np.flatnonzero(ids == feature_token_ids(lm))
    np.testing.assert_array_equal(layout["video_features"], video)
    membership = np.zeros(layout.seq_len, dtype=int)
    for name in layout.frame_groups:
        membership[layout[name]] += 1
    assert np.all(membership[video] == 1)
    assert membership.sum() == layout["video"].size  # frame groups partition the span, markup included
    np.testing.assert_array_equal(layout["video"], np.arange(layout["video"][0], layout["video"][-1] + 1))
    np.testing.assert_array_equal(
        layout.video_cells[:, 0], np.repeat(np.arange(layout.n_frames), layout.tokens_per_frame())
    )


def test_group_sizes_match_config_arithmetic(prepared):
    lm, inputs, layout = prepared
    assert layout.tokens_per_frame() == expected_group_sizes(lm, inputs)
    counter = getattr(lm.processor, "_get_num_multimodal_tokens", None)
    if lm.family in {"llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"}:
        h, w = random_video().shape[1:3]
        n = counter(video_sizes=[(FRAMES, h, w)])["num_video_tokens"][0]
        assert n == layout.n_video  # the processor's own count


def test_spatial_cells_cover_each_grid(prepared):
    _, _, layout = prepared
    for f, (rows, cols) in enumerate(layout.frame_grid):
        cells = layout.video_cells[(layout.video_cells[:, 0] == f) & (layout.video_cells[:, 1] >= 0)]
        assert cells[:, 1].max() < rows and cells[:, 2].max() < cols
        assert len({(r, c) for _, r, c in cells}) == len(cells)  # no cell twice


def _covers(tok, ids, group, text: str) -> None:
    """The group's tokens decode to `text` plus at most token-boundary whitespace around it (compared without
    spaces: the word-level test tokenizer decodes with a space between every token)."""
    decoded = "".join(tok.decode(ids[group].tolist()).split())
    text = "".join(text.split())
    assert text in decoded and decoded.replace(text, "", 1) == "", (decoded, text)


def test_prompt_parts_are_the_exact_tokens(prepared):
    lm, inputs, layout = prepared
    ids = inputs["input_ids"][0]
    tok = lm.tokenizer
    sample = make_sample()
    _covers(tok, ids, layout["question_only"], sample.question)
    for letter, option in zip(sample.letters, sample.options, strict=True):
        _covers(tok, ids, layout[f"option_{letter}"], f"({letter}) {option}")
    np.testing.assert_array_equal(layout["true_option"], layout["option_B"])
    np.testing.assert_array_equal(
        layout["false_options"],
        np.sort(np.concatenate([layout["option_A"], layout["option_C"], layout["option_D"]])),
    )
    assert tok.decode(ids[layout["question"][:1]].tolist()).strip().startswith("Question")
    assert tok.decode(ids[-1:].tolist()).endswith("(")  # assistant turn ends in "Best option:("
    encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = ids.tolist()
    for letter, token_id in zip("ABCD", layout.option_token_ids, strict=True):  # the letter after the prompt
        assert encode(tok.decode(prompt) + letter)[-1] == token_id or encode(letter) == [token_id]


def test_partition_and_shape(prepared):
    lm, inputs, layout = prepared
    layout.validate()
    assert layout.seq_len == inputs["input_ids"].shape[1]
    assert layout.n_layers >= 4 and layout.n_heads >= 4
    if lm.family != "llava_next_video":  # Vicuna uses full multi-head attention; the others are GQA LMs
        assert layout.n_kv_heads < layout.n_heads
    assert TokenLayout.from_json(layout.to_json()).summary() == layout.summary()


def test_forward_runs(prepared):
    lm, inputs, layout = prepared
    logits = lm.forward(inputs).logits
    assert logits.shape[:2] == (1, layout.seq_len)
    assert torch.isfinite(logits).all()


def test_frame_groups_match_the_model(family):
    """Changing one raw frame changes the LM's input embeddings exactly at that frame group's cells."""
    lm = tiny(family)
    video = random_video(frames=FRAMES)
    captured = []

    def grab(module, args, kwargs):
        captured.append(kwargs["inputs_embeds"].detach().clone())

    handle = lm.adapter.language_model().register_forward_pre_hook(grab, with_kwargs=True)
    try:
        base_inputs, layout = lm.prepare(make_sample(video), frames=FRAMES)
        lm.forward(base_inputs)
        changed_frame = 3
        video2 = video.copy()
        video2[changed_frame] = random_video(seed=1, frames=1)[0]
        inputs2, layout2 = lm.prepare(make_sample(video2), frames=FRAMES)
        lm.forward(inputs2)
    finally:
        handle.remove()
    assert layout2.summary() == layout.summary()
    diff = (captured[0] - captured[1]).abs().amax(-1)[0]
    changed = set(torch.nonzero(diff > 1e-6).flatten().tolist())
    groups = [g for g, src in enumerate(layout.frame_sources) if changed_frame in src]
    cells = layout.video_cells
    expected = {
        int(p) for p, c in zip(layout["video_features"], cells, strict=True) if c[0] in groups and c[1] >= 0
    }
    assert changed == expected


BYTE_LEVEL = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "video_llama_3", "internvl", "llava_onevision"]


@pytest.mark.parametrize("family", BYTE_LEVEL)
def test_parts_keep_tokens_that_merge_their_last_character_with_a_newline(family):
    """Byte-level BPE merges `?\\n`, `.\\n`, `)\\n`: such a token overlaps the part, so it belongs to it."""
    lm = tiny(family)
    sample = flowlens.Sample(
        id="bpe",
        video=random_video(frames=FRAMES),
        question="Which object appeared first?",
        options=["a red ball.", "a box (big)", "the star."],
        answer="B",
    )
    inputs, layout = lm.prepare(sample, frames=FRAMES)
    ids, tok = inputs["input_ids"][0], lm.tokenizer
    merged = {"?\n", ".\n", ")\n"}
    seen = set()
    for group, text in [("question_only", sample.question)] + [
        (f"option_{x}", f"({x}) {o}") for x, o in zip(sample.letters, sample.options, strict=True)
    ]:
        _covers(tok, ids, layout[group], text)
        last = tok.decode(ids[layout[group][-1:]].tolist())
        seen.update({last} & merged)
        assert layout[group][-1] in layout["question"]
    assert seen == merged  # the tokenizer really merged all three, and each part kept its token
