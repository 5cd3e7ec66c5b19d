"""Pruning: a mask-mode sweep against one full forward per condition, and drop-mode cost at 25%.

1. `sweep`: 6 scorers x 4 budgets, mask mode at K = 1 (K = 0 for the embedding scorers), over 32 toy
   samples. flowlens: one clean run per sample, every keep-set resumed from it at K on its kept rows only
   (compact mask mode: the clean keys and values before the first pruned token, then the kept positions),
   batched. Naive: one whole-model forward per condition (vision tower included, as an evaluation loop
   would run it), its edges blocked by the same edge-suppression handler, unbatched. Timed: the re-runs
   (clean run included for flowlens); scoring is common to both and timed apart. Numbers: the max
   |logit diff| between the two, and each one's max error against the same naive forward in float64 on
   the first `fp64_samples` samples (both are fp32 roundings of one function).
2. `drop`: FastV (attn_last at layer 1, K = 2) keeping 25% of the video tokens of a ~4k-token sample
   on the 8-layer benchmark model: analytic prefill FLOPs (c = 2 and c = 3) and measured wall time and
   peak memory of the real shortened prefill beside the unpruned one (CPU, 2 threads).
"""

from __future__ import annotations

import time

import torch


@torch.no_grad()
def full_forward(lm, inputs, layout, layer: int, pruned: tuple[int, ...]) -> torch.Tensor:
    """The naive way: one whole-model forward (vision tower included) with the keep-set's edges blocked."""
    from flowlens.analyses.readout import final_hidden, head_logits_fp32
    from flowlens.engine.backend import active_handler, language_attention
    from flowlens.engine.masks import EdgeMask
    from flowlens.engine.prune import prune_knockout

    knockout = prune_knockout(layout.seq_len, pruned, layer, layout.n_layers)
    with (
        torch.no_grad(),
        language_attention(lm.model),
        active_handler(EdgeMask([knockout]), layout.n_layers),
        final_hidden(lm) as grab,
    ):
        lm.model(**inputs, use_cache=False, logits_to_keep=1)
    return head_logits_fp32(lm.adapter.output_head(), grab["last"])[0]


SCORERS = [
    ({"name": "attn_last", "layer": 0}, 1),
    ({"name": "attn_question", "layer": 0}, 1),
    ({"name": "attn_received", "layer": 0, "queries": "all", "normalise": True}, 1),
    ({"name": "rollout", "layer": 0}, 1),
    ({"name": "divprune"}, 0),
    ({"name": "temporal_novelty"}, 0),
]
BUDGETS = (0.5, 0.25, 0.15, 0.10)


def bench_prune_sweep(samples: int = 32, batch_size: int = 32, fp64_samples: int = 4) -> dict:
    import flowlens
    from flowlens.analyses.trace import TraceOptions, trace_sample
    from flowlens.engine.prune import run_mask
    from flowlens.engine.resume import CleanRun
    from flowlens.pruning.policies import select
    from flowlens.pruning.scorers import EMBEDDINGS, ScoreContext, score

    torch.set_num_threads(2)
    lm = flowlens.load("toy")
    lm64 = flowlens.load("toy")
    lm64.model.double()
    data = flowlens.data.load("synthetic", split=f"test[:{samples}]")
    error64 = {"flowlens": 0.0, "naive": 0.0}
    scoring_s = ours_s = naive_s = 0.0
    max_diff, same, conditions = 0.0, True, 0
    for index, sample in enumerate([data[0], *data]):  # the first sample once more, untimed: warm-up
        if index == 1:
            scoring_s = ours_s = naive_s = 0.0
            conditions = 0
        start = time.perf_counter()
        options = TraceOptions(
            frames=8,
            activations=["@".join(EMBEDDINGS)],
            activations_dtype="float32",
            received_attention=True,
            rollout=True,
        )
        trace = trace_sample(lm, sample, options)
        inputs, layout = lm.prepare(sample, frames=8)
        context = ScoreContext(None, str(sample.id), trace=trace)
        video = layout["video_features"]
        items = []
        for spec, layer in SCORERS:
            params = {k: v for k, v in spec.items() if k != "name"}
            values = score(spec["name"], context, **params)
            for budget in BUDGETS:
                keep = select(values, "topk_ratio", budget)
                items.append((layer, tuple(int(p) for p in video[~keep])))
        scoring_s += time.perf_counter() - start
        conditions += len(items)

        start = time.perf_counter()
        clean = CleanRun(lm, inputs, layout)
        ours = torch.stack(run_mask(clean, items, batch_size))
        ours_s += time.perf_counter() - start

        start = time.perf_counter()
        naive = torch.stack([full_forward(lm, inputs, layout, k, pruned) for k, pruned in items])
        naive_s += time.perf_counter() - start
        max_diff = max(max_diff, float((ours - naive).detach().abs().max()))
        same &= bool(torch.equal(ours.argmax(-1), naive.argmax(-1)))
        if 1 <= index <= fp64_samples:
            inputs64 = {k: v.double() if torch.is_floating_point(v) else v for k, v in inputs.items()}
            exact = torch.stack([full_forward(lm64, inputs64, layout, k, p) for k, p in items]).double()
            for name, value in (("flowlens", ours), ("naive", naive)):
                error64[name] = max(error64[name], float((value.double() - exact).abs().max()))
    row = {
        "samples": samples,
        "conditions": conditions,
        "scorers": [s for s, _ in SCORERS],
        "budgets": list(BUDGETS),
        "scoring_s": scoring_s,
        "flowlens_s": ours_s,
        "naive_full_forward_per_condition_s": naive_s,
        "speedup": naive_s / ours_s,
        "max_abs_logit_diff": max_diff,
        "same_argmax": same,
        "fp64_samples": fp64_samples,
        "max_abs_logit_error_vs_fp64_flowlens": error64["flowlens"],
        "max_abs_logit_error_vs_fp64_naive": error64["naive"],
    }
    print(
        f"prune sweep: {conditions} conditions on {samples} toy samples: flowlens {ours_s:.1f} s, naive "
        f"{naive_s:.1f} s, speed-up {row['speedup']:.1f}x, max |logit diff| {max_diff:.1e}, vs float64 "
        f"{error64['flowlens']:.1e} (flowlens) / {error64['naive']:.1e} (naive) (scoring {scoring_s:.1f} s)"
    )
    return row


def bench_prune_drop(layers: int = 8, budget: float = 0.25, layer: int = 2, repeats: int = 3) -> dict:
    from benchmarks.trace_speed import prepare
    from flowlens.engine.backend import active_handler, language_attention
    from flowlens.engine.capture import CaptureOptions, FlowCapture
    from flowlens.engine.prune import measure_prefill
    from flowlens.pruning.cost import ModelShape, cost_columns
    from flowlens.pruning.policies import select

    lm, inputs, layout = prepare(layers)
    capture = FlowCapture(layout, lm.device, CaptureOptions(flows=False, question_to_video=False))
    with torch.no_grad(), language_attention(lm.model), active_handler(capture, layout.n_layers):
        lm.model(**inputs, use_cache=False, logits_to_keep=1)
    scores = capture.last_to_video()[layer - 1].mean(0)  # FastV: head mean of the last row at K-1
    keep = select(scores, "topk_ratio", budget)
    pruned = tuple(int(p) for p in layout["video_features"][~keep])
    cost = cost_columns(
        layout.seq_len, layout.seq_len - len(pruned), layer, ModelShape.of(lm.adapter.text_config)
    )
    measured = measure_prefill(lm, inputs, layer, pruned, "original", repeats)
    row = {
        "layers": layers,
        "seq_len": layout.seq_len,
        "video_tokens": layout.n_video,
        "kept_video_tokens": int(keep.sum()),
        "K": layer,
        **cost,
        **measured,
        "time_ratio": measured["prefill_s"] / measured["prefill_s_unpruned"],
        "peak_memory_ratio": measured["peak_bytes"] / max(1.0, measured["peak_bytes_unpruned"]),
        "note": "prefill wall time includes the vision tower (not pruned); FLOPs count the language model only",
    }
    print(
        f"drop at {budget:.0%}, K={layer}, {layout.seq_len} tokens: FLOPs ratio c=2 {cost['flops_ratio_c2']:.3f}, "
        f"c=3 {cost['flops_ratio_c3']:.3f}; prefill {measured['prefill_s']:.2f} s vs {measured['prefill_s_unpruned']:.2f} s"
    )
    return row


if __name__ == "__main__":
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    bench_prune_drop()
    bench_prune_sweep()
