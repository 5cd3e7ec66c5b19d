"""`flowlens report` on a 1,000-sample run: report sizes, build time, and open times in headless Chromium.

The run holds the toy's real layout (4 layers, 8 frame groups of 4 x 4 tokens) with random arrays and
96-pixel thumbnails (what `flowlens trace` stores by default); no model forward is timed. Timed: the whole
`flowlens report RUN` (the main report and one page per sample), then opening the main report (until every
figure has drawn), turning its answers table to page 2, and opening one sample page.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLES = 1000


def write_run(path: Path, samples: int) -> None:
    """A trace run of `samples` samples on the toy's layout: random flows, answers and thumbnails."""
    import flowlens
    from flowlens.data.probe import probe_sample
    from flowlens.store import RunWriter
    from flowlens.store.records import AnswerReadout, SampleTrace

    lm = flowlens.load("toy")
    layout = lm.prepare(probe_sample(), frames=8).layout
    rng = np.random.default_rng(0)
    n_seg, n_frames = len(layout.partition), layout.n_frames
    L, H, V, Q, D = (
        layout.n_layers,
        layout.n_heads,
        layout.n_video,
        int(layout["question"].size),
        layout.d_model,
    )
    identity = {"analysis": "trace", "model": "toy", "settings": {"frames": 8}}
    with RunWriter(path, {**identity, "identity": identity}, {"model": "toy"}) as writer:
        for i in range(samples):
            flow = rng.random((L, H, n_seg, n_seg), dtype=np.float32)
            flow /= flow.sum(-1, keepdims=True)
            frames = [layout.partition.index(g) for g in layout.frame_groups]
            letters = list(layout.option_letters) or ["A", "B", "C", "D"]
            probs = rng.dirichlet(np.ones(len(letters))).astype(np.float32)
            writer.write_sample(
                SampleTrace(
                    sample_id=f"sample-{i:05d}",
                    layout=layout,
                    segment_flow=flow,
                    frame_flow=np.ascontiguousarray(flow[:, :, frames][:, :, :, frames]),
                    last_to_video=rng.random((L, H, V), dtype=np.float32) / V,
                    question_to_video=rng.random((L, Q, V), dtype=np.float32) / V,
                    resid_last=np.zeros((L, D), np.float16),
                    resid_frame_mean=np.zeros((L, n_frames, D), np.float16),
                    answer=AnswerReadout(
                        letters, probs, letters[int(probs.argmax())], "A", letters[int(probs.argmax())] == "A"
                    ),
                    metadata={"task": "bench", "question": f"question {i}?", "options": ["a", "b", "c", "d"]},
                    thumbnails=clip(rng),
                )
            )


def clip(rng: np.random.Generator) -> np.ndarray:
    """8 frames of 96 x 96 like the synthetic dataset's: a flat background and a bright square that moves."""
    frames = np.empty((8, 96, 96, 3), dtype=np.uint8)
    frames[:] = rng.integers(40, 120, 3, dtype=np.uint8)
    y, x = rng.integers(0, 72, 2)
    colour = rng.integers(150, 256, 3, dtype=np.uint8)
    for t in range(8):
        frames[t, y : y + 24, (x + 3 * t) % 72 : (x + 3 * t) % 72 + 24] = colour
    return frames


def plotly_baseline(folder: Path) -> Path:
    """A page holding plotly.js (inlined) and one tiny plot: what any self-contained plotly page costs to open."""
    from plotly.offline import get_plotlyjs

    page = folder / "plotly_only.html"
    page.write_text(
        f"<!doctype html><html><head><script>{get_plotlyjs()}</script></head><body><div id='f'></div><script>"
        "window.flowlensFigures=['f'];Plotly.newPlot('f',[{y:[1,3,2]}]).then(()=>{window.flowlensDone=true;});"
        "</script></body></html>"
    )
    return page


def bench_report_size(samples: int = SAMPLES, opens: int = 3) -> dict:
    from flowlens.cli import main
    from flowlens.report.browser import browser, find_chromium, open_report

    with tempfile.TemporaryDirectory(prefix="flowlens-bench-report-") as tmp:
        folder = Path(tmp)
        write_run(folder / "trace.h5", samples)
        start, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()) as said:
            assert main(["report", str(folder)]) == 0
        build_s, build_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        report = folder / "trace.html"
        pages = folder / "trace_samples"
        result = {
            "samples": samples,
            "cli_said": said.getvalue().strip(),
            "build_s": round(build_s, 2),
            "build_cpu_s": round(build_cpu_s, 2),
            "report_mb": round(report.stat().st_size / 1e6, 2),
            "sample_pages": len(list(pages.glob("*.html"))),
            "sample_page_kb_median": round(
                statistics.median(p.stat().st_size for p in pages.glob("*.html")) / 1e3, 1
            ),
            "sample_pages_total_mb": round(sum(p.stat().st_size for p in pages.iterdir()) / 1e6, 1),
            "run_file_mb": round((folder / "trace.h5").stat().st_size / 1e6, 1),
        }
        if find_chromium() is None:
            result["open"] = "skipped: no Chromium"
            return result
        with browser() as context:
            times, page_times, errors = [], [], []
            for _ in range(opens):
                opened = open_report(context, report)
                times.append(opened.seconds)
                errors += opened.errors
                t = time.perf_counter()
                opened.page.click("#next")
                label = opened.page.inner_text("#page-label")
                page_times.append(time.perf_counter() - t)
                opened.page.close()
            sample = open_report(context, next(pages.glob("sample-00500.html")))
            baseline = [open_report(context, plotly_baseline(folder)).seconds for _ in range(opens)]
            result.update(
                {
                    "open_s_median": round(statistics.median(times), 2),
                    "open_s_all": [round(t, 2) for t in times],
                    "next_page_s_median": round(statistics.median(page_times), 3),
                    "page_2_label": label,
                    "sample_page_open_s": round(sample.seconds, 2),
                    "plotly_only_open_s_median": round(statistics.median(baseline), 2),
                    "js_errors": errors + sample.errors,
                }
            )
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(bench_report_size(), indent=2))
