"""Token-importance scorers: `score(name, context, **params) -> float[V]`, one value per video feature token.

Scorers read what a trace stored (no extra forward where the trace has what they need): a scorer names the
stored quantities it `needs`, and when a run lacks one the error says which trace option stores it. Add a
scorer with the decorator; it then appears in `flowlens prune --scorer` and in `SCORERS`:

    @register_scorer("my_score", needs=("last_to_video",), help="...")
    def my_score(context: ScoreContext, layer: int = 1) -> np.ndarray: ...

Scores are over `layout["video_features"]` (the rows of `layout.video_cells`), higher = more important.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flowlens.engine.capture import RECEIVED_QUERIES, ROLLOUT_QUERIES, query_positions
from flowlens.errors import FlowlensError

if TYPE_CHECKING:
    from flowlens.models.layout import TokenLayout
    from flowlens.store.run import Run

# What each stored quantity is and how a trace stores it (the hint a missing-data error gives).
EMBEDDINGS = ("blocks.0.hook_resid_pre", "video_features")  # the LLM-input embeddings of the video tokens
STORED = {
    "last_to_video": "every trace (the `last` row over video tokens, per layer and head)",
    "question_to_video": "every trace (question rows over video tokens, head mean)",
    "embeddings": "a trace with `--activations 'blocks.0.hook_resid_pre@video_features'` (the LLM-input "
    "embeddings of the video tokens; `flowlens prune` stores them itself when a scorer needs them)",
    "received_attention": "a trace with `--received-attention` (received_attention: L x H x 3 x V, summed over "
    "all, text and question queries)",
    "rollout": "a trace with `--rollout` (rollout: L x 4 x V, rollout rows of last, question, text, all)",
    "value_norm": "a trace with `--value-norms` (value_norm: L x V, L1 norms of the video tokens' value vectors)",
    "pixel_novelty": "a trace with `--pixel-novelty` (pixel_novelty: V, mean absolute RGB change of each video "
    "token's block since the previous frame group; `flowlens prune` stores it itself when a scorer needs it)",
}


@dataclass
class ScoreContext:
    """One traced sample as scorers see it: its layout and lazy access to its stored arrays, from a run
    file (`run`), an in-memory trace (`trace`, a `SampleTrace`) and/or arrays given directly (`arrays`)."""

    run: Run | None
    sample: str
    cache: dict[str, Any] = field(default_factory=dict)
    trace: Any = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @cached_property
    def layout(self) -> TokenLayout:
        if self.trace is not None:
            return self.trace.layout
        if self.run is None:
            raise FlowlensError("a ScoreContext needs a run or a trace")
        return self.run.layout(self.sample)

    @property
    def n_video(self) -> int:
        return self.layout.n_video

    def has(self, name: str) -> bool:
        """Whether the sample holds stored quantity `name` (without reading it)."""
        try:
            self.array(name)
        except FlowlensError:
            return False
        return True

    def array(self, name: str) -> np.ndarray:
        """A stored per-sample array (`last_to_video`, ...), read once; a FlowlensError naming how a trace
        stores it when the sample lacks it."""
        if name in self.arrays:
            return self.arrays[name]
        if name not in self.cache:
            value = getattr(self.trace, name, None) if self.trace is not None else None
            if value is None and self.run is not None:
                try:
                    value = self.run.array(self.sample, name)
                except (KeyError, FlowlensError):
                    value = None
            if value is None:
                raise FlowlensError(
                    f"sample {self.sample!r} has no stored {name!r}; it comes from "
                    f"{STORED.get(name, 'a trace option that stores it')}"
                )
            self.cache[name] = np.asarray(value)
        return self.cache[name]

    def activations(self, hook: str, group: str) -> np.ndarray:
        """This sample's stored rows of `hook` at `group` (see `flowlens.hooks`), float32."""
        key = f"{hook}@{group}"
        if key in self.arrays:
            return self.arrays[key]
        if key not in self.cache:
            value = None
            if self.trace is not None:
                value = (self.trace.activations or {}).get(hook, {}).get(group)
            if (
                value is None
                and self.run is not None
                and (hook, group) in self.run.activation_names(self.sample)
            ):
                value = self.run.activations(hook, group, samples=[self.sample]).values
            if value is None:
                raise FlowlensError(
                    f"sample {self.sample!r} has no stored activations {key}; trace with `--activations '{key}'`"
                )
            self.cache[key] = np.asarray(value, dtype=np.float32)
        return self.cache[key]


@dataclass(frozen=True)
class Scorer:
    name: str
    function: Callable[..., np.ndarray]
    needs: tuple[str, ...]
    help: str

    def parameters(self) -> dict[str, Any]:
        """The scorer's parameters and their defaults (what a spec may set)."""
        signature = inspect.signature(self.function)
        return {p.name: p.default for p in list(signature.parameters.values())[1:]}


SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str, needs: tuple[str, ...] = (), help: str = "") -> Callable:
    """Decorator: register `function(context, **params) -> float[V]` as scorer `name`."""

    def wrap(function: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        SCORERS[name] = Scorer(
            name, function, tuple(needs), help or (function.__doc__ or "").strip().splitlines()[0]
        )
        return function

    return wrap


def score(name: str, context: ScoreContext, **params: Any) -> np.ndarray:
    """The scores (float64, one per video feature token) of scorer `name` on one sample."""
    if name not in SCORERS:
        raise FlowlensError(f"unknown scorer {name!r}; scorers: {', '.join(sorted(SCORERS))}")
    scorer = SCORERS[name]
    unknown = set(params) - set(scorer.parameters())
    if unknown:
        raise FlowlensError(
            f"scorer {name!r} has no parameter {', '.join(sorted(unknown))}; it takes {scorer.parameters()}"
        )
    values = np.asarray(scorer.function(context, **params), dtype=np.float64)
    if values.shape != (context.n_video,):
        raise FlowlensError(f"scorer {name!r} returned shape {values.shape}, expected ({context.n_video},)")
    return values


def _layer(context: ScoreContext, layer: int) -> int:
    n = context.layout.n_layers
    if not 0 <= layer < n:
        raise FlowlensError(f"scorer layer {layer} is outside the model's {n} layers (0 to {n - 1})")
    return layer


@register_scorer("attn_last", needs=("last_to_video",))
def attn_last(context: ScoreContext, layer: int = 1) -> np.ndarray:
    """Head-mean attention of the `last` query on each video token at `layer` (FastV's code: layer K-1)."""
    return context.array("last_to_video")[_layer(context, layer)].mean(axis=0)


@register_scorer("attn_question", needs=("question_to_video",))
def attn_question(context: ScoreContext, layer: int = 1) -> np.ndarray:
    """Sum over question tokens of their head-mean attention on each video token at `layer` (HiMAP-style)."""
    return context.array("question_to_video")[_layer(context, layer)].sum(axis=0)


@register_scorer("random")
def random_scores(context: ScoreContext, seed: int = 0) -> np.ndarray:
    """Seeded random scores (a control); the seed mixes with the sample id, so samples differ."""
    key = np.frombuffer(context.sample.encode(), dtype=np.uint8).astype(np.int64).tolist()
    return np.random.default_rng([seed, *key]).random(context.n_video)


@register_scorer("uniform_grid")
def uniform_grid(context: ScoreContext, stride: int = 2) -> np.ndarray:
    """A uniform control: cells on a `stride` grid first, spread evenly over frames (the k-th grid cell of
    every frame before the (k+1)-th of any), then the other cells the same way."""
    cells = context.layout.video_cells
    on_grid = (cells[:, 1] % stride == 0) & (cells[:, 2] % stride == 0)
    rank = np.zeros(context.n_video)
    for frame in np.unique(cells[:, 0]):
        for kind in (True, False):
            members = np.flatnonzero((cells[:, 0] == frame) & (on_grid == kind))
            rank[members] = np.arange(members.size)
    n_frames = max(1, int(cells[:, 0].max()) + 1)
    return on_grid * 2.0 * context.n_video * n_frames - (rank * n_frames + cells[:, 0])


QUERY_SETS = RECEIVED_QUERIES  # all, text (every position after the video span), question


def visible_queries(layout: TokenLayout, queries: str) -> np.ndarray:
    """(V,) how many queries of the set can attend each video token under causal masking (q >= j)."""
    positions = np.sort(query_positions(layout, queries))
    video = np.asarray(layout["video_features"])
    return positions.size - np.searchsorted(positions, video, side="left")


@register_scorer("attn_received", needs=("question_to_video", "received_attention"))
def attn_received(
    context: ScoreContext, layer: int = 1, queries: str = "question", normalise: bool = False
) -> np.ndarray:
    """Attention each video token receives from a query set at `layer` (head mean): the mean over the set's
    queries, or with `normalise` the sum divided by the number of them that can see the token (FastV's
    attention efficiency)."""
    if queries not in QUERY_SETS:
        raise FlowlensError(f"attn_received: queries is one of {', '.join(QUERY_SETS)}, got {queries!r}")
    layout = context.layout
    layer = _layer(context, layer)
    if queries == "question" and not context.has("received_attention"):
        total = context.array("question_to_video")[layer].sum(axis=0)
    else:
        total = context.array("received_attention")[layer].mean(axis=0)[QUERY_SETS.index(queries)]
    if normalise:
        return total / np.maximum(visible_queries(layout, queries), 1)
    return total / max(1, query_positions(layout, queries).size)


@register_scorer("rollout", needs=("rollout",))
def rollout(context: ScoreContext, layer: int = -1, rows: str = "last") -> np.ndarray:
    """Attention rollout (Abnar & Zuidema): the video columns of the product of 0.5·Ā + 0.5·I (head mean)
    over layers 0..`layer` (-1: every layer), the row of `last` (or the mean row of `question`, `text`, `all`)."""
    if rows not in ROLLOUT_QUERIES:
        raise FlowlensError(f"rollout: rows is one of {', '.join(ROLLOUT_QUERIES)}, got {rows!r}")
    values = context.array("rollout")[_layer(context, layer % context.layout.n_layers)]
    return values[ROLLOUT_QUERIES.index(rows)] if values.ndim == 2 else values


@register_scorer("value_norm", needs=("value_norm",))
def value_norm(context: ScoreContext, layer: int = 1) -> np.ndarray:
    """L1 norm of each video token's value vector at `layer`, head mean (FlowCut's information density)."""
    values = context.array("value_norm")[_layer(context, layer)]
    return values.mean(axis=0) if values.ndim == 2 else values


def embeddings(context: ScoreContext) -> np.ndarray:
    """(V, D) float64 LLM-input embeddings of the video feature tokens."""
    return context.activations(*EMBEDDINGS).astype(np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


NOVELTY_MODES = {"feature": "embeddings", "pixels": "pixel_novelty"}  # mode -> the stored quantity it reads


@register_scorer("temporal_novelty", needs=("embeddings",))
def temporal_novelty(context: ScoreContext, mode: str = "feature") -> np.ndarray:
    """DTD: 1 - cosine between a token's LLM-input embedding and the same (row, col) cell of the previous
    frame; tokens of the first frame (and cells with no predecessor) score 2, the maximum, so are kept.
    Mode `pixels`: the stored `pixel_novelty`, the mean absolute RGB change in [0, 1] of the token's block
    of the frame since the previous frame group (group 0 and separators 1.0; `flowlens.pruning.pixels`)."""
    if mode not in NOVELTY_MODES:
        raise FlowlensError(
            f"temporal_novelty mode {mode!r}: use {' or '.join(repr(m) for m in NOVELTY_MODES)} (LLM-input "
            "embeddings or pixels)"
        )
    if mode == "pixels":
        return context.array("pixel_novelty").astype(np.float64)
    x = _unit(embeddings(context))
    cells = context.layout.video_cells
    index = {(int(f), int(r), int(c)): i for i, (f, r, c) in enumerate(cells)}
    out = np.full(len(cells), 2.0)
    for i, (f, r, c) in enumerate(cells):
        previous = index.get((int(f) - 1, int(r), int(c)))
        if r >= 0 and previous is not None:
            out[i] = 1.0 - float(x[i] @ x[previous])
    return out


TIE_DECIMALS = 9  # DivPrune distances are compared at this precision (float64 products agree far below it)


def maxmin_order(features: np.ndarray) -> np.ndarray:
    """DivPrune's greedy max-min order over cosine distance: first the token farthest from its nearest
    neighbour, then repeatedly the token whose minimum distance to those chosen is largest (ties: earlier).

    Distances are rounded to `TIE_DECIMALS` places, so float rounding (which differs between matrix-product
    kernels) never decides between tokens at the same distance, e.g. identical background cells.
    """
    x = torch.from_numpy(_unit(np.asarray(features, dtype=np.float64)))
    n = x.shape[0]
    # the product runs in torch, not numpy: OpenBLAS's worker threads keep spinning after a threaded GEMM
    # and took the cores from the next re-run (a 2-core 32-sample sweep ran 2.3x instead of 5.3x faster)
    distance = np.round((1.0 - x @ x.T).numpy(), TIE_DECIMALS)
    np.fill_diagonal(distance, np.inf)
    nearest = distance.min(axis=1) if n > 1 else np.zeros(n)
    order = [int(np.argmax(nearest))]
    np.fill_diagonal(distance, 0.0)
    closest = distance[order[0]].copy()
    chosen = np.zeros(n, dtype=bool)
    chosen[order[0]] = True
    for _ in range(n - 1):
        candidate = np.where(chosen, -np.inf, closest)
        pick = int(np.argmax(candidate))
        order.append(pick)
        chosen[pick] = True
        closest = np.minimum(closest, distance[pick])
    return np.asarray(order)


@register_scorer("divprune", needs=("embeddings",))
def divprune(context: ScoreContext) -> np.ndarray:
    """DivPrune: scores from the greedy max-min diversity order of the LLM-input embeddings (cosine), so the
    top k are exactly DivPrune's k picks."""
    order = maxmin_order(embeddings(context))
    out = np.empty(order.size)
    out[order] = np.arange(order.size, 0, -1, dtype=np.float64)
    return out
