"""One sample through the pruning protocol: trace once, score offline, select, re-run, measure.

`prune_sample` traces the sample (keeping what the spec's scorers need) or reads a trace run's stored
arrays, computes every (scorer, debias) score once, turns each condition of the spec (and its controls)
into a keep-set, re-runs all keep-sets from one `CleanRun` (mask mode on the kept rows, batched per K;
drop mode batched by kept length) and returns one row per condition with its full spec.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flowlens import compat
from flowlens.analyses.readout import answer_readout
from flowlens.analyses.trace import TraceOptions, check_context, trace_sample
from flowlens.engine.prune import measure_prefill, run_drop, run_mask
from flowlens.engine.resume import CleanRun
from flowlens.errors import FlowlensError
from flowlens.pruning.cost import ModelShape, cost_columns
from flowlens.pruning.policies import select
from flowlens.pruning.scorers import EMBEDDINGS, STORED, ScoreContext, score
from flowlens.pruning.spec import METHOD, Condition, PruneSpec, ScorerSpec, apply_debias

if TYPE_CHECKING:
    from flowlens.data.sample import Sample
    from flowlens.models.base import VideoLM
    from flowlens.models.layout import TokenLayout
    from flowlens.store.records import AnswerReadout
    from flowlens.store.run import Run


def scorer_needs(scorer: ScorerSpec) -> set[str]:
    """The stored quantities one scorer (with its parameters) reads."""
    from flowlens.pruning.scorers import NOVELTY_MODES, SCORERS

    if scorer.name == "attn_received":
        queries = dict(scorer.params).get("queries", "question")
        return {"question_to_video"} if queries == "question" else {"received_attention"}
    if scorer.name == "temporal_novelty":
        mode = dict(scorer.params).get("mode", "feature")
        return {NOVELTY_MODES[mode]} if mode in NOVELTY_MODES else set(SCORERS[scorer.name].needs)
    return set(SCORERS[scorer.name].needs)


def spec_needs(spec: PruneSpec) -> set[str]:
    """What the spec's scorers (and the controls) read, over every scorer."""
    return set().union(*(scorer_needs(s) for s in spec.scorers))


def trace_options(spec: PruneSpec, frames: int) -> TraceOptions:
    """The trace that stores what the spec's scorers read (and nothing they do not)."""
    needs = spec_needs(spec)
    return TraceOptions(
        frames=frames,
        activations=[f"{EMBEDDINGS[0]}@{EMBEDDINGS[1]}"] if "embeddings" in needs else [],
        activations_dtype="float32",
        received_attention="received_attention" in needs,
        rollout="rollout" in needs,
        value_norms="value_norm" in needs,
        pixel_novelty="pixel_novelty" in needs,
    )


def stored_layout(stored: Run, sample_id: str, now: TokenLayout) -> TokenLayout:
    """The layout `stored` traced the sample with; a FlowlensError when it has no trace of it or the model
    now lays it out (`now`) differently (other frames, template, processor), which would misplace scores."""
    if sample_id not in stored.traced:
        raise FlowlensError(f"sample {sample_id!r} has no complete trace in {stored.path}")
    layout = stored.layout(sample_id)
    same = layout.seq_len == now.seq_len and np.array_equal(
        np.asarray(layout["video_features"]), np.asarray(now["video_features"])
    )
    if not same or not np.array_equal(layout.video_cells, now.video_cells):
        raise FlowlensError(
            f"sample {sample_id!r}: the trace in {stored.path} laid it out as {layout.seq_len} tokens "
            f"({layout.n_video} video), the model now as {now.seq_len} ({now.n_video} video); trace and prune "
            "must use the same model, frames and prompt template"
        )
    return layout


def missing_in_trace(stored: Run, spec: PruneSpec) -> list[str]:
    """What the spec's scorers read that the trace run did not store (checked on its first traced sample)."""
    first = stored.traced[0]
    held = set(stored.arrays(first))
    missing = []
    for need in sorted(spec_needs(spec)):
        if need == "embeddings":
            if tuple(EMBEDDINGS) not in set(stored.activation_names(first)):
                missing.append(f"embeddings: {STORED['embeddings']}")
        elif need not in held:
            missing.append(f"{need}: {STORED.get(need, 'a trace option that stores it')}")
    return missing


@dataclass
class SamplePrune:
    """One sample's layout, clean read-out and pruning rows (column name -> values)."""

    sample_id: str
    layout: TokenLayout
    clean: AnswerReadout
    rows: dict[str, list[Any]]
    metadata: dict[str, Any]


def keep_sets(
    conditions: list[Condition], context: ScoreContext
) -> tuple[list[np.ndarray], dict[tuple, np.ndarray]]:
    """(bool keep mask over the video tokens per condition, {score key: scores}); scores computed once each."""
    frames = context.layout.video_cells[:, 0]
    n = context.n_video
    scores: dict[tuple, np.ndarray] = {}
    keeps: dict[Condition, np.ndarray] = {}
    out = []
    for condition in sorted(conditions, key=lambda c: c.match != ""):  # count-matched controls last
        if condition.role == "no_video":
            keep = np.zeros(n, dtype=bool)
        elif condition.role == "all_tokens":
            keep = np.ones(n, dtype=bool)
        else:
            key = condition.score_key
            if key not in scores:
                raw = score(condition.scorer.name, context, **dict(condition.scorer.params))
                # the scorer a run-level debias calibration (positional_trend, calibration auto|run) refits
                context.cache["scorer"] = {"name": condition.scorer.name, **dict(condition.scorer.params)}
                scores[key] = apply_debias(raw, condition.debias, context)
            budget = condition.budget
            if condition.match:
                method = next(
                    c
                    for c in conditions
                    if c.role == METHOD
                    and c.policy == "threshold"
                    and c.curve == condition.match
                    and (c.budget, c.layer, c.mode, c.position_ids)
                    == (budget, condition.layer, condition.mode, condition.position_ids)
                )
                budget = float(keeps[method].sum())
            keep = select(scores[key], condition.policy, budget, frames)
        keeps[condition] = keep
    for condition in conditions:
        out.append(keeps[condition])
    return out, scores


def _gold(layout: TokenLayout) -> int | None:
    if layout.answer_letter is None or layout.answer_letter not in layout.option_letters:
        return None
    return layout.option_token_ids[layout.option_letters.index(layout.answer_letter)]


def measure_rows(
    clean_logits: torch.Tensor, logits: list[torch.Tensor], layout: TokenLayout, tokenizer: Any
) -> dict[str, list[Any]]:
    """Per re-run: correct, top-1 agreement, KL(clean || pruned) over the vocabulary, Δ gold log-prob."""
    gold = _gold(layout)
    log_clean = torch.log_softmax(clean_logits.double(), -1)
    top = int(clean_logits.argmax())
    rows: dict[str, list[Any]] = defaultdict(list)
    for new in logits:
        log_new = torch.log_softmax(new.double(), -1)
        readout = answer_readout(new, layout, tokenizer)
        rows["answer"].append(readout.predicted)
        rows["correct"].append(bool(readout.correct))
        rows["agree"].append(int(new.argmax()) == top)
        rows["kl"].append(float((log_clean.exp() * (log_clean - log_new)).sum()))
        rows["gold_logprob"].append(float(log_new[gold]) if gold is not None else float("nan"))
        rows["delta_gold_logprob"].append(
            float(log_new[gold] - log_clean[gold]) if gold is not None else float("nan")
        )
    return rows


@dataclass
class PruneRunOptions:
    """How the re-runs run (none changes a number except `timing`, which adds measured columns)."""

    frames: int = 8
    batch_size: int = 32
    timing: bool = False
    timing_repeats: int = 3


@torch.no_grad()
def prune_sample(
    lm: VideoLM, sample: Sample, spec: PruneSpec, options: PruneRunOptions, stored: Run | None = None
) -> SamplePrune:
    """Every condition of `spec` (and its controls) on one sample, as rows (docs/pruning.md lists them).

    `stored`: a trace run holding this sample; its stored arrays give the scores (no trace forward), after
    checking the model lays the sample out exactly as the trace did.
    """
    sample.validate(require_options=True)
    inputs, prepared = lm.prepare(sample, frames=options.frames)
    check_context(lm, prepared)
    if stored is None:
        trace = trace_sample(lm, sample, trace_options(spec, options.frames), (inputs, prepared))
        layout, metadata = trace.layout, dict(trace.metadata)
        context = ScoreContext(None, str(sample.id), trace=trace)
    else:
        layout, metadata = stored_layout(stored, str(sample.id), prepared), stored.metadata(str(sample.id))
        context = ScoreContext(stored, str(sample.id))
    conditions = spec.conditions()
    keeps, _ = keep_sets(conditions, context)
    video = np.asarray(layout["video_features"])
    pruned = [tuple(int(p) for p in video[~keep]) for keep in keeps]
    clean = CleanRun(lm, inputs, layout)
    mask_index = [i for i, c in enumerate(conditions) if c.mode == "mask"]
    drop_index = [i for i, c in enumerate(conditions) if c.mode == "drop"]
    logits: list[torch.Tensor | None] = [None] * len(conditions)
    masked = run_mask(clean, [(conditions[i].layer, pruned[i]) for i in mask_index], options.batch_size)
    dropped = run_drop(
        clean,
        [(conditions[i].layer, pruned[i], conditions[i].position_ids) for i in drop_index],
        options.batch_size,
    )
    for i, row in zip(mask_index + drop_index, masked + dropped, strict=True):
        logits[i] = row
    rows = measure_rows(clean.logits, logits, layout, lm.tokenizer)  # type: ignore[arg-type]
    shape = ModelShape.of(lm.adapter.text_config)
    timed: dict[tuple, dict[str, float]] = {}
    for condition, keep, removed in zip(conditions, keeps, pruned, strict=True):
        spec_row = condition.to_dict()
        rows["role"].append(condition.role)
        rows["curve"].append(condition.curve)
        rows["scorer"].append("" if condition.scorer is None else condition.scorer.label)
        rows["debias"].append("" if condition.debias is None else condition.debias.label)
        for key in ("policy", "budget", "layer", "mode", "position_ids", "seed", "match"):
            rows[key].append(spec_row[key])
        rows["spec"].append(json.dumps({"spec": spec.name, **spec_row}, sort_keys=True))
        rows["n_video"].append(int(keep.size))
        rows["kept"].append(int(keep.sum()))
        rows["kept_frac"].append(float(keep.mean()) if keep.size else 1.0)
        cost = cost_columns(layout.seq_len, layout.seq_len - len(removed), condition.layer, shape)
        for key, value in cost.items():
            rows[key].append(value if condition.mode == "drop" else float("nan"))
        measured = {
            "prefill_s": np.nan,
            "prefill_s_unpruned": np.nan,
            "peak_bytes": np.nan,
            "peak_bytes_unpruned": np.nan,
        }
        if options.timing and condition.mode == "drop":
            key = (condition.layer, removed, condition.position_ids)
            if key not in timed:
                timed[key] = measure_prefill(
                    lm, inputs, condition.layer, removed, condition.position_ids, options.timing_repeats
                )
            measured = timed[key]
        for key, value in measured.items():
            rows[key].append(float(value))
    readout = answer_readout(clean.logits, layout, lm.tokenizer)
    return SamplePrune(str(sample.id), layout, readout, dict(rows), metadata)


def mrope(lm: VideoLM) -> bool:
    """Whether the model's language positions are multi-axis (M-RoPE), which refuses `reindex`."""
    return compat.uses_mrope(lm.adapter.text_config)
