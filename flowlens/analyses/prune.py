"""Token pruning (`flowlens prune`): trace once, score offline, select, re-run in mask or drop mode, measure
beside the controls (random x seeds, uniform grid, no-video floor, all-tokens ceiling). docs/pruning.md.

`prune.h5` holds one row table `prune` per sample (one row per condition, each with its full spec) and
the derived table `prune_summary` (accuracy, relative accuracy, agreement, KL, Δ gold log-prob, AUC per
curve and budget). The resolved spec is stored in the run's settings (and its identity).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from flowlens.analyses.options import all_settings, option, positive, results_settings
from flowlens.analyses.registry import Analysis, register_analysis
from flowlens.analyses.runner import RunControl, run_analysis
from flowlens.data.sample import Sample
from flowlens.pruning.run import PruneRunOptions, mrope, prune_sample
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

    frames: int = option(8, "frames sampled from each video")
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
    **control: Any,
) -> Run:
    """Run a pruning spec (a preset name, YAML file, dict or `PruneSpec`) over `samples`; return the `Run`.

    `run.table("prune")`: one row per (sample, condition); `run.table("prune_summary")`: the pruning table.
    `control`: `RunControl` fields (`resume`, `overwrite`, `report`, `progress`, `dataset`).
    """
    options = options or PruneOptions()
    spec = load_spec(spec)
    spec.check(lm.n_layers, mrope(lm))
    resolved = {"spec": spec.to_dict()}
    run_options = options.run_options()

    def write_one(writer: RunWriter, sample: Sample) -> None:
        result = prune_sample(lm, sample, spec, run_options)
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
        return {"spec": load_spec(args.spec)}

    def check(self, lm: VideoLM, options: PruneOptions, extra: dict[str, Any]) -> list[str]:
        return extra["spec"].check(lm.n_layers, mrope(lm))

    def run(self, lm: VideoLM, samples: Any, options: PruneOptions, control: RunControl, **extra: Any) -> Run:
        return prune(lm, samples, extra["spec"], control.out, options, **control.kwargs())

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
