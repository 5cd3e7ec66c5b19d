"""The GPU path, measured: a LLaVA-NeXT-Video with the real 7B dimensions (random weights, bf16, no download).

1. trace vs a plain SDPA forward (seconds, peak memory over the weights) at 8, 16 and 32 frames;
2. the Map the Flow sweep (the four `vql-to-ql` curves x every 9-layer window) on one sample: flowlens
   (clean run once, conditions resumed from it, batched) vs the paper's method (one eager forward with a
   dense additive mask per condition), with the largest difference of their numbers;
3. `trace` throughput (samples/s) over 64 samples into a run file.

    python -m benchmarks.gpu            # on a GPU: 7B dimensions, bf16 -> benchmarks/results/gpu.json
    python -m benchmarks.gpu --small    # anywhere: a small model, 2/4/8/16 frames -> gpu_small_<device>.json

Peak memory is `torch.cuda.max_memory_allocated` on CUDA; on CPU it is the growth of the resident set,
sampled every millisecond (coarser).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Size:
    """Model and workload dimensions of one benchmark size."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    frames: tuple[int, ...]
    sweep_frames: int
    window: int
    batch_size: int
    throughput_samples: int
    dtype: torch.dtype
    image: int = 336  # frame side in pixels (patch 14): 336 gives 144 tokens per frame, as the 7B model


# LLaVA-NeXT-Video-7B: Vicuna-7B language model, CLIP ViT-L/14 at 336 px (144 tokens per frame after 2x2 pooling)
REAL_7B = Size(4096, 11008, 32, 32, 32064, 1024, 4096, 24, 16, (8, 16, 32), 8, 9, 16, 64, torch.bfloat16)
SMALL = Size(256, 688, 4, 4, 32064, 64, 128, 2, 2, (2, 4, 8, 16), 2, 1, 8, 4, torch.float32)


def build_model(size: Size, device: str) -> Any:
    """A random-weight LLaVA-NeXT-Video of `size`, built directly on `device` in `size.dtype` (nothing saved)."""
    from transformers import CLIPVisionConfig, LlamaConfig

    from flowlens.models.base import VideoLM
    from flowlens.models.llava_next_video import (
        VICUNA_TEMPLATE,
        LlavaNextVideoAdapter,
        llava_next_video_components,
    )
    from flowlens.models.tiny_tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(
        ["<image>", "<video>"],
        VICUNA_TEMPLATE,
        named_tokens={"image_token": "<image>", "video_token": "<video>"},
        add_bos=True,
    )
    text = LlamaConfig(
        vocab_size=max(size.vocab, len(tokenizer)),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=32768,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_intermediate,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.image,
        patch_size=14,
        projection_dim=768,
    )
    config, processor = llava_next_video_components(tokenizer, text, vision, vision_feature_layer=-2)
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(size.dtype)
    try:
        with torch.device(device), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = LlavaNextVideoAdapter.model_class()(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    adapter = LlavaNextVideoAdapter(model, processor)
    return VideoLM(
        model, processor, adapter, name=f"bench-llava-next-video-{size.layers}L-{size.hidden}d", revision=None
    )


def bench_sample(seed: int = 0, frames: int = 32) -> Any:
    from flowlens.data.sample import Sample

    video = np.random.default_rng(seed).integers(0, 256, (frames, 112, 112, 3), dtype=np.uint8)
    options = ["red ball", "blue box", "green star", "yellow cone"]
    return Sample(f"bench{seed:03d}", video, "Which object appeared first?", options, "ABCD"[seed % 4])


# ------------------------------------------------------------------ memory
def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


@contextmanager
def peak_memory(device: str, into: dict) -> Any:
    """`into["peak_mib"]`: peak memory over what was allocated before the block (CUDA) or RSS growth (CPU)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        yield
        torch.cuda.synchronize()
        into["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        return
    before = _rss_mib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join()
        into["peak_mib"] = max(peak[0], _rss_mib()) - before


CPU_SECONDS: list[float] = []  # process CPU seconds of the last `timed` call (robust on a shared CPU)


def timed(device: str, fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(min seconds, peak MiB of one call, last result) of `fn` after one warm-up call; the least process
    CPU time of the timed calls goes to `CPU_SECONDS[-1]` (wall time on a loaded CPU is mostly waiting)."""
    out = fn()
    times, cpu = [], []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    CPU_SECONDS.append(min(cpu))
    memory: dict = {}
    with peak_memory(device, memory):
        out = fn()
    return min(times), memory["peak_mib"], out


# ------------------------------------------------------------------ 1. trace vs SDPA
def bench_trace_vs_sdpa(lm: Any, size: Size, device: str, repeats: int) -> list[dict]:
    from benchmarks.trace_speed import forward

    rows = []
    for frames in size.frames:
        inputs, layout = lm.prepare(bench_sample(0, frames), frames=frames)
        row: dict[str, Any] = {"frames": frames, "tokens": layout.seq_len}
        for mode in ("sdpa", "trace"):
            call = (lambda m, i, lo: lambda: forward(m, lm, i, lo))(mode, inputs, layout)
            seconds, peak, _ = timed(device, call, repeats)
            row[f"{mode}_s"], row[f"{mode}_peak_mib"] = seconds, peak
            row[f"{mode}_cpu_s"] = CPU_SECONDS[-1]
        row["time_ratio"] = row["trace_s"] / row["sdpa_s"]
        row["cpu_time_ratio"] = row["trace_cpu_s"] / row["sdpa_cpu_s"]
        row["memory_ratio"] = row["trace_peak_mib"] / max(row["sdpa_peak_mib"], 1e-9)
        print(
            f"{frames:>3} frames {layout.seq_len:>6} tokens: sdpa {row['sdpa_s']:.3f} s ({row['sdpa_cpu_s']:.2f} cpu-s) "
            f"{row['sdpa_peak_mib']:.0f} MiB, trace {row['trace_s']:.3f} s ({row['trace_cpu_s']:.2f} cpu-s) "
            f"{row['trace_peak_mib']:.0f} MiB ({row['time_ratio']:.2f}x time, {row['cpu_time_ratio']:.2f}x cpu time, "
            f"{row['memory_ratio']:.2f}x memory)",
            flush=True,
        )
        rows.append(row)
    return rows


# ------------------------------------------------------------------ 2. the sweep vs the paper's method
def paper_logits(lm: Any, inputs: Any, layout: Any, knockout: Any, device: str) -> torch.Tensor:
    """The paper's method: one full eager forward with a dense (1, 1, T, T) additive mask per condition."""
    from transformers import AttentionInterface

    from flowlens.compat import language_attention_implementation
    from flowlens.engine.masks import allowed_matrix, blocked_matrix

    t = layout.seq_len
    allowed = torch.ones(t, t, dtype=torch.bool).tril_()
    if knockout is not None:
        allowed = allowed_matrix(blocked_matrix(layout, knockout.blocks))
    mask = torch.zeros(t, t, dtype=torch.float32).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    mask = mask.to(device)[None, None]
    layers = set(knockout.layers) if knockout is not None else set()
    causal = torch.zeros(t, t, dtype=torch.float32, device=device).masked_fill_(
        ~torch.ones(t, t, dtype=torch.bool, device=device).tril_(), torch.finfo(torch.float32).min
    )[None, None]

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        m = mask if module.layer_idx in layers else causal
        scores = torch.matmul(query, key.transpose(2, 3)).float() * scaling + m
        probs = torch.softmax(scores, dim=-1).to(value.dtype)
        return torch.matmul(probs, value).transpose(1, 2).contiguous(), None

    AttentionInterface.register("flowlens_bench_paper", attention)
    with torch.no_grad(), language_attention_implementation(lm.model, "flowlens_bench_paper"):
        return lm.model(**inputs, use_cache=False, logits_to_keep=1).logits[0, -1].float()


def bench_sweep(lm: Any, size: Size, device: str) -> dict:
    from flowlens.analyses.knockout import SweepOptions, conditions_for, run_conditions
    from flowlens.engine.resume import CleanRun
    from flowlens.engine.spec import PRESETS

    inputs, layout = lm.prepare(bench_sample(1, size.sweep_frames), frames=size.sweep_frames)
    knockouts = [
        c.knockout
        for c in conditions_for(PRESETS["vql-to-ql"], layout.n_layers, SweepOptions(window=size.window))
    ]

    def ours() -> torch.Tensor:
        with torch.no_grad():
            clean = CleanRun(lm, inputs, layout)
            return torch.stack(run_conditions(clean, layout, knockouts, size.batch_size)).float()

    def paper() -> torch.Tensor:
        paper_logits(lm, inputs, layout, None, device)  # the clean forward the paper compares against
        return torch.stack([paper_logits(lm, inputs, layout, k, device) for k in knockouts])

    ours_s, ours_mib, a = timed(device, ours, 1)
    ours_cpu = CPU_SECONDS[-1]
    paper_s, paper_mib, b = timed(device, paper, 1)
    paper_cpu = CPU_SECONDS[-1]
    ids = layout.option_token_ids
    pa, pb = torch.softmax(a, -1)[:, ids], torch.softmax(b, -1)[:, ids]
    row = {
        "frames": size.sweep_frames,
        "tokens": layout.seq_len,
        "conditions": len(knockouts),
        "window": size.window,
        "batch_size": size.batch_size,
        "flowlens_s": ours_s,
        "paper_method_s": paper_s,
        "speedup": paper_s / ours_s,
        "flowlens_cpu_s": ours_cpu,
        "paper_method_cpu_s": paper_cpu,
        "cpu_time_speedup": paper_cpu / ours_cpu,
        "flowlens_peak_mib": ours_mib,
        "paper_method_peak_mib": paper_mib,
        "max_abs_logit_diff": float((a - b).abs().max()),
        "max_abs_option_prob_diff": float((pa - pb).abs().max()),
        "same_argmax_letters": bool(torch.equal(pa.argmax(-1), pb.argmax(-1))),
    }
    print(
        f"sweep: {len(knockouts)} conditions, {layout.seq_len} tokens: flowlens {ours_s:.2f} s {ours_mib:.0f} MiB, "
        f"paper's method {paper_s:.2f} s {paper_mib:.0f} MiB, {row['speedup']:.1f}x; max |option p diff| "
        f"{row['max_abs_option_prob_diff']:.1e}",
        flush=True,
    )
    return row


# ------------------------------------------------------------------ 3. throughput
def bench_throughput(lm: Any, size: Size) -> dict:
    frames = size.frames[0]
    samples = [bench_sample(i, frames) for i in range(size.throughput_samples)]
    lm.trace(
        samples[:1], out=Path(tempfile.mkdtemp()), frames=frames, report=False, progress=False
    )  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = lm.trace(samples, out=Path(tmp), frames=frames, report=False, progress=False)
        seconds = time.perf_counter() - start
        done = len(run.samples)
        run.close()
    row = {"samples": done, "frames": frames, "seconds": seconds, "samples_per_s": done / seconds}
    print(
        f"trace throughput: {done} samples of {frames} frames in {seconds:.1f} s = {row['samples_per_s']:.2f}/s"
    )
    return row


def run(
    small: bool,
    device: str | None = None,
    repeats: int = 3,
    out: Path | None = None,
    size: Size | None = None,
) -> dict:
    """Every measurement at one size (`size` overrides `small`); returns (and writes) the JSON."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = size or (SMALL if small else REAL_7B)
    start = time.perf_counter()
    lm = build_model(size, device)
    built = time.perf_counter() - start
    meta = {
        "device": torch.cuda.get_device_name(0)
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": str(size.dtype).removeprefix("torch."),
        "size": "7B" if size == REAL_7B else "small" if size == SMALL else "custom",
        "layers": size.layers,
        "hidden": size.hidden,
        "parameters": sum(p.numel() for p in lm.model.parameters()),
        "build_s": built,
        "threads": torch.get_num_threads(),
        "memory": "torch.cuda.max_memory_allocated over the weights"
        if device.startswith("cuda")
        else "resident-set growth (coarse on CPU: the allocator reuses freed memory)",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    result = {
        "meta": meta,
        "trace_vs_sdpa": bench_trace_vs_sdpa(lm, size, device, repeats),
        "sweep_vs_paper_method": bench_sweep(lm, size, device),
        "trace_throughput": bench_throughput(lm, size),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a small model at 2/4/8 frames (runs on a CPU)")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file (default under benchmarks/results/)"
    )
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = "gpu.json" if not args.small else f"gpu_small_{device.split(':')[0]}.json"
    run(args.small, device, args.repeats, args.out or RESULTS / name)


if __name__ == "__main__":
    main()
