"""One test per transformers behaviour `flowlens.compat` relies on, so a release that changes one fails here, by name.

Plus the runtime canaries: a broken cache hand-off, a wrong resumed clean row and a wrong captured
attention output each stop a run with `CompatError` instead of producing a wrong table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAMILIES, make_sample, random_video, tiny
from transformers import Cache, DynamicCache

from flowlens import compat
from flowlens.engine.backend import ATTENTION_NAME, active_handler, language_attention
from flowlens.engine.masks import CompiledKnockout
from flowlens.engine.resume import CleanRun
from flowlens.engine.spec import Block, Knockout
from flowlens.models.base import VideoLM
from flowlens.models.registry import adapter_for_family

FRAMES = 4


@pytest.fixture(scope="module")
def llava():
    lm = tiny("llava_next_video")
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    return lm, inputs, layout


# ---------------------------------------------------------------- model structure
@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_and_output_head_are_the_language_model_and_unembedding(family):
    lm = tiny(family)
    decoder = compat.decoder(lm.model)
    assert len(decoder.layers) == lm.n_layers
    head = compat.output_head(lm.model)
    assert head.weight.shape == (lm.adapter.text_config.vocab_size, lm.adapter.text_config.hidden_size)
    assert compat.cache_keyword(decoder) in compat.CACHE_KEYWORDS


# ---------------------------------------------------------------- attention switch
@pytest.mark.parametrize("family", FAMILIES)
def test_attention_switch_reaches_every_language_layer_and_only_them(family):
    lm = tiny(family)
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    vision = getattr(lm.model.config, "vision_config", None)
    before = compat.attention_implementation(lm.adapter.text_config)
    seen: list[int] = []

    def count(module, query, key, value, mask, scaling):
        seen.append(int(module.layer_idx))

    with language_attention(lm.model), active_handler(count, expected_calls=lm.n_layers), torch.no_grad():
        assert compat.attention_implementation(lm.adapter.text_config) == ATTENTION_NAME
        if vision is not None:
            assert compat.attention_implementation(vision) != ATTENTION_NAME
        lm.model(**inputs, logits_to_keep=1)
    assert sorted(seen) == list(range(lm.n_layers))
    assert compat.attention_implementation(lm.adapter.text_config) == before


def test_sdpa_function_and_mask_are_transformers_sdpa(llava):
    lm, _, _ = llava
    module = lm.adapter.language_layers()[0].self_attn
    gen = torch.Generator().manual_seed(0)
    heads = lm.adapter.text_config.num_attention_heads
    q, k, v = (torch.randn(1, heads, 7, 16, generator=gen) for _ in range(3))
    out, _ = compat.sdpa_attention(module, q, k, v, None, scaling=0.25)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25)
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("padded", [False, True])
def test_mask_function_gives_none_for_plain_causal_and_a_boolean_mask_with_padding(llava, padded):
    """What the flowlens attention function is handed: None (SDPA's causal path) or a (B, 1, T, T) bool mask."""
    lm, inputs, layout = llava
    inputs = dict(inputs)
    if padded:
        inputs["attention_mask"] = inputs["attention_mask"].clone()
        inputs["attention_mask"][0, 0] = 0
    masks = []

    def grab(module, query, key, value, mask, scaling):
        masks.append(mask)

    with language_attention(lm.model), active_handler(grab), torch.no_grad():
        lm.model(**inputs, logits_to_keep=1)
    if not padded:
        assert all(m is None for m in masks)
        return
    mask = masks[0]
    t = layout.seq_len
    assert mask.dtype == torch.bool and mask.shape == (1, 1, t, t)
    assert not mask[0, 0, 5, 0] and mask[0, 0, 5, 1] and not mask[0, 0, 5, 6]


# ---------------------------------------------------------------- KV cache hand-off
@pytest.mark.parametrize("family", FAMILIES)
def test_cache_passed_under_cache_keyword_is_used_and_grows(family):
    """The decoder reads a prefix cache under `cache_keyword` and appends the new positions to it."""
    lm = tiny(family)
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    clean = CleanRun(lm, inputs, layout)
    half = layout.seq_len // 2
    cache = compat.prefix_cache(clean.keys, clean.values, half, batch=1)
    assert compat.cache_length(cache) == half
    kwargs = dict(clean.call)
    kwargs.update(inputs_embeds=clean.layer_inputs[0][:, half:], use_cache=True)
    kwargs["position_ids"] = clean._position_ids(half, 1)
    kwargs[compat.cache_keyword(clean.language_model)] = cache
    if "deepstack_visual_embeds" in kwargs and kwargs["deepstack_visual_embeds"] is not None:
        kwargs.update(clean._deepstack(0, half, 1))
    with torch.no_grad():
        hidden = clean.language_model(**kwargs).last_hidden_state
    assert compat.cache_length(cache) == layout.seq_len
    torch.testing.assert_close(hidden[:, -1], clean.final_hidden[:, -1], atol=1e-5, rtol=0)


def test_replayed_call_drops_every_cache_argument():
    call = {
        "attention_mask": torch.ones(1, 3),
        "cache": None,
        "past_key_values": DynamicCache(),
        "my_cache": DynamicCache(),  # a cache under a name we do not know: dropped by type
        "cache_position": torch.arange(3),
        "inputs_embeds": torch.zeros(1, 3, 4),
        "use_cache": True,
        "position_ids": torch.arange(3)[None],
    }
    kept = compat.replayable_call(call)
    assert set(kept) == {"attention_mask", "position_ids"}
    assert not any(isinstance(v, Cache) for v in kept.values())


def test_prefix_cache_shapes(llava):
    lm, inputs, layout = llava
    clean = CleanRun(lm, inputs, layout)
    cache = compat.prefix_cache(clean.keys, clean.values, 5, batch=3, first_layer=2)
    for layer in range(lm.n_layers):
        keys = cache.layers[layer].keys
        assert keys.shape[0] == (3 if layer >= 2 else 1) and keys.shape[2] == 5
        torch.testing.assert_close(keys[:1], clean.keys[layer][:, :, :5], atol=0, rtol=0)


# ---------------------------------------------------------------- M-RoPE position ids
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_mrope_position_ids_are_recorded_as_3_or_4_by_batch_by_time(family):
    lm = tiny(family)
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    ids = CleanRun(lm, inputs, layout).call["position_ids"]
    assert ids.dim() == 3 and ids.shape[0] in (3, 4) and ids.shape[1:] == (1, layout.seq_len)
    expanded = compat.expand_batch(compat.position_suffix(ids, 5), 4)
    assert expanded.shape == (ids.shape[0], 4, layout.seq_len - 5)
    torch.testing.assert_close(expanded[:, 3], ids[:, 0, 5:])


# ---------------------------------------------------------------- cutting the layer list
def _hybrid_qwen2_vl(layer_types: list[str], window: int) -> VideoLM:
    """tiny:qwen2_vl with sliding-window layers (window shorter than the prompt), built in memory."""
    adapter = adapter_for_family("qwen2_vl")
    config, processor = adapter.tiny_components(len(layer_types))
    text = config.get_text_config()
    text.use_sliding_window, text.sliding_window, text.layer_types = True, window, list(layer_types)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = adapter.model_class()(config).eval()
    model.set_attn_implementation("sdpa")
    return VideoLM(model, processor, adapter(model, processor), "hybrid-qwen2-vl", None)


def _reference_hybrid_logits(lm, inputs, layout, knockout, window: int) -> torch.Tensor:
    """One eager forward; layer l uses causal (sliding if its type says so) minus the knockout's blocked pairs."""
    from reference_knockout import reference_mask

    t = layout.seq_len
    q, k = np.arange(t)[:, None], np.arange(t)[None, :]
    minimum = np.finfo(np.float32).min
    masks = {}
    for layer, kind in enumerate(lm.adapter.text_config.layer_types):
        allowed = k <= q
        if kind == "sliding_attention":
            allowed &= q - k < window
        if knockout is not None and layer in knockout.layers:
            allowed &= reference_mask(layout, knockout.blocks, 1)[0, 0].numpy() == 0
        masks[layer] = torch.from_numpy(np.where(allowed, 0.0, minimum).astype(np.float32))[None, None]
    from reference_knockout import reference_logits_per_layer

    return reference_logits_per_layer(lm, inputs, layout, masks)


def test_resuming_at_a_later_layer_keeps_each_layers_sliding_window():
    window = 16
    lm = _hybrid_qwen2_vl(
        ["full_attention", "sliding_attention", "full_attention", "sliding_attention"], window
    )
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    assert layout.seq_len > 3 * window  # the window really cuts keys off
    clean = CleanRun(lm, inputs, layout)
    torch.testing.assert_close(
        clean.logits, _reference_hybrid_logits(lm, inputs, layout, None, window), atol=1e-5, rtol=0
    )
    for start in range(1, lm.n_layers):
        knockout = Knockout((Block("video", "last"), Block("question", "last")), range(start, lm.n_layers))
        compiled = CompiledKnockout.compile(knockout, layout)
        expected = _reference_hybrid_logits(lm, inputs, layout, knockout, window)
        for position in (0, compiled.first_changed_position):
            got = clean.run_from(start, [compiled], position)[0]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_decoder_layers_from_restores_layers_and_layer_types():
    lm = _hybrid_qwen2_vl(["full_attention", "sliding_attention", "full_attention"], 8)
    decoder = compat.decoder(lm.model)
    layers, types = decoder.layers, list(decoder.config.layer_types)
    with compat.decoder_layers_from(decoder, 1):
        assert [m.self_attn.layer_idx for m in decoder.layers] == [1, 2]
        assert decoder.config.layer_types == types[1:]
    assert decoder.layers is layers and decoder.config.layer_types == types


# ---------------------------------------------------------------- runtime canaries
def test_cache_under_a_wrong_keyword_stops_the_run_instead_of_a_wrong_table(llava, tmp_path, monkeypatch):
    """A cache handed over under a keyword the decoder ignores: the knockout run fails with CompatError."""
    from flowlens.analyses.knockout import SweepOptions
    from flowlens.analyses.knockout_run import knockout

    lm, _, _ = llava
    real = compat.cache_keyword(compat.decoder(lm.model))
    wrong = "past_key_values" if real == "cache" else "cache"
    if real == "cache":  # transformers >= 5.24 still maps the old name; use one nobody reads
        wrong = "kv_cache"
    monkeypatch.setattr(compat, "cache_keyword", lambda module: wrong)
    sample = make_sample(random_video(frames=FRAMES))
    with pytest.raises(compat.CompatError, match=r"KV-cache hand-off.*transformers \d"):
        knockout(
            lm, [sample], "vql-to-ql", tmp_path / "ko", SweepOptions(window=1, frames=FRAMES), report=False
        )
    assert not (tmp_path / "ko" / "knockout.html").exists()


def test_clean_row_canary_catches_a_wrong_resumed_forward(llava, monkeypatch):
    lm, inputs, layout = llava
    clean = CleanRun(lm, inputs, layout)
    knockout = CompiledKnockout.compile(Knockout((Block("video", "last"),), [1]), layout)
    clean.run_from(1, [knockout], knockout.first_changed_position)  # fine as is
    shifted = clean._position_ids

    def wrong_positions(position, batch):  # a replay that loses track of the positions
        return shifted(position, batch) + 1

    monkeypatch.setattr(clean, "_position_ids", wrong_positions)
    with pytest.raises(compat.CompatError, match="clean-row canary"):
        clean.run_from(1, [knockout], knockout.first_changed_position)


def test_capture_canary_catches_a_wrong_attention_output(llava, monkeypatch):
    from flowlens.analyses.trace import TraceOptions, trace_sample
    from flowlens.engine.capture import FlowCapture

    lm, _, _ = llava
    original = FlowCapture._output_and_mass

    def off_by_a_bit(self, *args):
        out, mass = original(self, *args)
        return out + 1e-3, mass

    monkeypatch.setattr(FlowCapture, "_output_and_mass", off_by_a_bit)
    with pytest.raises(compat.CompatError, match="attention output"):
        trace_sample(lm, make_sample(random_video(frames=FRAMES)), TraceOptions(frames=FRAMES))


def test_canary_tolerance_scales_with_dtype():
    from flowlens.engine.resume import canary_tolerance

    logits = torch.tensor([-30.0, 10.0])
    assert canary_tolerance(torch.float32, logits) == pytest.approx(3e-3)
    assert canary_tolerance(torch.bfloat16, logits) == pytest.approx(1.5)


# ---------------------------------------------------------------- compact mask mode (pruning)
def test_sliding_window_configs_are_detected_and_prune_uses_full_rows_there():
    from types import SimpleNamespace

    from flowlens.engine.prune import compact_supported, run_mask, run_mask_full

    assert compat.uses_sliding_window(SimpleNamespace(layer_types=["full_attention", "sliding_attention"]))
    assert compat.uses_sliding_window(SimpleNamespace(use_sliding_window=True, sliding_window=4096))
    assert not compat.uses_sliding_window(SimpleNamespace(use_sliding_window=False, sliding_window=4096))
    assert not compat.uses_sliding_window(SimpleNamespace(layer_types=["full_attention"] * 2))
    lm = _hybrid_qwen2_vl(["full_attention", "sliding_attention", "full_attention", "sliding_attention"], 16)
    inputs, layout = lm.prepare(make_sample(random_video(frames=FRAMES)), frames=FRAMES)
    clean = CleanRun(lm, inputs, layout)
    assert not compact_supported(clean)
    pruned = tuple(int(p) for p in layout["video_features"][1::2])
    assert torch.equal(run_mask(clean, [(1, pruned)])[0], run_mask_full(clean, [(1, pruned)])[0])


def test_cache_slots_follow_cache_position_not_position_ids(llava):
    """Compact mask mode feeds rows whose position ids skip values after a prefix cache: causality must
    follow the cache slots (row 0 cannot see row 1), whatever the position ids say."""
    lm, inputs, layout = llava
    clean = CleanRun(lm, inputs, layout)
    p = layout.seq_len // 2
    outputs = []
    for bump in (0.0, 1.0):
        cache = compat.prefix_cache(clean.keys, clean.values, p, batch=1)
        rows = torch.tensor([[p + 3, p + 9]])  # two rows far apart in position id
        kwargs = compat.shortened_call(clean.call, rows, rows.clone())
        kwargs["attention_mask"] = torch.ones(1, p + 2, dtype=torch.long)
        embeds = clean.layer_inputs[0][0][rows].clone()
        embeds[:, 1] += bump  # change only the later row
        kwargs.update(inputs_embeds=embeds, use_cache=True)
        kwargs[compat.cache_keyword(clean.language_model)] = cache
        with torch.no_grad():
            outputs.append(clean.language_model(**kwargs).last_hidden_state)
        assert compat.cache_length(cache) == p + 2
    torch.testing.assert_close(outputs[0][:, 0], outputs[1][:, 0], atol=0, rtol=0)  # row 0 unchanged
    assert float((outputs[0][:, 1] - outputs[1][:, 1]).abs().max()) > 1e-3
