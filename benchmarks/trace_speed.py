"""Trace cost at >= 4096 tokens: plain SDPA forward vs full flowlens trace vs eager output_attentions.

Each mode runs in its own process so peak memory (ru_maxrss growth over the forward) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

FRAMES = 28  # 144 tokens per frame (as LLaVA-NeXT-Video-7B) -> 4032 video tokens, ~4120 in all


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_mode(mode: str, layers: int, repeats: int) -> dict:
    from benchmarks.models import bench_llava_next_video
    from flowlens.data.sample import Sample
    from flowlens.engine.backend import active_handler, language_attention
    from flowlens.engine.capture import FlowCapture
    from flowlens.engine.residuals import ResidualCapture

    torch.set_num_threads(2)
    lm = bench_llava_next_video(layers)
    video = np.random.default_rng(0).integers(0, 256, (FRAMES, 96, 96, 3), dtype=np.uint8)
    sample = Sample(
        "bench", video, "Which object appeared first?", ["red ball", "blue box", "green star"], "B"
    )
    inputs, layout = lm.prepare(sample, frames=FRAMES)
    cfg = lm.adapter.text_config

    def forward() -> None:
        with torch.no_grad():
            if mode == "sdpa":
                lm.model(**inputs, logits_to_keep=1)
            elif mode == "trace":
                capture, residuals = FlowCapture(layout, lm.device), ResidualCapture(layout, lm.device)
                with (
                    language_attention(lm.model, cfg),
                    active_handler(capture, layout.n_layers),
                    residuals.attached(lm.adapter.language_layers()),
                ):
                    lm.model(**inputs, logits_to_keep=1)
                (
                    capture.segment_flow(),
                    capture.frame_flow(),
                    capture.last_to_video(),
                    capture.question_to_video(),
                )
                residuals.resid_last(), residuals.resid_frame_mean()
            else:
                previous = cfg._attn_implementation
                cfg._attn_implementation = "eager"
                try:
                    lm.model(**inputs, output_attentions=True, logits_to_keep=1)
                finally:
                    cfg._attn_implementation = previous

    before = _rss_mib()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "seq_len": layout.seq_len,
        "layers": layers,
        "seconds_min": min(times),
        "seconds_all": times,
        "peak_rss_growth_mib": peak - before,
        "rss_before_mib": before,
    }


def bench_trace_speed(layers: int = 8, repeats: int = 3) -> dict:
    """Run the three modes side by side (separate processes) and report ratios to SDPA."""
    rows = {}
    for mode in ("sdpa", "trace", "eager"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.trace_speed",
                "--mode",
                mode,
                "--layers",
                str(layers),
                "--repeats",
                str(repeats),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
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
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(json.dumps(run_mode(args.mode, args.layers, args.repeats)))


if __name__ == "__main__":
    main()
