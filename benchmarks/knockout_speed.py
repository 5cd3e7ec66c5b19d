"""Map the Flow's four-block sweep on one sample of a 32-layer model: flowlens vs the paper's method.

The paper's method is one full eager forward per condition with a dense additive mask
(`tests/reference_knockout.py`). flowlens starts every condition from the clean residual stream at
its first layer and batches conditions that share it. Both must give the same numbers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def bench_knockout_speed(layers: int = 32, window: int = 9, batch_size: int = 16) -> dict:
    """Time both methods on `vql-to-ql` (4 curves x every layer window) and compare their probabilities."""
    from reference_knockout import reference_logits

    import flowlens
    from flowlens.analyses.knockout import SweepOptions, conditions_for, run_conditions
    from flowlens.data.probe import probe_sample
    from flowlens.engine.resume import CleanRun
    from flowlens.engine.spec import PRESETS

    torch.set_num_threads(2)
    lm = flowlens.load("tiny:llava_next_video", layers=layers)
    inputs, layout = lm.prepare(probe_sample(), frames=8)
    conditions = conditions_for(PRESETS["vql-to-ql"], layout.n_layers, SweepOptions(window=window))
    knockouts = [c.knockout for c in conditions]

    start = time.perf_counter()
    clean = CleanRun(lm, inputs, layout)
    ours = torch.stack(run_conditions(clean, layout, knockouts, batch_size))
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    reference_logits(lm, inputs, layout, None)  # the paper's clean forward
    paper = torch.stack([reference_logits(lm, inputs, layout, k) for k in knockouts])
    paper_s = time.perf_counter() - start

    ids = layout.option_token_ids
    p_ours, p_paper = torch.softmax(ours, -1)[:, ids], torch.softmax(paper, -1)[:, ids]
    row = {
        "layers": layers,
        "seq_len": layout.seq_len,
        "conditions": len(knockouts),
        "flowlens_s": ours_s,
        "paper_method_s": paper_s,
        "speedup": paper_s / ours_s,
        "max_abs_logit_diff": float((ours - paper).abs().max()),
        "max_abs_option_prob_diff": float((p_ours - p_paper).abs().max()),
        "same_argmax_letters": bool(np.array_equal(p_ours.argmax(-1).numpy(), p_paper.argmax(-1).numpy())),
    }
    print(
        f"{len(knockouts)} conditions, {layers} layers, {layout.seq_len} tokens: flowlens {ours_s:.2f} s, "
        f"paper's method {paper_s:.2f} s, speed-up {row['speedup']:.1f}x, max |logit diff| {row['max_abs_logit_diff']:.1e}"
    )
    return row


if __name__ == "__main__":
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    bench_knockout_speed()


def bench_canary_cost(
    layers: int = 32,
    window: int = 9,
    batch_size: int = 32,
    repeats: int = 3,
    presets: tuple = ("cross-frame", "vql-to-ql"),
) -> dict:
    """The Map the Flow sweep (every preset curve x every window) with and without the clean-row canaries,
    on the benchmark model at the paper's size (8 frames x 144 tokens, ~1,250 tokens)."""
    from benchmarks.models import bench_llava_next_video
    from flowlens.analyses.knockout import SweepOptions, conditions_for, run_conditions
    from flowlens.data.probe import probe_sample
    from flowlens.engine.resume import CleanRun
    from flowlens.engine.spec import PRESETS

    torch.set_num_threads(2)
    lm = bench_llava_next_video(layers)
    inputs, layout = lm.prepare(probe_sample(), frames=8)
    options = SweepOptions(window=window)
    knockouts = [c.knockout for p in presets for c in conditions_for(PRESETS[p], layout.n_layers, options)]
    seconds: dict[bool, list[float]] = {True: [], False: []}
    results = {}
    for _ in range(repeats):
        for canary in (False, True):
            start = time.perf_counter()
            clean = CleanRun(lm, inputs, layout, canary=canary)
            results[canary] = torch.stack(run_conditions(clean, layout, knockouts, batch_size))
            seconds[canary].append(time.perf_counter() - start)
    off, on = sorted(seconds[False])[repeats // 2], sorted(seconds[True])[repeats // 2]
    row = {
        "layers": layers,
        "seq_len": layout.seq_len,
        "presets": list(presets),
        "conditions": len(knockouts),
        "batch_size": batch_size,
        "sweep_s_without_canary": off,
        "sweep_s_with_canary": on,
        "canary_overhead_percent": 100 * (on - off) / off,
        "max_abs_logit_diff": float((results[True] - results[False]).abs().max()),
    }
    print(
        f"canaries: {len(knockouts)} conditions in batches of {batch_size}: {off:.2f} s without, {on:.2f} s with "
        f"({row['canary_overhead_percent']:+.1f}%)"
    )
    return row
