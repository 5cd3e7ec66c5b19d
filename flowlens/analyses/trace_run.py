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
from flowlens.errors import FlowlensError, UsageError
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
    if options.max_gb is not None:
        storage_notice(lm, samples, options)  # refuses a run over the limit before any forward

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


def storage_notice(lm: VideoLM, samples: Any, options: TraceOptions) -> str:
    """What the run will store (from the first sample's layout); a FlowlensError when over `max_gb`."""
    from flowlens.engine.sizing import estimate_trace_size, human_bytes

    samples = list(samples)
    if not samples:
        return ""
    _, layout = lm.prepare(samples[0], frames=options.frames)
    per_sample = options.bytes_per_sample(layout)
    total = per_sample * len(samples)
    full = estimate_trace_size(layout).full_attention_fp16
    text = (
        f"tracing {len(samples)} samples of {layout.seq_len} tokens: ~{human_bytes(per_sample)} each, "
        f"~{human_bytes(total)} in all before compression (full attention maps would be {human_bytes(full)} each)"
    )
    if options.max_gb is not None and total > options.max_gb * 1e9:
        raise UsageError(
            f"{text}: more than --max-gb {options.max_gb:g} GB; store fewer activations or samples"
        )
    return text


@register_analysis
class TraceAnalysis(Analysis):
    name = "trace"
    help = "attention flow between frames and from video to text, into an HDF5 run file"
    Options = TraceOptions

    def check(self, lm: VideoLM, options: TraceOptions, extra: dict[str, Any]) -> list[str]:
        options.check(lm.n_layers)
        return []

    def announce(self, lm: VideoLM, samples: Any, options: TraceOptions) -> list[str]:
        try:
            return [storage_notice(lm, samples, options)]
        except UsageError:
            raise
        except FlowlensError:
            return []  # the first sample fails again inside the run, where its reason is recorded

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
