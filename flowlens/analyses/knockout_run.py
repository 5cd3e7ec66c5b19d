"""Knockout sweeps over many samples into `DIR/knockout.h5` (and `DIR/report.html`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowlens.analyses.knockout import SweepOptions, sweep_sample
from flowlens.analyses.runner import RunControl, run_analysis
from flowlens.data.sample import Sample
from flowlens.engine.spec import BlockSet, load_block_set
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

RUN_FILE = "knockout.h5"
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
    `control`: `RunControl` fields (`resume`, `overwrite`, `report`, `progress`, `config_extra`).
    """
    options = options or SweepOptions()
    block_set = load_block_set(block_set) if isinstance(block_set, str) else block_set
    settings = {**asdict(options), "block_set": block_set.to_dict()}

    def write_one(writer: RunWriter, sample: Sample) -> None:
        result = sweep_sample(lm, sample, block_set, options)
        writer.write_rows(result.sample_id, result.layout, result.clean, TABLE, result.rows, result.metadata)

    return run_analysis(lm, samples, "knockout", RUN_FILE, settings, write_one, RunControl(out, **control))
