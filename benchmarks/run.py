"""`make bench`: run every benchmark and write its JSON under benchmarks/results/."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from benchmarks.activations_speed import bench_activations
from benchmarks.knockout_speed import bench_canary_cost, bench_knockout_speed
from benchmarks.lens_speed import bench_lens_speed
from benchmarks.patch_speed import bench_patch_speed
from benchmarks.prune_speed import bench_prune_drop, bench_prune_sweep
from benchmarks.trace_speed import bench_trace_speed

RESULTS = Path(__file__).parent / "results"


def bench_tiny_forward(repeats: int = 5) -> dict:
    """Wall time of one forward with 8 frames for every family's tiny model (issue: < 2 s on CPU)."""
    import flowlens
    from flowlens.data.probe import probe_sample

    rows = {}
    for family in flowlens.supported_families():
        lm = flowlens.load(f"tiny:{family}")
        inputs, layout = lm.prepare(probe_sample(), frames=8)
        lm.forward(inputs)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            lm.forward(inputs)
            times.append(time.perf_counter() - start)
        prep = time.perf_counter()
        lm.prepare(probe_sample(), frames=8)
        rows[family] = {
            "seq_len": layout.seq_len,
            "video_tokens": layout.n_video,
            "forward_s_median": sorted(times)[len(times) // 2],
            "forward_s_max": max(times),
            "prepare_s": time.perf_counter() - prep,
            "parameters": sum(p.numel() for p in lm.model.parameters()),
        }
        print(
            f"{family:<18} seq {layout.seq_len:>4}  forward {rows[family]['forward_s_median'] * 1000:7.1f} ms"
        )
    return rows


def main() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    results = {
        "tiny_forward.json": {"meta": meta, "tiny_forward_8_frames": bench_tiny_forward()},
        "trace_speed.json": {"meta": meta, "trace_vs_sdpa_vs_eager": bench_trace_speed(layers=8, repeats=3)},
        "knockout_speed.json": {"meta": meta, "vql_to_ql_sweep_32_layers": bench_knockout_speed(layers=32)},
        "activations_speed.json": {"meta": meta, "resid_post_at_video_8_layers": bench_activations()},
        "canary_cost.json": {
            "meta": meta,
            "cross_frame_and_vql_to_ql_32_layers": bench_canary_cost(repeats=1),
        },
        "lens_speed.json": {"meta": meta, "lens_run_dir_64_toy_samples": bench_lens_speed()},
        "prune_speed.json": {
            "meta": meta,
            "mask_sweep_6_scorers_4_budgets_32_toy_samples": bench_prune_sweep(),
            "drop_fastv_25_percent_4k_tokens": bench_prune_drop(),
        },
        "patch_speed.json": {"meta": meta, "resid_post_4_layers_x_8_frames_toy": bench_patch_speed()},
    }
    for name, result in results.items():
        path = RESULTS / name
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
