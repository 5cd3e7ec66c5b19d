"""Effective pathways (Map the Flow §8): keep each edge group only in the layers where it matters.

A rule table says, per edge group (a `Block`), the layers in which its edges are kept; everywhere
else they are blocked. Every layer's mask (the union of the blocks active there) runs in one
forward. Edges are counted as the paper does: kept causal (query, key) pairs summed over layers,
divided by L * N(N+1)/2. The random control blocks, in each layer, as many causal pairs as the
pathway does, drawn uniformly (seeded) among pairs whose both ends lie at or after the first video
token, so the system prompt is never hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowlens.engine.masks import CompiledKnockout, allowed_matrix, blocked_matrix
from flowlens.engine.spec import Block, Knockout, read_yaml
from flowlens.errors import FlowlensError
from flowlens.models.layout import TokenLayout


@dataclass(frozen=True)
class Rule:
    """Edges of `block` are kept only in `keep` layers (an empty `keep` blocks them everywhere)."""

    block: Block
    keep: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.block.label, "keep": _ranges(self.keep)}


@dataclass(frozen=True)
class RuleTable:
    name: str
    rules: tuple[Rule, ...]

    def knockouts(self, n_layers: int) -> list[Knockout]:
        """One knockout per rule: its block in every layer outside `keep`."""
        self.check(n_layers)
        out = []
        for rule in self.rules:
            blocked = [x for x in range(n_layers) if x not in set(rule.keep)]
            if blocked:
                out.append(Knockout((rule.block,), blocked, name=rule.block.label))
        return out

    def check(self, n_layers: int) -> None:
        """Refuse rules that keep layers a model of `n_layers` layers does not have (written for a deeper one)."""
        deepest = max((x for rule in self.rules for x in rule.keep), default=-1)
        if deepest >= n_layers:
            raise FlowlensError(
                f"rule table {self.name!r} keeps edges up to layer {deepest}, but the model has {n_layers} "
                f"layers (0 to {n_layers - 1}); write the rules for this model's depth"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuleTable:
        if not isinstance(data, dict):
            raise FlowlensError(
                f"a rule table is a mapping with `name` and `rules`, got {type(data).__name__}"
            )
        rules = data.get("rules")
        if not isinstance(rules, list) or not rules:
            raise FlowlensError(
                "a rule table needs `rules`: [{edges: video->question, keep: [[5, 19]]}, ...]"
            )
        parsed = []
        for rule in rules:
            if not isinstance(rule, dict) or "edges" not in rule:
                raise FlowlensError(f"each rule needs `edges` and `keep`, got {rule!r}")
            parsed.append(Rule(Block.from_data(rule["edges"]), _layers(rule.get("keep", []))))
        return cls(str(data.get("name", "custom")), tuple(parsed))

    @classmethod
    def load(cls, path: str | Path) -> RuleTable:
        path = Path(path)
        if not path.is_file():
            raise FlowlensError(f"rule table not found: {path}")
        return cls.from_dict(read_yaml(path, "a rule table"))


def _layers(keep: Any) -> tuple[int, ...]:
    """`[[5, 14], 20]` -> layers 5..14 (inclusive) and 20; anything else is a FlowlensError."""
    if keep is None:
        return ()
    if not isinstance(keep, (list, tuple)):
        raise FlowlensError(f"`keep` is a list of layers and [start, end] ranges, got {keep!r}")
    out: set[int] = set()
    for item in keep:
        if isinstance(item, (list, tuple)) and len(item) == 2 and all(_is_layer(x) for x in item):
            if int(item[0]) > int(item[1]):
                raise FlowlensError(f"layer range {list(item)} runs backwards")
            out.update(range(int(item[0]), int(item[1]) + 1))
        elif _is_layer(item):
            out.add(int(item))
        else:
            raise FlowlensError(f"`keep` holds layers (>= 0) and [start, end] ranges, got {item!r}")
    return tuple(sorted(out))


def _is_layer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 100_000


def _ranges(layers: tuple[int, ...]) -> list[list[int]]:
    """Layers as inclusive [start, end] ranges."""
    out: list[list[int]] = []
    for x in layers:
        if out and x == out[-1][1] + 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return out


def map_the_flow_rules(
    n_layers: int,
    inter_frame: tuple[int, int],
    video_to_question: tuple[int, int],
    question_to_last: tuple[int, int],
) -> RuleTable:
    """The paper's rule shape (0-based inclusive ranges): e.g. LLaVA-NeXT-7B-Video-FT = (5, 14), (5, 19), (15, 24)."""
    v2q_end, q2l_end = video_to_question[1], question_to_last[1]
    return RuleTable(
        f"map-the-flow-L{n_layers}",
        (
            Rule(Block.cross_frame(), _layers([list(inter_frame)])),
            Rule(Block("video", "question"), _layers([list(video_to_question)])),
            Rule(Block("question", "last"), _layers([list(question_to_last)])),
            Rule(Block("last", "last"), ()),
            Rule(Block("video", "last"), ()),
            Rule(Block("video", "video"), _layers([[0, v2q_end]])),
            Rule(Block("question", "question"), _layers([[0, q2l_end]])),
        ),
    )


# ------------------------------------------------------------------ accounting and controls
def per_layer_allowed(layout: TokenLayout, knockouts: list[Knockout]) -> list[torch.Tensor]:
    """The allowed (T, T) pattern of every layer under a list of knockouts (rows never left empty)."""
    out = []
    causal = torch.ones(layout.seq_len, layout.seq_len, dtype=torch.bool).tril_()
    blocked = {id(k): blocked_matrix(layout, k.blocks) for k in knockouts}
    for layer in range(layout.n_layers):
        active = [blocked[id(k)] for k in knockouts if layer in k.layers]
        out.append(allowed_matrix(torch.stack(active).any(0)) if active else causal)
    return out


def edge_counts(layout: TokenLayout, knockouts: list[Knockout]) -> tuple[int, int]:
    """(kept causal pairs summed over layers, L * N(N+1)/2)."""
    n = layout.seq_len
    kept = sum(int(allowed.sum()) for allowed in per_layer_allowed(layout, knockouts))
    return kept, layout.n_layers * n * (n + 1) // 2


RANDOM_CONTROLS = ("uniform", "per-layer")


def random_control(
    layout: TokenLayout, knockouts: list[Knockout], seed: int = 0, mode: str = "uniform"
) -> list[CompiledKnockout]:
    """Random blocking at the pathway's size, uniformly among causal pairs at or after the first video token.

    `uniform` (the paper's): every layer blocks int(r * N(N+1)/2) pairs, r = the pathway's suppressed
    fraction over all layers. `per-layer`: each layer blocks as many pairs as the pathway blocks there.
    """
    if mode not in RANDOM_CONTROLS:
        raise FlowlensError(f"unknown random control {mode!r}; use one of {', '.join(RANDOM_CONTROLS)}")
    n = layout.seq_len
    first = int(layout["video"][0])
    q, k = np.tril_indices(n)
    pool = np.flatnonzero((q >= first) & (k >= first))
    rng = np.random.default_rng(seed)
    full = n * (n + 1) // 2
    allowed = per_layer_allowed(layout, knockouts)
    if mode == "uniform":
        suppressed = 1.0 - sum(int(a.sum()) for a in allowed) / (layout.n_layers * full)
        counts = [int(suppressed * full)] * layout.n_layers
    else:
        counts = [full - int(a.sum()) for a in allowed]
    out = []
    for layer, count in enumerate(counts):
        count = min(count, pool.size)
        if count <= 0:
            continue
        pick = rng.choice(pool, size=count, replace=False)
        random_allowed = torch.ones(n, n, dtype=torch.bool).tril_()
        random_allowed[torch.as_tensor(q[pick]), torch.as_tensor(k[pick])] = False
        empty = ~random_allowed.any(-1)
        random_allowed[empty, empty.nonzero().flatten()] = True
        out.append(CompiledKnockout(random_allowed, frozenset([layer]), None, f"random@{layer}"))
    return out
