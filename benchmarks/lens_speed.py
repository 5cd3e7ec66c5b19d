"""`flowlens lens RUN_DIR` over 64 toy samples of an existing trace run: no model forward, seconds reported.

The trace (written here first, not timed) stores the fp32 states the lens reads: every layer's output at
`last`, and every layer's input and output at the video tokens for the video-token lens. Timed: the whole
CLI command (loading the toy for its head, reading the states, the lens, writing lens.h5 and the report),
once for the answer-emergence lens alone (`--no-video-lens`) and once with the video-token lens.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path

SAMPLES = 64


def bench_lens_speed(samples: int = SAMPLES) -> dict:
    import flowlens
    from flowlens.cli import main

    with tempfile.TemporaryDirectory(prefix="flowlens-bench-lens-") as tmp:
        folder = Path(tmp) / "trace"
        lm = flowlens.load("toy")
        data = flowlens.data.load("synthetic", split=f"test[:{samples}]")
        start = time.perf_counter()
        lm.trace(
            data,
            out=folder,
            activations=["blocks.*.hook_resid_post@last,video", "blocks.*.hook_resid_pre@video"],
            activations_dtype="float32",
            progress=False,
            report=False,
        )
        trace_s = time.perf_counter() - start
        rows = {"samples": samples, "trace_s_not_timed_part": trace_s}
        for name, flags in [("answer_lens", ["--no-video-lens"]), ("answer_and_video_lens", [])]:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                code = main(["lens", str(folder), "--overwrite", *flags])
            seconds = time.perf_counter() - start
            if code != 0:
                raise RuntimeError(f"flowlens lens {folder} {' '.join(flags)} exited {code}")
            rows[name] = {"seconds": seconds, "seconds_per_sample": seconds / samples}
            print(
                f"lens RUN_DIR {name:<22} {samples} samples  {seconds:6.2f} s  ({1000 * seconds / samples:.1f} ms/sample)"
            )
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(bench_lens_speed(), indent=2))
