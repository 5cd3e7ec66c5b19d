"""`trace` over many samples into `DIR/trace.h5` (and `DIR/report.html`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowlens.analyses.runner import base_config, default_out_dir, run_over_samples
from flowlens.analyses.trace import TraceOptions, trace_sample
from flowlens.data.sample import Sample
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

RUN_FILE = "trace.h5"


def trace(
    lm: VideoLM,
    samples: Iterable[Sample],
    out: str | Path | None = None,
    options: TraceOptions | None = None,
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
    config_extra: dict[str, Any] | None = None,
) -> Run:
    """Trace every sample (attention reductions, residual summaries, answers); return the opened `Run`."""
    options = options or TraceOptions()
    config = {**base_config(lm, "trace"), **asdict(options), **(config_extra or {})}

    def write_one(writer: RunWriter, sample: Sample) -> None:
        writer.write_sample(trace_sample(lm, sample, options))

    out_dir = Path(out) if out is not None else default_out_dir("trace")
    return run_over_samples(
        lm, samples, out_dir / RUN_FILE, config, write_one, resume, overwrite, report, progress
    )
