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

from flowlens.errors import FlowlensError

if TYPE_CHECKING:
    from flowlens.models.layout import TokenLayout
    from flowlens.store.run import Run

# What each stored quantity is and how a trace stores it (the hint a missing-data error gives).
STORED = {
    "last_to_video": "every trace (the `last` row over video tokens, per layer and head)",
    "question_to_video": "every trace (question rows over video tokens, head mean)",
}


@dataclass
class ScoreContext:
    """One traced sample of a run, as scorers see it: its layout and lazy access to stored arrays."""

    run: Run
    sample: str
    cache: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def layout(self) -> TokenLayout:
        return self.run.layout(self.sample)

    @property
    def n_video(self) -> int:
        return self.layout.n_video

    def array(self, name: str) -> np.ndarray:
        """A stored per-sample array (`last_to_video`, ...), read once."""
        if name not in self.cache:
            self.cache[name] = self.run.array(self.sample, name)
        return self.cache[name]

    def activations(self, hook: str, group: str) -> np.ndarray:
        """This sample's stored rows of `hook` at `group` (see `flowlens.hooks`)."""
        key = f"{hook}@{group}"
        if key not in self.cache:
            self.cache[key] = self.run.activations(hook, group, samples=[self.sample]).values
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
