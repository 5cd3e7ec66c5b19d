"""benchmarks/gpu.py runs end to end at a micro size on CPU, and its sweep matches the paper's method (issue 16)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu import REAL_7B, SMALL, run  # noqa: E402

MICRO = replace(
    SMALL,
    hidden=64,
    intermediate=128,
    layers=2,
    vision_hidden=32,
    vision_intermediate=64,
    frames=(2, 4),
    throughput_samples=1,
    image=56,
)


def test_the_7b_size_has_llava_next_video_7b_dimensions():
    assert (REAL_7B.hidden, REAL_7B.intermediate, REAL_7B.layers, REAL_7B.heads) == (4096, 11008, 32, 32)
    assert (REAL_7B.vision_hidden, REAL_7B.vision_layers, REAL_7B.image) == (1024, 24, 336)
    assert (
        REAL_7B.dtype == torch.bfloat16 and REAL_7B.frames == (8, 16, 32) and REAL_7B.throughput_samples == 64
    )


def test_gpu_benchmark_runs_small_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    result = run(small=True, device="cpu", repeats=1, out=out, size=MICRO)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = result["trace_vs_sdpa"]
    assert [r["frames"] for r in rows] == [2, 4] and rows[1]["tokens"] > rows[0]["tokens"]
    assert all(r["sdpa_s"] > 0 and r["trace_s"] > 0 for r in rows)
    sweep = result["sweep_vs_paper_method"]
    assert sweep["conditions"] == 4 * 2  # four vql-to-ql curves x two one-layer windows
    assert (
        sweep["max_abs_option_prob_diff"] < 1e-5 and sweep["same_argmax_letters"]
    )  # identical numbers (fp32)
    assert result["trace_throughput"]["samples"] == 1 and result["trace_throughput"]["samples_per_s"] > 0
