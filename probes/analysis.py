"""`flowlens probe`: probes over a run folder's activations, or over a model and a dataset traced first.

Writes `<out>/probe.h5` (no samples: the run table `probes`, the config with `settings` and `identity`, the
source run's failures carried over) and `<out>/probe.html` (the accuracy-vs-layer figure).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowlens.analyses.derived import write_derived_run
from flowlens.analyses.registry import Analysis, register_analysis
from flowlens.analyses.runner import RunControl
from flowlens.errors import NothingToDoError, UsageError
from flowlens.store.run import Run, open_run, run_files
from probes import report  # noqa: F401 (registers the report section)
from probes.options import ProbeOptions
from probes.sweep import check_run, needed_activations, plan

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

NAME = "probe"


def source_run(folder: Path) -> Run:
    """The traced run of a folder: its one run file with traced samples (`trace.h5` when there are several)."""
    candidates = []
    for path in run_files(folder):
        if path.stem == NAME:
            continue
        with open_run(path) as run:
            if run.traced:
                candidates.append(path)
    if not candidates:
        names = ", ".join(p.name for p in run_files(folder)) or "none"
        raise UsageError(f"{folder} holds no run file with traced samples to probe (run files: {names})")
    if len(candidates) > 1:
        traces = [p for p in candidates if p.stem == "trace"]
        if len(traces) != 1:
            names = ", ".join(p.name for p in candidates)
            raise UsageError(f"{folder} holds several traced runs ({names}); keep one per folder")
        candidates = traces
    return open_run(candidates[0])


def write_probes(source: Run, options: ProbeOptions, control: RunControl, progress: bool = True) -> Run:
    """Probe `source` and write `<control.out>/probe.h5` (+ `probe.html` unless `control.report` is off)."""
    from flowlens.report.html import write_report
    from probes.sweep import probe_run

    check_run(source, options)  # missing activations: an error before any fitting
    folder = control.folder(NAME)
    table = probe_run(source, options, progress=progress)
    if table.empty:
        raise NothingToDoError(f"nothing probed in {source.path}")
    path = folder / f"{NAME}.h5"
    write_derived_run(
        NAME, source, options, path, {"probes": table}, resume=control.resume, overwrite=control.overwrite
    )
    run = open_run(path)
    if control.report:
        write_report(run, path.with_suffix(".html"))
    return run


@register_analysis
class ProbeAnalysis(Analysis):
    name = NAME
    help = "linear probes (per layer, split by sample, with a control task) on stored activations"
    Options = ProbeOptions

    def check(self, lm: VideoLM, options: ProbeOptions, extra: dict[str, Any]) -> list[str]:
        plan(options, lm.n_layers)  # a hook pattern that selects no layer of this model fails here
        return []

    def announce(self, lm: VideoLM, samples: Any, options: ProbeOptions) -> list[str]:
        specs = needed_activations(options, lm.n_layers)
        stored = f"storing {' '.join(specs)}" if specs else "no activations beyond the trace's own"
        return [f"probe: tracing {len(list(samples))} samples first ({stored})"]

    def run(self, lm: VideoLM, samples: Any, options: ProbeOptions, control: RunControl, **extra: Any) -> Run:
        from flowlens.analyses.trace import TraceOptions
        from flowlens.analyses.trace_run import trace

        folder = control.folder(NAME)
        trace_options = TraceOptions(
            frames=options.frames,
            activations=needed_activations(options, lm.n_layers),
            activations_dtype=options.activations_dtype,
        )
        traced = trace(lm, samples, folder, trace_options, **control.kwargs())
        if not traced.traced:
            return traced  # no sample succeeded: the trace's failures tell why (exit code 3)
        with traced:
            return write_probes(traced, options, RunControl(folder, **control.kwargs()), control.progress)

    def from_run(self, source: Path, options: ProbeOptions, control: RunControl, **extra: Any) -> Run:
        with source_run(source) as run:
            return write_probes(run, options, control, control.progress)

    def summary(self, run: Run) -> list[str]:
        if "probes" not in run.run_tables:
            return []
        table = run.table("probes")
        lines = []
        for target, rows in table.groupby("target", sort=False):
            best = rows.loc[rows["accuracy"].idxmax()]
            lines.append(
                f"{target}: best layer {int(best['layer'])} ({best['hook']} @ {best['group']}) accuracy "
                f"{best['accuracy']:.3f}, control {best['control_accuracy']:.3f}, selectivity "
                f"{best['selectivity']:+.3f}, majority {best['majority']:.3f} ({int(best['n_samples'])} samples)"
            )
        return lines

    def summary_json(self, run: Run) -> dict[str, Any]:
        table = run.table("probes") if "probes" in run.run_tables else None
        return {
            "summary": self.summary(run),
            "probes": [] if table is None else table.to_dict("records"),
        }
