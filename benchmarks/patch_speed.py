"""Activation-patching sweep speed: 4 layers x 8 frames of `hook_resid_post` (32 cells, denoising) on one toy
`event_order` sample with reversed frames, flowlens' batched engine vs one full forward per cell.

Both sides record the clean and corrupted runs once (timed separately); the per-cell side then runs one
full model forward per cell with a plain forward hook replacing the frame's positions (the way a patching
loop is usually written). The two give the same logits (the max difference is reported).
"""

from __future__ import annotations

import statistics
import time

import torch

CELLS_LAYERS = 4
REPEATS = 3


def _per_cell(lm, corrupt, layout, cells, clean_values) -> torch.Tensor:
    """One full forward per cell, hook on the layer's output (the naive loop)."""
    out = []
    layers = lm.adapter.language_layers()
    for cell in cells:
        index = torch.as_tensor(layout[cell.group])
        values = clean_values[(cell.layer, cell.hook)]

        def replace(module, args, output, index=index, values=values):
            hidden = (output[0] if isinstance(output, tuple) else output).clone()
            hidden[0, index] = values[index]
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        handle = layers[cell.layer].register_forward_hook(replace)
        try:
            out.append(lm.model(**corrupt, logits_to_keep=1).logits[0, -1].float())
        finally:
            handle.remove()
    return torch.stack(out)


@torch.no_grad()
def bench_patch_speed(repeats: int = REPEATS) -> dict:
    import flowlens
    from flowlens.engine.corruption import Corruption
    from flowlens.engine.patching import PatchCell, source_run, sweep

    lm = flowlens.load("toy")
    sample = next(
        s for s in flowlens.data.load("synthetic", split="test[:40]") if s.metadata["task"] == "event_order"
    )
    clean, layout = lm.prepare(sample, frames=8)
    corrupt, _ = lm.prepare(sample, frames=8, transform=Corruption.parse("reverse").apply)
    cells = [
        PatchCell(f, layer, "hook_resid_post") for layer in range(CELLS_LAYERS) for f in layout.frame_groups
    ]
    sites = {(c.layer, c.hook) for c in cells}
    start = time.perf_counter()
    _, clean_values = source_run(lm, clean, layout, sites)
    target, _ = source_run(lm, corrupt, layout, sites)
    record_s = time.perf_counter() - start
    sweep(target, cells, clean_values)  # warm-up
    _per_cell(lm, corrupt, layout, cells[:2], clean_values)
    batched, naive = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        fast = sweep(target, cells, clean_values, batch_size=32)
        batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        slow = _per_cell(lm, corrupt, layout, cells, clean_values)
        naive.append(time.perf_counter() - start)
    b, n = statistics.median(batched), statistics.median(naive)
    row = {
        "cells": len(cells),
        "seq_len": layout.seq_len,
        "device": str(lm.device),
        "threads": torch.get_num_threads(),
        "record_clean_and_corrupted_s": record_s,
        "batched_sweep_s_median": b,
        "one_forward_per_cell_s_median": n,
        "speedup_sweep": n / b,
        "speedup_including_recording": (n + record_s) / (b + record_s),
        "batched_forwards": CELLS_LAYERS,
        "max_abs_logit_difference": float((fast - slow).abs().max()),
        "repeats": repeats,
    }
    print(
        f"patch sweep {len(cells)} cells: batched {b:.3f} s ({CELLS_LAYERS} forwards) vs one forward per cell "
        f"{n:.3f} s -> {n / b:.1f}x (with recording {row['speedup_including_recording']:.1f}x); "
        f"max |logit diff| {row['max_abs_logit_difference']:.2e}"
    )
    return row


if __name__ == "__main__":
    import json

    print(json.dumps(bench_patch_speed(), indent=2))
