"""Attention-knockout sweeps (Map the Flow §2): the clean run plus every (curve, layer window) per sample.

Each condition starts from the clean run's residual stream at its first layer, and conditions that
share a first layer run together as one batch -- the numbers are those of one full forward per
condition with an explicit mask (tested), at a fraction of the cost.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from flowlens.analyses.options import check_layers, option, positive
from flowlens.analyses.readout import answer_readout
from flowlens.analyses.trace import check_context
from flowlens.data.sample import Sample
from flowlens.engine.masks import CompiledKnockout
from flowlens.engine.resume import CleanRun
from flowlens.engine.spec import SCHEDULES, BlockSet, Knockout, schedule
from flowlens.errors import FlowlensError
from flowlens.store.records import AnswerReadout

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM
    from flowlens.models.layout import TokenLayout


@dataclass
class SweepOptions:
    """Layer schedule of a sweep: `style` window of `window` layers around each centre layer."""

    window: int = option(9, "layers per knockout window (9, as the paper)")
    style: str = option("window", "layer schedule around each centre layer", choices=tuple(SCHEDULES))
    centres: list[int] | None = option(None, "centre layers to sweep (0-based; default: every layer)")
    frames: int = option(8, "frames sampled from each video")
    batch_size: int = option(
        32,
        "knockout conditions per forward; each batch adds one clean canary row",
        affects_results=False,
    )

    def __post_init__(self) -> None:
        positive("window", self.window)
        positive("frames", self.frames)
        positive("batch_size", self.batch_size)
        if self.style not in SCHEDULES:
            raise FlowlensError(f"unknown layer schedule {self.style!r}; use one of {', '.join(SCHEDULES)}")
        if self.centres is not None:
            self.centres = sorted({int(x) for x in self.centres})

    def check(self, n_layers: int) -> list[str]:
        """Refuse centres outside the model; warn when every window covers the whole depth."""
        check_layers("centres", self.centres, n_layers)
        if self.style != "window":
            return []
        centres = self.centres if self.centres is not None else range(n_layers)
        if all(len(schedule(self.style, c, n_layers, self.window)) == n_layers for c in centres):
            return [
                f"--window {self.window} covers all {n_layers} layers at every centre: every curve is flat "
                f"(each centre blocks the same layers, computed once); use --window 1 to "
                f"{max(1, n_layers // 2)} on this model"
            ]
        return []


@dataclass
class Condition:
    curve: str
    centre: int
    knockout: Knockout


@dataclass
class SampleSweep:
    """One sample's clean read-out, layout and knockout rows (column name -> values)."""

    sample_id: str
    layout: TokenLayout
    clean: AnswerReadout
    rows: dict[str, list[Any]]
    metadata: dict[str, Any]


def conditions_for(block_set: BlockSet, n_layers: int, options: SweepOptions) -> list[Condition]:
    """Every (curve, centre layer) of a sweep; centres whose schedule is empty are skipped."""
    centres = options.centres if options.centres is not None else range(n_layers)
    out = []
    for curve, blocks in block_set.curves:
        for centre in centres:
            layers = schedule(options.style, centre, n_layers, options.window)
            if layers:
                out.append(Condition(curve, centre, Knockout(blocks, layers, name=curve)))
    return out


def run_conditions(
    clean: CleanRun, layout: TokenLayout, conditions: list[Knockout], batch_size: int
) -> list[torch.Tensor]:
    """Logits at `last` for each knockout, batched; identical knockouts are computed once.

    Conditions are grouped by their first changed position (the batch reuses the clean KV cache before
    it) and, within a group, sorted by first layer so each batch starts at the latest layer it can:
    a batch element whose knockout starts later than its batch simply runs clean layers until then.
    """
    first: dict[tuple, Knockout] = {}
    for k in conditions:
        first.setdefault((k.blocks, k.layers, k.heads), k)
    slot = {key: i for i, key in enumerate(first)}
    distinct = list(first.values())
    index = [slot[(k.blocks, k.layers, k.heads)] for k in conditions]
    compiled = [CompiledKnockout.compile(k, layout, clean.logits.device) for k in distinct]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ko in enumerate(compiled):
        groups[ko.first_changed_position].append(i)
    results: list[torch.Tensor | None] = [None] * len(distinct)
    for position, indices in sorted(groups.items()):
        indices.sort(key=lambda i: min(distinct[i].layers))
        for offset in range(0, len(indices), batch_size):
            chunk = indices[offset : offset + batch_size]
            start = min(distinct[chunk[0]].layers)
            logits = clean.run_from(start, [compiled[i] for i in chunk], position)
            for i, row in zip(chunk, logits, strict=True):
                results[i] = row
    return [results[i] for i in index]  # type: ignore[misc]


def _option_logit_diff(logits: torch.Tensor, ids: list[int], gt: int | None) -> float:
    """Logit of the true option minus the best other option's logit (NaN without a ground truth)."""
    if gt is None or len(ids) < 2:
        return float("nan")
    values = logits[ids]
    others = torch.cat([values[:gt], values[gt + 1 :]])
    return float(values[gt] - others.max())


@torch.no_grad()
def sweep_sample(lm: VideoLM, sample: Sample, block_set: BlockSet, options: SweepOptions) -> SampleSweep:
    """The clean run and every condition of `block_set` for one sample, as rows (docs/knockout.md lists them)."""
    sample.validate(require_options=True)
    inputs, layout = lm.prepare(sample, frames=options.frames)
    check_context(lm, layout)
    clean = CleanRun(lm, inputs, layout)
    readout = answer_readout(clean.logits, layout, lm.tokenizer)
    letters, ids = layout.option_letters, layout.option_token_ids
    pred_id = int(
        clean.logits.argmax()
    )  # the clean prediction over the whole vocabulary (the paper's answer_t)
    labelled = layout.answer_letter is not None
    gt = letters.index(layout.answer_letter) if labelled else None
    log_base = torch.log_softmax(clean.logits, -1)
    base = log_base.exp()
    conditions = conditions_for(block_set, layout.n_layers, options)
    logits = run_conditions(clean, layout, [c.knockout for c in conditions], options.batch_size)
    rows: dict[str, list[Any]] = defaultdict(list)
    for condition, new_logits in zip(conditions, logits, strict=True):
        log_new = torch.log_softmax(new_logits, -1)
        new = log_new.exp()
        new_readout = answer_readout(new_logits, layout, lm.tokenizer)
        p_base_pred, p_new_pred = float(base[pred_id]), float(new[pred_id])
        p_base_gt = float(base[ids[gt]]) if labelled else float("nan")
        p_new_gt = float(new[ids[gt]]) if labelled else float("nan")
        rows["curve"].append(condition.curve)
        rows["layer"].append(condition.centre)
        rows["layers"].append(",".join(map(str, condition.knockout.layers)))
        rows["p_base_pred"].append(p_base_pred)
        rows["p_new_pred"].append(p_new_pred)
        rows["rel_pred"].append(100.0 * (p_new_pred - p_base_pred) / p_base_pred)
        rows["p_base_gt"].append(p_base_gt)
        rows["p_new_gt"].append(p_new_gt)
        rows["rel_gt"].append(100.0 * (p_new_gt - p_base_gt) / p_base_gt if labelled else float("nan"))
        rows["labelled"].append(labelled)
        rows["base_answer"].append(readout.predicted)
        rows["base_correct"].append(bool(readout.correct))
        rows["new_answer"].append(new_readout.predicted)
        rows["new_correct"].append(bool(new_readout.correct))
        rows["new_answer_letter"].append(new_readout.predicted_letter)
        rows["new_correct_letter"].append(bool(new_readout.correct_letter))
        rows["kl"].append(float((base * (log_base - log_new)).sum()))
        rows["logit_diff_base"].append(_option_logit_diff(clean.logits, ids, gt))
        rows["logit_diff_new"].append(_option_logit_diff(new_logits, ids, gt))
    return SampleSweep(str(sample.id), layout, readout, dict(rows), dict(sample.metadata))
