"""`flowlens debias MODEL|RUN_DIR`: positional trends of token scorers, sinks, padding, and diagnostics.

Over a run folder's traced samples (or a model and a dataset traced first, with `--received-attention`),
no forward: writes `<out>/debias.h5` (no samples: the run tables of `debias_tables`, the config with
`settings` and `identity`, the source run's failures carried over) and `<out>/debias.html`. Definitions
and options: docs/debiasing.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowlens.analyses.derived import write_derived_run
from flowlens.analyses.options import option, positive
from flowlens.analyses.registry import Analysis, register_analysis
from flowlens.analyses.runner import RunControl
from flowlens.errors import FlowlensError
from flowlens.pruning.debias import SINK_SOURCES
from flowlens.pruning.sinks import PADDING_MODES
from flowlens.pruning.trend import AXES, FAMILIES, MODES
from flowlens.store.run import Run, open_run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

NAME = "debias"


@dataclass
class DebiasOptions:
    """What is fitted, applied and diagnosed; defaults follow intcomp (docs/debiasing.md keeps the table)."""

    scorer: list[str] = option(
        ["attn_last", "attn_question"],
        "registered scorers to fit (name or name:key=value,...; see flowlens.pruning.SCORERS)",
        metavar="SCORER",
    )
    scorer_layers: list[int] = option(
        [1], "layers of scorers that take one (FastV's K-1 = 1 for K = 2)", metavar="L"
    )
    axis: list[str] = option(list(AXES), "axes to fit trends along", metavar="AXIS")
    family: list[str] = option(list(FAMILIES), "trend families to fit", metavar="FAMILY")
    apply_axis: str = option("global_index", "axis of the trend applied for the diagnostics", choices=AXES)
    apply_family: str = option("exp", "family of the trend applied for the diagnostics", choices=FAMILIES)
    mode: str = option("divide", "apply as score / trend (intcomp) or score - trend", choices=MODES)
    bins: int = option(16, "nonparametric trend: position bins")
    smooth: float = option(1.0, "nonparametric trend: Gaussian smoothing width, in bins (0: none)")
    fit_on: int | None = option(
        None, "calibrate on the first N traced samples and diagnose the rest (default: all, in-sample)"
    )
    budgets: list[float] = option([0.5, 0.25, 0.15, 0.1], "fractions of video tokens kept", metavar="R")
    sink_source: str = option(
        "auto",
        "sink detection from received attention (received: all queries, needs --received-attention), the "
        "`last` row (last), or auto (received where stored)",
        choices=SINK_SOURCES,
    )
    sink_ratio: float = option(10.0, "sink: received attention >= this x the (layer, head) median")
    sink_share: float = option(0.5, "sink: an outlier in at least this share of (layer, head) pairs")
    norm_ratio: float = option(
        5.0, "sink: residual norm >= this x the median (layers stored with --video-layers)"
    )
    padding: str = option(
        "auto", "padding geometry: auto (the family's processor), none, letterbox", choices=PADDING_MODES
    )
    pad_threshold: float = option(0.5, "padding token: pad fraction above this (intcomp 0.5, PDrop 0.01)")
    mask_flagged: bool = option(False, "rank sink and padding tokens last in the debiased scores")
    frames: int = option(8, "frames per video when a model and a dataset are traced first")
    received_attention: bool = option(
        True, "model mode: trace received attention too (sink detection over all queries)"
    )

    def __post_init__(self) -> None:
        for name in ("bins", "frames", "fit_on"):
            positive(name, getattr(self, name))
        for name, values, allowed in (("axis", self.axis, AXES), ("family", self.family, FAMILIES)):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise FlowlensError(f"--{name} {' '.join(bad)}: use some of {', '.join(allowed)}")
        if not self.scorer:
            raise FlowlensError("--scorer: name at least one scorer")
        if not self.budgets or not all(0 < b <= 1 for b in self.budgets):
            raise FlowlensError(f"--budgets are fractions in (0, 1], got {self.budgets}")
        if self.smooth < 0 or self.sink_ratio <= 0 or self.norm_ratio <= 0 or not 0 < self.sink_share <= 1:
            raise FlowlensError("--smooth >= 0, --sink-ratio > 0, --norm-ratio > 0, 0 < --sink-share <= 1")


def write_debias(source: Run, options: DebiasOptions, control: RunControl) -> Run:
    """Fit and diagnose `source`; write `<control.out>/debias.h5` (+ `debias.html` unless report is off)."""
    from flowlens.analyses.debias_tables import debias_tables
    from flowlens.report.html import write_report

    tables = debias_tables(source, options)
    folder = control.folder(NAME)
    path = folder / f"{NAME}.h5"
    write_derived_run(
        NAME,
        source,
        options,
        path,
        tables,
        settings={"frames": source.config.get("settings", {}).get("frames")},
        resume=control.resume,
        overwrite=control.overwrite,
    )
    run = open_run(path)
    if control.report:
        write_report(run, path.with_suffix(".html"))
    return run


def debias_run(
    source: str | Path, out: str | Path | None = None, options: DebiasOptions | None = None, **control: Any
) -> Run:
    """`flowlens debias RUN_DIR` as a function: fits and diagnostics of a traced run (file or folder)."""
    from flowlens.analyses.lens_tables import source_run

    options = options or DebiasOptions()
    control_ = RunControl(
        out if out is not None else (Path(source) if Path(source).is_dir() else Path(source).parent),
        **control,
    )
    control_.check(f"{NAME}.h5")
    with source_run(Path(source), skip=f"{NAME}.h5") as run:
        return write_debias(run, options, control_)


@register_analysis
class DebiasAnalysis(Analysis):
    name = NAME
    help = "positional trends of token scorers (intcomp), sinks and padding, top-k diagnostics (no forward)"
    Options = DebiasOptions

    def resolve(self, args: Any, options: DebiasOptions) -> dict[str, Any]:
        from flowlens.analyses.debias_tables import parse_scorers

        parse_scorers(options.scorer, options.scorer_layers)  # an unknown scorer fails before any forward
        return {}

    def check(self, lm: VideoLM, options: DebiasOptions, extra: dict[str, Any]) -> list[str]:
        bad = [layer for layer in options.scorer_layers if not 0 <= layer < lm.n_layers]
        if bad:
            raise FlowlensError(f"--scorer-layers {bad}: the model has layers 0 to {lm.n_layers - 1}")
        return []

    def announce(self, lm: VideoLM, samples: Any, options: DebiasOptions) -> list[str]:
        return [
            f"debias: tracing {len(list(samples))} samples first, then fitting {', '.join(options.scorer)}"
        ]

    def run(
        self, lm: VideoLM, samples: Any, options: DebiasOptions, control: RunControl, **extra: Any
    ) -> Run:
        from flowlens.analyses.trace import TraceOptions
        from flowlens.analyses.trace_run import trace

        folder = control.folder(NAME)
        trace_options = TraceOptions(frames=options.frames, received_attention=options.received_attention)
        traced = trace(lm, samples, folder, trace_options, **control.kwargs())
        if not traced.traced:
            return traced  # no sample succeeded: the trace's failures tell why (exit code 3)
        with traced:
            return write_debias(traced, options, RunControl(folder, **control.kwargs()))

    def from_run(self, source: Path, options: DebiasOptions, control: RunControl, **extra: Any) -> Run:
        from flowlens.analyses.lens_tables import source_run

        with source_run(source, skip=f"{NAME}.h5") as run:
            return write_debias(run, options, control)

    def summary(self, run: Run) -> list[str]:
        from flowlens.report.debias import summary_lines

        return summary_lines(run)

    def summary_json(self, run: Run) -> dict[str, Any]:
        from flowlens.report.debias import summary_json

        return summary_json(run)


def _register_views() -> None:
    from flowlens.report.sections import register_section

    def build(name: str):
        def section(run: Run):
            from flowlens.report import debias as report

            return getattr(report, name)(run)

        return section

    for order, name in enumerate(["trend_section", "histogram_section", "agreement_section"]):
        register_section(f"debias-{name}", build(name), order=70 + order)


_register_views()
