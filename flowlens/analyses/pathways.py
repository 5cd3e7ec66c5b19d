"""Effective-pathway runs: accuracy with only the rule table's edges kept, against the full model and a
random control that blocks as many edges per layer (Map the Flow Tab. 3)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from flowlens.analyses.knockout import SampleSweep, SweepOptions, sweep_sample
from flowlens.analyses.options import all_settings, option, positive, results_settings
from flowlens.analyses.readout import answer_readout
from flowlens.analyses.registry import Analysis, register_analysis
from flowlens.analyses.runner import RunControl, run_analysis
from flowlens.analyses.trace import check_context
from flowlens.data.sample import Sample
from flowlens.engine.masks import CompiledKnockout
from flowlens.engine.pathways import RANDOM_CONTROLS, Rule, RuleTable, edge_counts, random_control
from flowlens.engine.resume import CleanRun
from flowlens.engine.spec import PRESETS, BlockSet, window
from flowlens.errors import FlowlensError, NothingToDoError, SampleError, UsageError
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

TABLE = "pathways"


@dataclass
class PathwayOptions:
    """Settings of a pathways run; both random controls always run, `random_control` names which is `random`."""

    frames: int = option(8, "frames sampled from each video")
    random_seed: int = option(0, "seed of the random-blocking controls")
    random_control: str = option(
        "uniform",
        "which control is reported as `random`: uniform (the paper's: int(r*N(N+1)/2) pairs in every layer) "
        "or per-layer (as many as the pathway blocks in each layer); the other runs too, as random_<name>",
        choices=RANDOM_CONTROLS,
    )

    def __post_init__(self) -> None:
        positive("frames", self.frames)
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
            control = random_control(layout, knockouts, options.random_seed, mode)
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

    `control`: `RunControl` fields (`resume`, `overwrite`, `report`, `progress`, `dataset`, `config_extra`).
    """
    options = options or PathwayOptions()
    tables = rules if isinstance(rules, dict) else {"": rules}
    for table in tables.values():
        table.check(lm.n_layers)
    spec = {"rules": {key: table.to_dict() for key, table in tables.items()}}

    def write_one(writer: RunWriter, sample: Sample) -> None:
        result = pathways_sample(lm, sample, rules, options)
        writer.write_rows(result.sample_id, result.layout, result.clean, TABLE, result.rows, result.metadata)

    return run_analysis(
        lm,
        samples,
        PathwaysAnalysis.name,
        {**all_settings(options), **spec},
        {**results_settings(options), **spec},
        write_one,
        RunControl(out, **control),
    )


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

    options = options or PathwayOptions(frames=sweep_options.frames if sweep_options else 8)
    sweep_options = sweep_options or SweepOptions(frames=options.frames)
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
        raise NothingToDoError("no sample could be swept, so no rule table can be derived")
    summary = summarize_knockout(pd.concat(frames, ignore_index=True))
    tables = {
        f"{t:g}": derive_rules(summary, block_set, lm.n_layers, sweep_options.window, t) for t in thresholds
    }
    extra = {"auto": True, "sweep": all_settings(sweep_options), **control.pop("config_extra", {})}
    return pathways(lm, samples, tables, out, options, config_extra=extra, **control)


@register_analysis
class PathwaysAnalysis(Analysis):
    name = "pathways"
    help = "effective pathways: keep attention edges only where they matter, against random controls"
    Options = PathwayOptions

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rules", default=None, help="a YAML rule table (see docs/knockout.md)")
        parser.add_argument(
            "--auto", action="store_true", help="derive rule tables from a knockout sweep of these samples"
        )
        parser.add_argument(
            "--thresholds",
            type=float,
            nargs="+",
            default=list(AUTO_THRESHOLDS),
            help="--auto: keep an edge group where its knockout drops p(prediction) by more than this %%",
        )
        parser.add_argument(
            "--window", type=int, default=9, help="--auto: knockout window of the sweep (default 9)"
        )

    def resolve(self, args: argparse.Namespace, options: PathwayOptions) -> dict[str, Any]:
        if bool(args.rules) == bool(args.auto):
            raise UsageError("give exactly one of --rules FILE.yaml or --auto")
        if args.auto:
            sweep = SweepOptions(window=args.window, frames=options.frames)
            return {"auto": True, "thresholds": tuple(args.thresholds), "sweep": sweep}
        return {"rules": RuleTable.load(args.rules)}

    def check(self, lm: VideoLM, options: PathwayOptions, extra: dict[str, Any]) -> list[str]:
        if extra.get("auto"):
            return extra["sweep"].check(lm.n_layers)
        extra["rules"].check(lm.n_layers)
        return []

    def run(
        self, lm: VideoLM, samples: Any, options: PathwayOptions, control: RunControl, **extra: Any
    ) -> Run:
        if extra.get("auto"):
            return auto_pathways(
                lm, samples, control.out, extra["thresholds"], extra["sweep"], options, **control.kwargs()
            )
        return pathways(lm, samples, extra["rules"], control.out, options, **control.kwargs())

    def summary(self, run: Run) -> list[str]:
        table = run.table("pathways")
        summary = table.groupby("condition", sort=False).agg(
            accuracy=("correct", "mean"), kept=("kept_fraction", "mean")
        )
        return [
            f"{condition:<24} accuracy {row.accuracy:6.3f}   edges kept {100 * row.kept:5.1f}%"
            for condition, row in summary.iterrows()
        ]
