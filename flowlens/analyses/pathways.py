"""Effective-pathway runs: accuracy with only the rule table's edges kept, against the full model and a
random control that blocks as many edges per layer (Map the Flow Tab. 3)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flowlens.analyses.knockout import SampleSweep
from flowlens.analyses.runner import base_config, default_out_dir, run_over_samples
from flowlens.analyses.trace import answer_readout, check_context
from flowlens.data.sample import Sample
from flowlens.engine.masks import CompiledKnockout
from flowlens.engine.pathways import RuleTable, edge_counts, random_control
from flowlens.engine.resume import CleanRun
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

RUN_FILE = "pathways.h5"
TABLE = "pathways"


@dataclass
class PathwayOptions:
    frames: int = 8
    seed: int = 0  # of the random control


@torch.no_grad()
def pathways_sample(lm: VideoLM, sample: Sample, rules: RuleTable, options: PathwayOptions) -> SampleSweep:
    """Full model, effective pathways and the random control on one sample, as rows."""
    sample.validate(require_options=True)
    inputs, layout = lm.prepare(sample, frames=options.frames)
    check_context(lm, layout)
    clean = CleanRun(lm, inputs, layout)
    knockouts = rules.knockouts(layout.n_layers)
    pathway = [CompiledKnockout.compile(k, layout, clean.logits.device) for k in knockouts]
    control = random_control(layout, knockouts, options.seed)
    kept, total = edge_counts(layout, knockouts)
    random_kept = total - sum(int((~c.allowed).tril().sum()) for c in control)
    logits = clean.run_from(0, [pathway, control])
    rows: dict[str, list[Any]] = {
        k: []
        for k in ("condition", "kept_edges", "total_edges", "kept_fraction", "predicted", "correct", "p_gt")
    }
    for condition, row_logits, kept_edges in (
        ("full", clean.logits, total),
        ("pathways", logits[0], kept),
        ("random", logits[1], random_kept),
    ):
        readout = answer_readout(row_logits, layout)
        gt = layout.option_letters.index(layout.answer_letter) if layout.answer_letter else None
        rows["condition"].append(condition)
        rows["kept_edges"].append(kept_edges)
        rows["total_edges"].append(total)
        rows["kept_fraction"].append(kept_edges / total)
        rows["predicted"].append(readout.predicted)
        rows["correct"].append(bool(readout.correct))
        rows["p_gt"].append(float(readout.probs[gt]) if gt is not None else float("nan"))
    return SampleSweep(
        str(sample.id), layout, answer_readout(clean.logits, layout), rows, dict(sample.metadata)
    )


def pathways(
    lm: VideoLM,
    samples: Iterable[Sample],
    rules: RuleTable,
    out: str | Path | None = None,
    options: PathwayOptions | None = None,
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
    config_extra: dict[str, Any] | None = None,
) -> Run:
    """Run the rule table on every sample into `out/pathways.h5`; `run.table("pathways")` has the rows."""
    options = options or PathwayOptions()
    config = {
        **base_config(lm, "pathways"),
        **asdict(options),
        "rules": rules.to_dict(),
        **(config_extra or {}),
    }

    def write_one(writer: RunWriter, sample: Sample) -> None:
        result = pathways_sample(lm, sample, rules, options)
        writer.write_rows(result.sample_id, result.layout, result.clean, TABLE, result.rows, result.metadata)

    out_dir = Path(out) if out is not None else default_out_dir("pathways")
    return run_over_samples(
        lm, samples, out_dir / RUN_FILE, config, write_one, resume, overwrite, report, progress
    )
