"""The tables of `flowlens debias`, computed from a traced run without a forward (docs/debiasing.md).

- `debias_fits`: one row per (scorer, axis, family, stage): lambda, amplification, R^2 and the fit (JSON);
  stage `raw` on the calibration samples, stage `debiased` = the applied fit's axis and family refitted to
  the debiased scores of the diagnosed samples (what is left of the bias).
- `debias_histograms`: share of the kept tokens at each position, per (scorer, stage, budget, axis).
- `debias_agreement`: mean over samples of Spearman and top-k Jaccard between two scorers, per stage, budget.
- `debias_flags`: share of sink and padding tokens among the kept ones (pooled over samples).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flowlens.errors import FlowlensError
from flowlens.pruning import diagnostics as dg
from flowlens.pruning.debias import fit_key, sample_padding, sample_scores, sample_sinks, scorer_label
from flowlens.pruning.sinks import mask_scores
from flowlens.pruning.trend import TrendFit, apply, fit_trend, position_means, token_positions

if TYPE_CHECKING:
    from flowlens.analyses.debias import DebiasOptions
    from flowlens.store.run import Run

HISTOGRAM_AXES = ("frame", "row", "col", "global_index")
STAGES = ("raw", "debiased")


@dataclass
class ScorerChoice:
    name: str
    params: dict[str, Any]

    @property
    def label(self) -> str:
        return scorer_label(self.name, self.params)


def parse_scorers(specs: list[str], layers: list[int]) -> list[ScorerChoice]:
    """`name` or `name:key=value,...` (values JSON), one per layer of `layers` for scorers with a `layer`."""
    from flowlens.pruning.scorers import SCORERS

    out: list[ScorerChoice] = []
    for spec in specs:
        name, _, rest = spec.partition(":")
        if name not in SCORERS:
            raise FlowlensError(f"unknown scorer {name!r}; scorers: {', '.join(sorted(SCORERS))}")
        params: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise FlowlensError(f"scorer {spec!r}: parameters are key=value, got {item!r}")
            try:
                params[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                params[key.strip()] = value.strip()
        accepted = SCORERS[name].parameters()
        unknown = set(params) - set(accepted)
        if unknown:
            raise FlowlensError(
                f"scorer {name!r} has no parameter {', '.join(sorted(unknown))}; it takes {accepted}"
            )
        if "layer" in accepted and "layer" not in params:
            out.extend(ScorerChoice(name, {**params, "layer": layer}) for layer in layers)
        else:
            out.append(ScorerChoice(name, params))
    return list({c.label: c for c in out}.values())


def split_samples(run: Run, fit_on: int | None) -> tuple[list[str], list[str]]:
    """(calibration, diagnosed) sample ids: the first `fit_on` and the rest, or every sample for both."""
    ids = list(run.traced)
    if not ids:
        raise FlowlensError(f"{run.path} holds no traced sample")
    if fit_on is None:
        return ids, ids
    if not 0 < fit_on < len(ids):
        raise FlowlensError(
            f"--fit-on {fit_on}: the run has {len(ids)} traced samples, keep some to diagnose"
        )
    return ids[:fit_on], ids[fit_on:]


def debias_tables(run: Run, options: DebiasOptions) -> dict[str, pd.DataFrame]:
    """Every table of a debias run over `run`'s traced samples."""
    scorers = parse_scorers(options.scorer, options.scorer_layers)
    calib, diagnosed = split_samples(run, options.fit_on)
    needed = sorted(set(calib) | set(diagnosed), key=list(run.traced).index)
    scores = {c.label: {s: sample_scores(run, s, c.name, c.params) for s in needed} for c in scorers}
    positions = {
        axis: {s: token_positions(run.layout(s), axis) for s in needed}
        for axis in {*options.axis, options.apply_axis, *HISTOGRAM_AXES}
    }
    fits, applied = [], {}
    for choice in scorers:
        key = fit_key(run, choice.name, choice.params, calib)
        for axis in options.axis:
            means, counts = position_means(
                [scores[choice.label][s] for s in calib], [positions[axis][s] for s in calib]
            )
            for family in options.family:
                fit = fit_trend(means, counts, family, axis, options.bins, options.smooth, key)
                fits.append(_fit_row(fit, "raw"))
        means, counts = position_means(
            [scores[choice.label][s] for s in calib], [positions[options.apply_axis][s] for s in calib]
        )
        applied[choice.label] = fit_trend(
            means, counts, options.apply_family, options.apply_axis, options.bins, options.smooth, key
        )

    flags = {
        s: sample_sinks(
            run, s, options.sink_source, options.sink_ratio, options.sink_share, options.norm_ratio
        )
        for s in diagnosed
    }
    pads = {s: sample_padding(run, s, options.padding) > options.pad_threshold for s in diagnosed}
    staged: dict[str, dict[str, dict[str, np.ndarray]]] = {"raw": {}, "debiased": {}}
    for choice in scorers:
        label, fit = choice.label, applied[choice.label]
        staged["raw"][label] = {s: scores[label][s] for s in diagnosed}
        debiased = {}
        for s in diagnosed:
            value = apply(scores[label][s], positions[options.apply_axis][s], fit, options.mode)
            if options.mask_flagged:
                value = mask_scores(value, flags[s][0] | pads[s])
            debiased[s] = value
        staged["debiased"][label] = debiased
        means, counts = position_means(
            list(debiased.values()), [positions[options.apply_axis][s] for s in diagnosed]
        )
        key = fit_key(run, choice.name, choice.params, diagnosed)
        after = fit_trend(
            means, counts, options.apply_family, options.apply_axis, options.bins, options.smooth, key
        )
        fits.append(_fit_row(after, "debiased"))

    histograms, agreement, flag_rows = [], [], []
    for stage in STAGES:
        for label, per_sample in staged[stage].items():
            for budget in options.budgets:
                keeps = {s: dg.topk_mask(v, budget) for s, v in per_sample.items()}
                for axis in HISTOGRAM_AXES:
                    pos = [positions[axis][s] for s in diagnosed]
                    n = max(int(p.max()) for p in pos) + 1
                    share = dg.position_histogram([keeps[s] for s in diagnosed], pos, n)
                    histograms += [
                        {
                            "scorer": label,
                            "stage": stage,
                            "budget": budget,
                            "axis": axis,
                            "position": i,
                            "share": float(v),
                        }
                        for i, v in enumerate(share)
                    ]
                kept = sum(int(k.sum()) for k in keeps.values())
                sink_kept = sum(int((keeps[s] & flags[s][0]).sum()) for s in diagnosed)
                pad_kept = sum(int((keeps[s] & pads[s]).sum()) for s in diagnosed)
                flag_rows.append(
                    {
                        "scorer": label,
                        "stage": stage,
                        "budget": budget,
                        "kept": kept,
                        "sink_share": sink_kept / kept if kept else float("nan"),
                        "pad_share": pad_kept / kept if kept else float("nan"),
                        "sinks_per_sample": float(np.mean([flags[s][0].sum() for s in diagnosed])),
                        "pad_per_sample": float(np.mean([pads[s].sum() for s in diagnosed])),
                        "sink_source": ",".join(sorted({flags[s][1] for s in diagnosed})),
                    }
                )
        for a, b in combinations(staged[stage], 2):
            rho = [dg.spearman(staged[stage][a][s], staged[stage][b][s]) for s in diagnosed]
            for budget in options.budgets:
                jac = [dg.topk_jaccard(staged[stage][a][s], staged[stage][b][s], budget) for s in diagnosed]
                agreement.append(
                    {
                        "scorer_a": a,
                        "scorer_b": b,
                        "stage": stage,
                        "budget": budget,
                        "spearman": float(np.nanmean(rho)) if not np.all(np.isnan(rho)) else float("nan"),
                        "jaccard": float(np.mean(jac)),
                        "n_samples": len(diagnosed),
                    }
                )
    return {
        "debias_fits": pd.DataFrame(fits),
        "debias_histograms": pd.DataFrame(histograms),
        "debias_agreement": pd.DataFrame(
            agreement, columns=["scorer_a", "scorer_b", "stage", "budget", "spearman", "jaccard", "n_samples"]
        ),
        "debias_flags": pd.DataFrame(flag_rows),
    }


def _fit_row(fit: TrendFit, stage: str) -> dict[str, Any]:
    key = fit.key
    return {
        "model": str(key.get("model")),
        "scorer": key["scorer"],
        "scorer_label": key["scorer_label"],
        "layer": int(key.get("layer", -1)),
        "frames": int(key.get("frames", -1)),
        "n_samples": int(key["n_samples"]),
        "stage": stage,
        "axis": fit.axis,
        "family": fit.family,
        "n_positions": fit.n_positions,
        "lam": fit.lam,
        "amplification": fit.amplification,
        "r2": fit.r2,
        "fit": fit.to_json(),
    }
