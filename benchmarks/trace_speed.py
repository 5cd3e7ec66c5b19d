"""Trace cost at >= 4096 tokens: plain SDPA forward vs full flowlens trace vs eager output_attentions.

Each mode runs in its own process so peak memory (ru_maxrss growth over the forward) is its own.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import torch

FRAMES = 28  # 144 tokens per frame (as LLaVA-NeXT-Video-7B) -> 4032 video tokens, ~4120 in all


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def prepare(layers: int):
    """The benchmark model and one ~4100-token sample."""
    from benchmarks.models import bench_llava_next_video
    from flowlens.data.sample import Sample

    torch.set_num_threads(2)
    lm = bench_llava_next_video(layers)
    video = np.random.default_rng(0).integers(0, 256, (FRAMES, 96, 96, 3), dtype=np.uint8)
    sample = Sample(
        "bench", video, "Which object appeared first?", ["red ball", "blue box", "green star"], "B"
    )
    inputs, layout = lm.prepare(sample, frames=FRAMES)
    return lm, inputs, layout


def forward(mode: str, lm, inputs, layout) -> None:
    """One forward of the language model and vision tower in `mode` (sdpa | trace | eager)."""
    from flowlens.compat import language_attention_implementation
    from flowlens.engine.backend import active_handler, language_attention
    from flowlens.engine.capture import FlowCapture
    from flowlens.engine.residuals import ResidualCapture

    with torch.no_grad():
        if mode == "sdpa":
            lm.model(**inputs, logits_to_keep=1)
        elif mode == "trace":
            capture, residuals = FlowCapture(layout, lm.device), ResidualCapture(layout, lm.device)
            with (
                language_attention(lm.model),
                active_handler(capture, layout.n_layers),
                residuals.attached(lm.adapter.language_layers()),
            ):
                lm.model(**inputs, logits_to_keep=1)
            capture.segment_flow(), capture.frame_flow(), capture.last_to_video(), capture.question_to_video()
            residuals.resid_last(), residuals.resid_frame_mean()
        else:
            with language_attention_implementation(lm.model, "eager"):
                lm.model(**inputs, output_attentions=True, logits_to_keep=1)


def memory_of(mode: str, layers: int) -> dict:
    """Peak RSS growth over one forward, sampled every millisecond (run in a fresh process per mode).

    ru_maxrss cannot be used: loading and preprocessing already set a higher peak than the forward.
    """
    lm, inputs, layout = prepare(layers)
    forward(mode, lm, inputs, layout)  # warm the allocator, as the timed runs are
    gc.collect()
    before = _rss_mib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    forward(mode, lm, inputs, layout)
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_mib())
    return {"mode": mode, "seq_len": layout.seq_len, "peak_rss_growth_mib": peak[0] - before}


def bench_trace_speed(layers: int = 8, repeats: int = 3) -> dict:
    """Time the three modes interleaved in one process (fair under load); memory in separate processes."""
    lm, inputs, layout = prepare(layers)
    modes = ("sdpa", "trace", "eager")
    times: dict[str, list[float]] = {m: [] for m in modes}
    for mode in modes:
        forward(mode, lm, inputs, layout)  # warm-up
    for _ in range(repeats):
        for mode in modes:
            start = time.perf_counter()
            forward(mode, lm, inputs, layout)
            times[mode].append(time.perf_counter() - start)
    rows = {}
    for mode in modes:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.trace_speed", "--mode", mode, "--layers", str(layers)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows[mode] = {
            **json.loads(out.stdout.strip().splitlines()[-1]),
            "seconds_min": min(times[mode]),
            "seconds_all": times[mode],
            "layers": layers,
        }
    base = rows["sdpa"]
    for row in rows.values():
        row["time_ratio_to_sdpa"] = row["seconds_min"] / base["seconds_min"]
        row["memory_ratio_to_sdpa"] = row["peak_rss_growth_mib"] / max(base["peak_rss_growth_mib"], 1e-9)
    print(f"{'mode':<7}{'tokens':>8}{'seconds':>10}{'x sdpa':>8}{'peak MiB':>10}{'x sdpa':>8}")
    for mode, row in rows.items():
        print(
            f"{mode:<7}{row['seq_len']:>8}{row['seconds_min']:>10.2f}{row['time_ratio_to_sdpa']:>8.2f}"
            f"{row['peak_rss_growth_mib']:>10.0f}{row['memory_ratio_to_sdpa']:>8.2f}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["sdpa", "trace", "eager"], required=True)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(json.dumps(memory_of(args.mode, args.layers)))


if __name__ == "__main__":
    main()
