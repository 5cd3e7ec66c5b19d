"""Cost of storing activations: a trace of one ~4,100-token sample with and without
`--activations 'blocks.*.hook_resid_post@video'` (time, and bytes on disk per sample)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

SPEC = "blocks.*.hook_resid_post@video"


def _write(sample_trace, path: Path) -> int:
    """Bytes one sample takes in a run file (the file with the sample minus the empty file)."""
    from flowlens.store.hdf5 import RunWriter

    config = {"analysis": "trace", "identity": {"analysis": "trace"}}
    with RunWriter(path, config, {"model": "bench"}, overwrite=True):
        pass
    empty = path.stat().st_size
    with RunWriter(path, config, {"model": "bench"}, overwrite=True) as writer:
        writer.write_sample(sample_trace)
    return path.stat().st_size - empty


def bench_activations(layers: int = 8, repeats: int = 3) -> dict:
    """Median seconds of trace_sample with and without stored video residuals (interleaved), and file sizes."""
    from benchmarks.trace_speed import FRAMES, prepare
    from flowlens.analyses.trace import TraceOptions, trace_sample
    from flowlens.data.sample import Sample

    lm, inputs, layout = prepare(layers)
    import numpy as np

    video = np.random.default_rng(0).integers(0, 256, (FRAMES, 96, 96, 3), dtype=np.uint8)
    sample = Sample(
        "bench", video, "Which object appeared first?", ["red ball", "blue box", "green star"], "B"
    )
    plain = TraceOptions(frames=FRAMES)
    stored = TraceOptions(frames=FRAMES, activations=[SPEC])
    times: dict[str, list[float]] = {"plain": [], "activations": []}
    traces = {}
    for name, options in (("plain", plain), ("activations", stored)):
        traces[name] = trace_sample(lm, sample, options)  # warm-up, and the traces to write
    for _ in range(repeats):
        for name, options in (("plain", plain), ("activations", stored)):
            start = time.perf_counter()
            trace_sample(lm, sample, options)
            times[name].append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {name: _write(trace, Path(tmp) / f"{name}.h5") for name, trace in traces.items()}
        start = time.perf_counter()
        _write(traces["activations"], Path(tmp) / "timed.h5")
        write_s = time.perf_counter() - start
    median = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    row = {
        "spec": SPEC,
        "layers": layers,
        "seq_len": layout.seq_len,
        "video_tokens": int(layout["video"].size),
        "d_model": layout.d_model,
        "trace_s": median["plain"],
        "trace_with_activations_s": median["activations"],
        "time_ratio": median["activations"] / median["plain"],
        "write_with_activations_s": write_s,
        "bytes_per_sample_plain": sizes["plain"],
        "bytes_per_sample_with_activations": sizes["activations"],
        "raw_activation_bytes": int(layers * layout["video"].size * layout.d_model * 2),
    }
    print(
        f"activations {SPEC}: trace {row['trace_s']:.2f} s -> {row['trace_with_activations_s']:.2f} s "
        f"(x{row['time_ratio']:.2f}); file {sizes['plain'] / 2**20:.1f} MiB -> "
        f"{sizes['activations'] / 2**20:.1f} MiB per sample (writing it: {write_s:.2f} s)"
    )
    return row


if __name__ == "__main__":
    import transformers

    transformers.logging.set_verbosity_error()
    bench_activations()
