"""`trace` over many samples into `DIR/trace.h5` (and `DIR/trace.html`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowlens.analyses.options import all_settings, results_settings
from flowlens.analyses.registry import Analysis, register_analysis
from flowlens.analyses.runner import RunControl, run_analysis
from flowlens.analyses.trace import TraceOptions, trace_sample
from flowlens.data.sample import Sample
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM


def trace(
    lm: VideoLM,
    samples: Iterable[Sample],
    out: str | Path | None = None,
    options: TraceOptions | None = None,
    **control: Any,
) -> Run:
    """Trace every sample (attention reductions, residual summaries, answers); return the opened `Run`.

    `control`: `RunControl` fields (`resume`, `overwrite`, `report`, `progress`, `dataset`).
    """
    options = options or TraceOptions()
    options.check(lm.n_layers)

    def write_one(writer: RunWriter, sample: Sample) -> None:
        writer.write_sample(trace_sample(lm, sample, options))

    return run_analysis(
        lm,
        samples,
        TraceAnalysis.name,
        all_settings(options),
        results_settings(options),
        write_one,
        RunControl(out, **control),
    )


@register_analysis
class TraceAnalysis(Analysis):
    name = "trace"
    help = "attention flow between frames and from video to text, into an HDF5 run file"
    Options = TraceOptions

    def check(self, lm: VideoLM, options: TraceOptions, extra: dict[str, Any]) -> list[str]:
        options.check(lm.n_layers)
        return []

    def run(self, lm: VideoLM, samples: Any, options: TraceOptions, control: RunControl, **extra: Any) -> Run:
        return trace(lm, samples, control.out, options, **control.kwargs())

    def summary(self, run: Run) -> list[str]:
        answers = run.table("answers")
        labelled = answers["correct"].dropna()
        if labelled.empty:
            return [f"accuracy: no labelled sample ({len(answers)} unlabelled)"]
        unlabelled = len(answers) - len(labelled)
        note = f" ({unlabelled} unlabelled left out)" if unlabelled else ""
        return [f"accuracy {labelled.astype(bool).mean():.3f} on {len(labelled)} labelled samples{note}"]
