"""Knockout sweeps over many samples into `DIR/knockout.h5` (and `DIR/knockout.html`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowlens.analyses.knockout import SweepOptions, sweep_sample
from flowlens.analyses.options import all_settings, results_settings
from flowlens.analyses.registry import Analysis, register_analysis
from flowlens.analyses.runner import RunControl, run_analysis
from flowlens.data.sample import Sample
from flowlens.engine.spec import PRESETS, BlockSet, load_block_set
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

TABLE = "knockout"


def knockout(
    lm: VideoLM,
    samples: Iterable[Sample],
    block_set: BlockSet | str = "map-the-flow",
    out: str | Path | None = None,
    options: SweepOptions | None = None,
    **control: Any,
) -> Run:
    """Sweep every curve of `block_set` over every layer window, per sample; return the opened `Run`.

    `run.table("knockout")` has one row per (sample, curve, centre layer); `summarize_knockout` gives the
    mean % change over baseline-correct samples with bootstrap CIs and the knockout accuracy.
    `control`: `RunControl` fields (`resume`, `overwrite`, `report`, `progress`, `dataset`).
    """
    options = options or SweepOptions()
    block_set = load_block_set(block_set) if isinstance(block_set, str) else block_set
    options.check(lm.n_layers)
    spec = {"block_set": block_set.to_dict()}

    def write_one(writer: RunWriter, sample: Sample) -> None:
        result = sweep_sample(lm, sample, block_set, options)
        writer.write_rows(result.sample_id, result.layout, result.clean, TABLE, result.rows, result.metadata)

    return run_analysis(
        lm,
        samples,
        KnockoutAnalysis.name,
        {**all_settings(options), **spec},
        {**results_settings(options), **spec},
        write_one,
        RunControl(out, **control),
    )


@register_analysis
class KnockoutAnalysis(Analysis):
    name = "knockout"
    help = "attention-knockout sweeps (Map the Flow) over layer windows"
    Options = SweepOptions

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--preset",
            default="map-the-flow",
            help=f"a block set: {', '.join(PRESETS)}, or a YAML file (default: map-the-flow)",
        )

    def resolve(self, args: argparse.Namespace, options: SweepOptions) -> dict[str, Any]:
        return {"block_set": load_block_set(args.preset)}

    def check(self, lm: VideoLM, options: SweepOptions, extra: dict[str, Any]) -> list[str]:
        return options.check(lm.n_layers)

    def run(self, lm: VideoLM, samples: Any, options: SweepOptions, control: RunControl, **extra: Any) -> Run:
        return knockout(lm, samples, extra["block_set"], control.out, options, **control.kwargs())

    def summary(self, run: Run) -> list[str]:
        from flowlens.store.knockout_summary import summarize_knockout

        summary = summarize_knockout(run.table("knockout"))
        scored = summary.dropna(subset=["mean_rel_pred"])
        if scored.empty:
            return ["no sample was answered correctly by the clean model: % changes are averaged over those"]
        lines = []
        for curve, rows in scored.groupby("curve", sort=False):
            low = rows.loc[rows["mean_rel_pred"].idxmin()]
            if low.mean_rel_pred < 0:
                text = f"largest drop {low.mean_rel_pred:7.1f}% at centre layer {int(low.layer)}"
            else:
                text = f"no drop (smallest change {low.mean_rel_pred:+.1f}% at centre layer {int(low.layer)})"
            lines.append(f"{curve:<28} {text}")
        return lines
