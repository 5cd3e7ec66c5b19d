"""`trace` over many samples into `DIR/trace.h5` (and `DIR/report.html`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowlens.analyses.runner import RunControl, run_analysis
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
    **control: Any,
) -> Run:
    """Trace every sample (attention reductions, residual summaries, answers); return the opened `Run`.

    `control`: `RunControl` fields (`resume`, `overwrite`, `report`, `progress`, `config_extra`).
    """
    options = options or TraceOptions()

    def write_one(writer: RunWriter, sample: Sample) -> None:
        writer.write_sample(trace_sample(lm, sample, options))

    return run_analysis(
        lm, samples, "trace", RUN_FILE, asdict(options), write_one, RunControl(out, **control)
    )
