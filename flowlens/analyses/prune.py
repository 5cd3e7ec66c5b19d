"""Token pruning (`flowlens prune`): trace once, score offline, select, re-run in mask or drop mode, measure
beside the controls (random x seeds, uniform grid, no-video floor, all-tokens ceiling). docs/pruning.md.

`prune.h5` holds one row table `prune` per sample (one row per condition, each with its full spec) and
the derived table `prune_summary` (accuracy, relative accuracy, agreement, KL, Δ gold log-prob, AUC per
curve and budget). The resolved spec is stored in the run's settings (and its identity).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from flowlens.analyses import lens_tables as lt
from flowlens.analyses.options import all_settings, option, positive, results_settings
from flowlens.analyses.registry import Analysis, register_analysis
from flowlens.analyses.runner import RunControl, run_analysis
from flowlens.data.sample import Sample
from flowlens.errors import FlowlensError
from flowlens.models.prompt import PromptTemplate
from flowlens.pruning.run import PruneRunOptions, missing_in_trace, mrope, prune_sample
from flowlens.pruning.spec import PRESETS, PruneSpec, load_spec
from flowlens.pruning.summary import summarize
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run
from flowlens.store.tables import register_table

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

NAME = "prune"
TABLE = "prune"
SUMMARY = "prune_summary"


@dataclass
class PruneOptions:
    """How `flowlens prune` runs a spec (the spec itself comes from --spec)."""

    frames: int = option(8, "frames sampled from each video (a run folder keeps its trace's frames)")
    batch_size: int = option(32, "keep-sets per re-run batch", affects_results=False)
    timing: bool = option(
        False, "also measure drop-mode prefill wall time and peak memory beside the unpruned prefill"
    )
    timing_repeats: int = option(3, "timed repeats per drop-mode keep-set (median; after one warm-up)")

    def __post_init__(self) -> None:
        for name in ("frames", "batch_size", "timing_repeats"):
            positive(name, getattr(self, name))

    def run_options(self) -> PruneRunOptions:
        return PruneRunOptions(self.frames, self.batch_size, self.timing, self.timing_repeats)


def prune(
    lm: VideoLM,
    samples: Iterable[Sample],
    spec: PruneSpec | str | dict[str, Any] = "fastv",
    out: str | Path | None = None,
    options: PruneOptions | None = None,
    trace: Run | None = None,
    **control: Any,
) -> Run:
    """Run a pruning spec (a preset name, YAML file, dict or `PruneSpec`) over `samples`; return the `Run`.

    `run.table("prune")`: one row per (sample, condition); `run.table("prune_summary")`: the pruning table.
    `trace`: a trace run of these samples whose stored arrays give the scores (no trace forward; its
    identity joins this run's). `control`: `RunControl` fields (`resume`, `overwrite`, `report`, ...).
    """
    options = options or PruneOptions()
    spec = load_spec(spec)
    spec.check(lm.n_layers, mrope(lm))
    resolved: dict[str, Any] = {"spec": spec.to_dict()}
    if trace is not None:
        check_trace(trace, spec, options)
        resolved["scores_from"] = {"trace": trace.config.get("identity", {})}
    run_options = options.run_options()

    def write_one(writer: RunWriter, sample: Sample) -> None:
        result = prune_sample(lm, sample, spec, run_options, trace)
        writer.write_rows(result.sample_id, result.layout, result.clean, TABLE, result.rows, result.metadata)

    return run_analysis(
        lm,
        samples,
        NAME,
        {**all_settings(options), **resolved},
        {**results_settings(options), **resolved},
        write_one,
        RunControl(out, **control),
    )


def check_trace(trace: Run, spec: PruneSpec, options: PruneOptions) -> None:
    """Refuse, before any work, a trace run that cannot give this spec's scores: none traced, other frames,
    or arrays the scorers read that it did not store (naming the trace flags that store them)."""
    if not trace.traced:
        raise FlowlensError(f"{trace.path} holds no traced sample to score from")
    frames = trace.config.get("settings", {}).get("frames")
    if frames is not None and int(frames) != options.frames:
        raise FlowlensError(f"{trace.path} was traced with {frames} frames; prune with --frames {frames}")
    missing = missing_in_trace(trace, spec)
    if missing:
        raise FlowlensError(
            f"{trace.path} lacks what the spec's scorers read: "
            + "; ".join(missing)
            + " (or run `flowlens prune` on the model with --dataset, which traces what it needs)"
        )


def prune_from_run(
    source: str | Path,
    spec: PruneSpec | str | dict[str, Any] = "fastv",
    out: str | Path | None = None,
    options: PruneOptions | None = None,
    lm: VideoLM | None = None,
    device: str | None = None,
    dtype: str | None = None,
    **control: Any,
) -> Run:
    """`flowlens prune RUN_DIR`: score from a trace run's stored arrays, re-run its samples, into
    `out/prune.h5` (default: beside the trace).

    The model (`lm`, else loaded from the run's config), the samples (the run's dataset selection, read
    again: the re-runs need the video) and the prompt template are the trace run's own.
    """
    src = lt.source_run(Path(source), skip=f"{NAME}.h5")
    try:
        frames = int(src.config.get("settings", {}).get("frames", 8))
        options = dataclasses.replace(options or PruneOptions(), frames=frames)
        lm = lm or lt.load_run_model(src, device, dtype)
        if src.config.get("template"):
            lm.template = PromptTemplate(**src.config["template"])
        samples = run_samples(src)
        control = {"dataset": dict(src.config.get("dataset", {})), **control}
        return prune(lm, samples, spec, out if out is not None else src.path.parent, options, src, **control)
    finally:
        src.close()


def run_samples(src: Run) -> Any:
    """The samples a run was made from, selected again from its recorded dataset settings."""
    from flowlens.data import load as load_dataset

    dataset = dict(src.config.get("dataset") or {})
    if not dataset.get("dataset"):
        raise FlowlensError(f"{src.path} does not record its dataset, so its samples cannot be read again")
    return load_dataset(
        dataset["dataset"],
        split=dataset.get("split"),
        seed=dataset.get("seed"),
        limit=dataset.get("limit"),
        data_dir=dataset.get("data_dir"),
        task=dataset.get("task"),
        columns=dataset.get("columns"),
    )


def stored_spec(run: Run) -> PruneSpec:
    """The spec a prune run ran (from its settings)."""
    return PruneSpec.from_dict(run.config["settings"]["spec"])


def prune_summary(run: Run) -> pd.DataFrame:
    """The pruning table of a run (see `flowlens.pruning.summary`)."""
    return summarize(run.table(TABLE), run.table("answers"))


register_table(SUMMARY, TABLE, prune_summary)


@register_analysis
class PruneAnalysis(Analysis):
    name = NAME
    help = "token pruning: scorers x debias x policies x budgets, mask or drop mode, beside controls"
    Options = PruneOptions

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--spec",
            default="fastv",
            help=f"a pruning spec: a preset ({', '.join(PRESETS)}) or a YAML file (default: fastv)",
        )

    def resolve(self, args: argparse.Namespace, options: PruneOptions) -> dict[str, Any]:
        return {
            "spec": load_spec(args.spec),
            "device": getattr(args, "device", None),
            "dtype": getattr(args, "dtype", None),
        }

    def check(self, lm: VideoLM, options: PruneOptions, extra: dict[str, Any]) -> list[str]:
        return extra["spec"].check(lm.n_layers, mrope(lm))

    def run(self, lm: VideoLM, samples: Any, options: PruneOptions, control: RunControl, **extra: Any) -> Run:
        return prune(lm, samples, extra["spec"], control.out, options, **control.kwargs())

    def from_run(self, source: Path, options: PruneOptions, control: RunControl, **extra: Any) -> Run:
        return prune_from_run(
            source,
            extra["spec"],
            control.out,
            options,
            None,
            extra.get("device"),
            extra.get("dtype"),
            **{k: v for k, v in control.kwargs().items() if k != "dataset"},
        )

    def summary(self, run: Run) -> list[str]:
        table = run.table(SUMMARY)
        if table.empty:
            return ["no pruning rows"]
        lines = []
        curves = table.drop_duplicates(["curve", "policy", "layer", "mode", "position_ids", "match"])
        for record in curves.to_dict("records"):
            where = f"K={record['layer']} {record['mode']}"
            if record["mode"] == "drop":
                where += f"/{record['position_ids']}"
            lines.append(f"{record['curve']:<40} {record['policy']:<12} {where:<18} AUC {record['auc']:.3f}")
        return lines


import flowlens.report.prune  # noqa: E402,F401  (registers the report section)
