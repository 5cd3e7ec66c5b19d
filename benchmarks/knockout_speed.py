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
