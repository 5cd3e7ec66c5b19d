"""Effective-pathway runs: accuracy with only the rule table's edges kept, against the full model and a
random control that blocks as many edges per layer (Map the Flow Tab. 3)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from flowlens.analyses.knockout import SampleSweep, SweepOptions, sweep_sample
from flowlens.analyses.readout import answer_readout
from flowlens.analyses.runner import RunControl, run_analysis
from flowlens.analyses.trace import check_context
from flowlens.data.sample import Sample
from flowlens.engine.masks import CompiledKnockout
from flowlens.engine.pathways import RANDOM_CONTROLS, Rule, RuleTable, edge_counts, random_control
from flowlens.engine.resume import CleanRun
from flowlens.engine.spec import PRESETS, BlockSet, window
from flowlens.errors import FlowlensError, SampleError
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

RUN_FILE = "pathways.h5"
TABLE = "pathways"


@dataclass
class PathwayOptions:
    """Settings of a pathways run; both random controls always run, `random_control` names which is `random`."""

    frames: int = 8
    seed: int = 0  # of the random controls
    random_control: str = "uniform"  # the paper's: the same number of blocked pairs in every layer

    def __post_init__(self) -> None:
        if self.random_control not in RANDOM_CONTROLS:
            raise FlowlensError(
                f"unknown random control {self.random_control!r}; use one of {', '.join(RANDOM_CONTROLS)}"
            )

    def control_names(self) -> dict[str, str]:
        """Random-control mode -> condition name: the chosen one is `random`, the other `random_<mode>`."""
        return {
            mode: "random" if mode == self.random_control else f"random_{mode.replace('-', '_')}"
            for mode in RANDOM_CONTROLS
        }


@torch.no_grad()
def pathways_sample(
    lm: VideoLM, sample: Sample, rules: RuleTable | dict[str, RuleTable], options: PathwayOptions
) -> SampleSweep:
    """Full model, then each rule table's pathways and both random controls on one sample, as rows.

    With a dict of rule tables (e.g. one per `--auto` threshold) conditions are named
    `pathways@<key>`, `random@<key>` and `random_per_layer@<key>` (or `random_uniform@<key>`).
    """
    sample.validate(require_options=True)
    inputs, layout = lm.prepare(sample, frames=options.frames)
    check_context(lm, layout)
    clean = CleanRun(lm, inputs, layout)
    tables = {"": rules} if isinstance(rules, RuleTable) else rules
    named: list[tuple[str, Any, int]] = []
    _, total = edge_counts(layout, [])
    for key, table in tables.items():
        suffix = f"@{key}" if key else ""
        knockouts = table.knockouts(layout.n_layers)
        pathway = [CompiledKnockout.compile(k, layout, clean.logits.device) for k in knockouts]
        kept, _ = edge_counts(layout, knockouts)
        named.append((f"pathways{suffix}", pathway, kept))
        for mode, name in options.control_names().items():
            control = random_control(layout, knockouts, options.seed, mode)
            random_kept = total - sum(int((~c.allowed).tril().sum()) for c in control)
            named.append((f"{name}{suffix}", control, random_kept))
    logits = clean.run_from(0, [conditions for _, conditions, _ in named])
    rows: dict[str, list[Any]] = {
        k: []
        for k in (
            "condition",
            "kept_edges",
            "total_edges",
            "kept_fraction",
            "predicted",
            "correct",
            "predicted_letter",
            "correct_letter",
            "p_gt",
        )
    }
    runs = [("full", clean.logits, total)]
    runs += [(name, row, kept) for (name, _, kept), row in zip(named, logits, strict=True)]
    for condition, row_logits, kept_edges in runs:
        readout = answer_readout(row_logits, layout, lm.tokenizer)
        gt = layout.option_letters.index(layout.answer_letter) if layout.answer_letter else None
        rows["condition"].append(condition)
        rows["kept_edges"].append(kept_edges)
        rows["total_edges"].append(total)
        rows["kept_fraction"].append(kept_edges / total)
        rows["predicted"].append(readout.predicted)
        rows["correct"].append(bool(readout.correct))
        rows["predicted_letter"].append(readout.predicted_letter)
        rows["correct_letter"].append(bool(readout.correct_letter))
        rows["p_gt"].append(float(readout.probs[gt]) if gt is not None else float("nan"))
    return SampleSweep(
        str(sample.id),
        layout,
        answer_readout(clean.logits, layout, lm.tokenizer),
        rows,
        dict(sample.metadata),
    )


def pathways(
    lm: VideoLM,
    samples: Iterable[Sample],
    rules: RuleTable | dict[str, RuleTable],
    out: str | Path | None = None,
    options: PathwayOptions | None = None,
    **control: Any,
) -> Run:
    """Run the rule table(s) on every sample into `out/pathways.h5`; `run.table("pathways")` has the rows.

    `control`: `RunControl` fields (`resume`, `overwrite`, `report`, `progress`, `config_extra`).
    """
    options = options or PathwayOptions()
    tables = rules if isinstance(rules, dict) else {"": rules}
    settings = {**asdict(options), "rules": {key: table.to_dict() for key, table in tables.items()}}

    def write_one(writer: RunWriter, sample: Sample) -> None:
        result = pathways_sample(lm, sample, rules, options)
        writer.write_rows(result.sample_id, result.layout, result.clean, TABLE, result.rows, result.metadata)

    return run_analysis(lm, samples, "pathways", RUN_FILE, settings, write_one, RunControl(out, **control))


# ------------------------------------------------------------------ --auto: rules from a knockout sweep
AUTO_THRESHOLDS = (1.0, 2.0, 5.0, 10.0, 20.0)


def derive_rules(
    summary: Any, block_set: BlockSet, n_layers: int, window_size: int, threshold: float
) -> RuleTable:
    """Keep each curve's edges only in the windows whose knockout lowers p(prediction) by more than `threshold` %.

    `summary` is `summarize_knockout` of a sweep of `block_set` (mean % change over baseline-correct samples).
    """
    rules = []
    for curve, blocks in block_set.curves:
        rows = summary[(summary["curve"] == curve) & (summary["mean_rel_pred"] < -threshold)]
        keep = sorted({x for centre in rows["layer"] for x in window(int(centre), n_layers, window_size)})
        rules += [Rule(block, tuple(keep)) for block in blocks]
    return RuleTable(f"auto-{threshold:g}", tuple(rules))


def auto_pathways(
    lm: VideoLM,
    samples: Iterable[Sample],
    out: str | Path | None = None,
    thresholds: tuple[float, ...] = AUTO_THRESHOLDS,
    sweep_options: SweepOptions | None = None,
    options: PathwayOptions | None = None,
    **control: Any,
) -> Run:
    """Sweep cross-frame + video/question/last knockouts, derive one rule table per threshold, run them all.

    The pathways table then gives accuracy against the fraction of edges kept, with the random control at
    the same fractions (`condition` = `pathways@<threshold>` / `random@<threshold>`).
    """
    from tqdm.auto import tqdm

    from flowlens.store.knockout_summary import summarize_knockout

    sweep_options = sweep_options or SweepOptions()
    options = options or PathwayOptions(frames=sweep_options.frames)
    samples = list(samples)
    block_set = BlockSet("auto", PRESETS["cross-frame"].curves + PRESETS["vql-to-ql"].curves)
    frames = []
    for sample in tqdm(samples, desc="sweep", unit="sample", disable=not control.get("progress", True)):
        try:
            rows = sweep_sample(lm, sample, block_set, sweep_options).rows
            frames.append(pd.DataFrame({**rows, "sample": sample.id}))
        except (SampleError, FlowlensError):
            continue  # recorded as failed by the pathways run below
    if not frames:
        raise FlowlensError("no sample could be swept, so no rule table can be derived")
    summary = summarize_knockout(pd.concat(frames, ignore_index=True))
    tables = {
        f"{t:g}": derive_rules(summary, block_set, lm.n_layers, sweep_options.window, t) for t in thresholds
    }
    extra = {"auto": True, "sweep": asdict(sweep_options), **control.pop("config_extra", {})}
    return pathways(lm, samples, tables, out, options, config_extra=extra, **control)
