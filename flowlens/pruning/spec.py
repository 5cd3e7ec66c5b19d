"""Pruning specs as data: scorers x debias steps x policies x budgets x layers x modes, YAML round trip.

A spec expands into conditions (one keep-set rule each) plus the controls every pruning table carries:
`random` scores (one condition per seed), `uniform_grid`, `no_video` (every video token pruned: the
floor) and `all_tokens` (nothing pruned: the unpruned model, the ceiling). The resolved spec is stored in
the run and is part of its resume identity.

```yaml
name: fastv
scorers: [{name: attn_last, layer: 1}]   # registered scorers and their parameters
debias: [null]                           # null (raw scores) or {method: positional_trend, ...}
policies: [topk_ratio]                   # or {kind: threshold, budgets: [0.5]}
budgets: [0.5, 0.25, 0.15, 0.1]          # the policies' budgets unless a policy sets its own
layers: [2]                              # K: tokens are pruned from layer K on (0 = before the LLM)
modes: [mask, drop]                      # mask: edges into pruned tokens blocked; drop: tokens removed
position_ids: [original]                 # required: original | reindex (drop mode only)
controls: {random_seeds: [0, 1, 2], grid_stride: 2}
```
"""

from __future__ import annotations

import copy
import importlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from flowlens.errors import FlowlensError
from flowlens.pruning.policies import DEFAULT_BUDGETS, POLICIES, check_budget

if TYPE_CHECKING:
    from flowlens.pruning.scorers import ScoreContext

MODES = ("mask", "drop")
POSITION_IDS = ("original", "reindex")
CONTROLS = ("random", "uniform_grid", "no_video", "all_tokens")
METHOD = "method"  # the role of a spec's own conditions (controls are named by CONTROLS)

# ------------------------------------------------------------------ debias steps (registered by name)
DebiasFunction = Callable[..., np.ndarray]
DEBIASERS: dict[str, DebiasFunction] = {}
# Modules that register debias steps (and scorers) when imported; missing ones are skipped.
PROVIDERS = ("flowlens.pruning.debias",)


def register_debias(name: str) -> Callable[[DebiasFunction], DebiasFunction]:
    """Decorator: register `function(scores, context, **params) -> scores` as debias method `name`."""

    def wrap(function: DebiasFunction) -> DebiasFunction:
        DEBIASERS[name] = function
        return function

    return wrap


def _load_providers() -> None:
    import flowlens.pruning  # noqa: F401  (the scorers registered by the package)

    for module in PROVIDERS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def debias_function(method: str) -> DebiasFunction:
    """The registered debias step `method`, or a FlowlensError listing the available ones."""
    if method not in DEBIASERS:
        _load_providers()
    if method not in DEBIASERS:
        known = ", ".join(sorted(DEBIASERS)) or "none yet"
        raise FlowlensError(
            f"debias method {method!r} is not available in this flowlens (debias methods: {known}); "
            "use `debias: [null]` or register one with flowlens.pruning.spec.register_debias"
        )
    return DEBIASERS[method]


# ------------------------------------------------------------------ parts of a spec
def _params_key(params: tuple[tuple[str, Any], ...]) -> str:
    """A hashable form of plain-data parameters."""
    return json.dumps(params, sort_keys=True)


def _params(data: dict[str, Any], skip: str, what: str) -> tuple[tuple[str, Any], ...]:
    """The parameters of a scorer or debias entry (every key but `skip`), sorted, JSON-plain."""
    out = []
    for key, value in data.items():
        if key == skip:
            continue
        if not isinstance(key, str) or not key.isidentifier():
            raise FlowlensError(f"{what}: parameter names are identifiers, got {key!r}")
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise FlowlensError(f"{what}: parameter {key} must be plain data, got {value!r}") from None
        out.append((key, value))
    return tuple(sorted(out))


def _label(name: str, params: tuple[tuple[str, Any], ...]) -> str:
    inner = ",".join(f"{k}={json.dumps(v)}" for k, v in params)
    return f"{name}({inner})" if inner else name


@dataclass(frozen=True)
class ScorerSpec:
    """A registered scorer and its parameters (`{name: attn_last, layer: 1}`, or just `attn_last`)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def __hash__(self) -> int:  # parameters may hold lists and dicts (plain data), hashed as JSON
        return hash((self.name, _params_key(self.params)))

    @property
    def label(self) -> str:
        return _label(self.name, self.params)

    def to_data(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.params)}

    @classmethod
    def from_data(cls, data: Any) -> ScorerSpec:
        if isinstance(data, str) and data.strip():
            return cls(data.strip())
        if isinstance(data, dict) and isinstance(data.get("name"), str) and data["name"].strip():
            return cls(data["name"].strip(), _params(data, "name", f"scorer {data['name']}"))
        raise FlowlensError(f"a scorer is a name or {{name: ..., <parameter>: ...}}, got {data!r}")


@dataclass(frozen=True)
class DebiasSpec:
    """A debias step applied to a scorer's scores before selection (`{method: ..., <parameter>: ...}`)."""

    method: str
    params: tuple[tuple[str, Any], ...] = ()

    def __hash__(self) -> int:  # e.g. a trend fit given as data (`fit: {...}`)
        return hash((self.method, _params_key(self.params)))

    @property
    def label(self) -> str:
        return _label(self.method, self.params)

    def to_data(self) -> dict[str, Any]:
        return {"method": self.method, **dict(self.params)}

    @classmethod
    def from_data(cls, data: Any) -> DebiasSpec | None:
        if data is None or data == "none":
            return None
        if isinstance(data, str) and data.strip():
            return cls(data.strip())
        if isinstance(data, dict) and isinstance(data.get("method"), str) and data["method"].strip():
            return cls(data["method"].strip(), _params(data, "method", f"debias {data['method']}"))
        raise FlowlensError(f"a debias step is null, a method name or {{method: ..., ...}}, got {data!r}")


@dataclass(frozen=True)
class PolicySpec:
    """A selection policy (`flowlens.pruning.policies`) and, optionally, its own budgets."""

    kind: str
    budgets: tuple[float, ...] | None = None

    def to_data(self) -> str | dict[str, Any]:
        return self.kind if self.budgets is None else {"kind": self.kind, "budgets": list(self.budgets)}

    @classmethod
    def from_data(cls, data: Any) -> PolicySpec:
        if isinstance(data, str):
            data = {"kind": data}
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("kind"), str)
            or set(data) - {"kind", "budgets"}
        ):
            raise FlowlensError(f"a policy is a name or {{kind: ..., budgets: [...]}}, got {data!r}")
        kind = data["kind"].strip()
        if kind not in POLICIES:
            raise FlowlensError(f"unknown pruning policy {kind!r}; policies: {', '.join(POLICIES)}")
        budgets = data.get("budgets")
        return cls(kind, None if budgets is None else _budgets(kind, budgets))


def _budgets(kind: str, values: Any) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)) or not values:
        raise FlowlensError(f"budgets are a non-empty list of numbers, got {values!r}")
    return tuple(dict.fromkeys(check_budget(kind, v) for v in values))


def _names(value: Any, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, str) for v in values):
        raise FlowlensError(f"`{what}` is one of {', '.join(allowed)} or a list of them, got {value!r}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise FlowlensError(f"`{what}`: {', '.join(map(repr, bad))} unknown; use {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))


def _ints(value: Any, what: str, minimum: int = 0) -> tuple[int, ...]:
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(values, (list, tuple))
        or not values
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values)
    ):
        raise FlowlensError(f"`{what}` is an integer >= {minimum} or a list of them, got {value!r}")
    return tuple(dict.fromkeys(values))


# ------------------------------------------------------------------ conditions
@dataclass(frozen=True)
class Condition:
    """One keep-set rule: a role (`method` or a control), its scorer and debias step, policy, budget, the layer
    K it prunes from, the mode and the position-id policy. `match` names the method whose kept count a
    count-matched control copies (controls of a threshold policy)."""

    role: str
    scorer: ScorerSpec | None
    debias: DebiasSpec | None
    policy: str
    budget: float
    layer: int
    mode: str
    position_ids: str
    seed: int = -1
    match: str = ""

    @property
    def score_key(self) -> tuple[ScorerSpec | None, DebiasSpec | None]:
        return (self.scorer, self.debias)

    @property
    def curve(self) -> str:
        """The curve this condition is a point of: its role and scores (budget apart)."""
        if self.role == METHOD:
            return self.scorer.label + ("" if self.debias is None else f" + {self.debias.label}")
        return self.role

    def to_dict(self) -> dict[str, Any]:
        """The full specification of this condition (stored in every table row as `spec`)."""
        return {
            "role": self.role,
            "scorer": None if self.scorer is None else self.scorer.to_data(),
            "debias": None if self.debias is None else self.debias.to_data(),
            "policy": self.policy,
            "budget": self.budget,
            "layer": self.layer,
            "mode": self.mode,
            "position_ids": self.position_ids,
            "seed": self.seed,
            "match": self.match,
        }


@dataclass
class PruneSpec:
    """Scorers x debias steps x policies x budgets x layers x modes (x position-id policies in drop mode)."""

    name: str
    scorers: tuple[ScorerSpec, ...]
    position_ids: tuple[str, ...]
    debias: tuple[DebiasSpec | None, ...] = (None,)
    policies: tuple[PolicySpec, ...] = (PolicySpec("topk_ratio"),)
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    layers: tuple[int, ...] = (0,)
    modes: tuple[str, ...] = ("mask",)
    random_seeds: tuple[int, ...] = (0, 1, 2)
    grid_stride: int = 2
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.scorers:
            raise FlowlensError("a pruning spec names at least one scorer")
        if "mask" in self.modes and "original" not in self.position_ids:
            raise FlowlensError(
                "mask mode keeps every token's position (only the edges into pruned tokens are blocked): "
                "add `original` to position_ids or use modes: [drop]"
            )
        if "reindex" in self.position_ids and "drop" not in self.modes:
            raise FlowlensError(
                "position_ids: reindex renumbers the tokens that remain; it needs modes: [drop]"
            )
        if not self.random_seeds:
            raise FlowlensError("the random control needs at least one seed (default 0, 1, 2)")
        if self.grid_stride < 1:
            raise FlowlensError(f"controls.grid_stride must be >= 1, got {self.grid_stride}")
        for policy in self.policies:
            for budget in policy.budgets or self.budgets:
                check_budget(policy.kind, budget)

    # ------------------------------------------------------------- data round trip
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "scorers": [s.to_data() for s in self.scorers],
            "debias": [None if d is None else d.to_data() for d in self.debias],
            "policies": [p.to_data() for p in self.policies],
            "budgets": list(self.budgets),
            "layers": list(self.layers),
            "modes": list(self.modes),
            "position_ids": list(self.position_ids),
            "controls": {"random_seeds": list(self.random_seeds), "grid_stride": self.grid_stride},
        }
        if self.notes:
            data["notes"] = self.notes
        return data

    @classmethod
    def from_dict(cls, data: Any) -> PruneSpec:
        if not isinstance(data, dict):
            raise FlowlensError(f"a pruning spec is a mapping, got {type(data).__name__}")
        known = {"name", "scorers", "debias", "policies", "budgets", "layers", "modes", "position_ids"}
        unknown = set(data) - known - {"controls", "notes"}
        if unknown:
            raise FlowlensError(
                f"unknown pruning spec keys {', '.join(sorted(map(str, unknown)))}; keys: {', '.join(sorted(known))}, controls, notes"
            )
        if "position_ids" not in data:
            raise FlowlensError(
                "a pruning spec must say `position_ids: original` or `reindex` (or both): it changes every "
                "drop-mode number, so it has no default"
            )
        scorers = data.get("scorers")
        if not isinstance(scorers, (list, tuple)) or not scorers:
            raise FlowlensError(f"`scorers` is a non-empty list, got {scorers!r}")
        debias = data.get("debias", [None])
        if not isinstance(debias, (list, tuple)) or not debias:
            debias = [debias]
        policies = data.get("policies", ["topk_ratio"])
        if isinstance(policies, (str, dict)):
            policies = [policies]
        if not isinstance(policies, (list, tuple)) or not policies:
            raise FlowlensError(f"`policies` is a non-empty list, got {policies!r}")
        controls = data.get("controls") or {}
        if not isinstance(controls, dict) or set(controls) - {"random_seeds", "grid_stride"}:
            raise FlowlensError(
                f"`controls` is {{random_seeds: [...], grid_stride: n}} (the controls themselves are always run), got {controls!r}"
            )
        name = data.get("name", "spec")
        if not isinstance(name, str) or not name.strip():
            raise FlowlensError(f"a spec's name is a non-empty string, got {name!r}")
        budgets = data.get("budgets", list(DEFAULT_BUDGETS))
        if (
            not isinstance(budgets, (list, tuple))
            or not budgets
            or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in budgets
            )
        ):
            raise FlowlensError(f"`budgets` is a non-empty list of numbers, got {budgets!r}")
        return cls(
            name=name.strip(),
            scorers=tuple(dict.fromkeys(ScorerSpec.from_data(s) for s in scorers)),
            debias=tuple(dict.fromkeys(DebiasSpec.from_data(d) for d in debias)),
            policies=tuple(dict.fromkeys(PolicySpec.from_data(p) for p in policies)),
            budgets=tuple(dict.fromkeys(float(b) for b in budgets)),
            layers=_ints(data.get("layers", [0]), "layers"),
            modes=_names(data.get("modes", ["mask"]), MODES, "modes"),
            position_ids=_names(data["position_ids"], POSITION_IDS, "position_ids"),
            random_seeds=_ints(controls.get("random_seeds", [0, 1, 2]), "controls.random_seeds"),
            grid_stride=_ints(controls.get("grid_stride", 2), "controls.grid_stride", 1)[0],
            notes=str(data.get("notes", "")),
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> PruneSpec:
        try:
            data = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as exc:
            raise FlowlensError(f"not a YAML pruning spec ({exc})") from None
        return cls.from_dict(data)

    # ------------------------------------------------------------- checks
    def check(self, n_layers: int, mrope: bool = False) -> list[str]:
        """Refuse what this model cannot run (FlowlensError, before any sample); return warnings."""
        from flowlens.pruning.scorers import SCORERS

        _load_providers()
        for scorer in self.scorers:
            if scorer.name not in SCORERS:
                raise FlowlensError(
                    f"scorer {scorer.name!r} is not registered in this flowlens (scorers: "
                    f"{', '.join(sorted(SCORERS))}); see docs/pruning.md, `Adding a scorer`"
                )
            parameters = SCORERS[scorer.name].parameters()
            unknown = [k for k, _ in scorer.params if k not in parameters]
            if unknown:
                raise FlowlensError(
                    f"scorer {scorer.name!r} has no parameter {', '.join(unknown)}; it takes {parameters}"
                )
        for step in self.debias:
            if step is not None:
                debias_function(step.method)
        bad = [k for k in self.layers if k > n_layers]
        if bad:
            raise FlowlensError(
                f"pruning layers {bad}: the model has {n_layers} layers (K = 0 prunes before the first, "
                f"K = {n_layers} after the last)"
            )
        if mrope and "reindex" in self.position_ids:
            raise FlowlensError(
                "position_ids: reindex renumbers 1-D rotary positions; this model uses multi-axis (M-RoPE) "
                "positions, which have no re-numbering without the video grid: use position_ids: [original]"
            )
        warnings = []
        for scorer in self.scorers:
            layer = dict(scorer.params).get("layer", SCORERS[scorer.name].parameters().get("layer"))
            if isinstance(layer, int) and layer < 0:
                layer += n_layers  # -1: the last layer
            late = [k for k in self.layers if isinstance(layer, int) and layer >= k]
            if late:
                warnings.append(
                    f"{scorer.label} reads layer {layer} but prunes from layer {min(late)}: a score from the "
                    "unpruned run's later layers (an analysis, not a method one forward could run)"
                )
        return warnings

    # ------------------------------------------------------------- expansion
    def conditions(self) -> list[Condition]:
        """Every condition of the spec, then the controls of each (layer, mode, position ids, policy, budget)."""
        out: list[Condition] = []
        for layer in self.layers:
            for mode in self.modes:
                for positions in self.position_ids if mode == "drop" else ("original",):
                    out += self._group(layer, mode, positions)
        return list(dict.fromkeys(out))

    def _group(self, layer: int, mode: str, positions: str) -> list[Condition]:
        base = Condition(METHOD, None, None, "", 0.0, layer, mode, positions)
        out = [
            replace(base, role="no_video", policy="none", budget=0.0),
            replace(base, role="all_tokens", policy="none", budget=1.0),
        ]
        random = [ScorerSpec("random", (("seed", s),)) for s in self.random_seeds]
        grid = ScorerSpec("uniform_grid", (("stride", self.grid_stride),))
        for policy in self.policies:
            for budget in policy.budgets or self.budgets:
                point = replace(base, policy=policy.kind, budget=budget)
                methods = [
                    replace(point, scorer=scorer, debias=debias)
                    for scorer in self.scorers
                    for debias in self.debias
                ]
                out += methods
                # controls at the same budget; a threshold's controls keep as many tokens as each method did
                matches = [m.curve for m in methods] if policy.kind == "threshold" else [""]
                for match in matches:
                    kind = "topk_count" if match else policy.kind
                    control = replace(point, policy=kind, match=match)
                    out += [
                        replace(control, role="random", scorer=s, seed=dict(s.params)["seed"]) for s in random
                    ]
                    out.append(replace(control, role="uniform_grid", scorer=grid))
        return out


# ------------------------------------------------------------------ presets and loading
PRESETS: dict[str, dict[str, Any]] = {
    "fastv": {
        "name": "fastv",
        "notes": "FastV (pkunlp-icler/FastV code): head-mean attention of the last token at layer K-1 = 1, "
        "keep the top share from layer K = 2, original positions; mask mode is FastV's own ablation mode, "
        "drop its inplace mode",
        "scorers": [{"name": "attn_last", "layer": 1}],
        "policies": ["topk_ratio"],
        "budgets": list(DEFAULT_BUDGETS),
        "layers": [2],
        "modes": ["mask", "drop"],
        "position_ids": ["original"],
    },
    "fastv+debias": {
        "name": "fastv+debias",
        "notes": "FastV raw and with intcomp's positional-trend debiasing (exponential trend over the global "
        "index), paired as §5.5 asks",
        "scorers": [{"name": "attn_last", "layer": 1}],
        "debias": [None, {"method": "positional_trend", "axis": "global_index", "family": "exp"}],
        "policies": ["topk_ratio"],
        "budgets": list(DEFAULT_BUDGETS),
        "layers": [2],
        "modes": ["mask"],
        "position_ids": ["original"],
    },
    "divprune": {
        "name": "divprune",
        "notes": "DivPrune (vbdi/divprune): greedy max-min diversity of the LLM-input embeddings, before the "
        "LLM; published with re-indexed positions (drop, reindex), here beside original positions",
        "scorers": ["divprune"],
        "policies": ["topk_ratio"],
        "budgets": list(DEFAULT_BUDGETS),
        "layers": [0],
        "modes": ["mask", "drop"],
        "position_ids": ["original", "reindex"],
    },
    "dtd": {
        "name": "dtd",
        "notes": "TimeChat-Online's Differential Token Drop: drop a token whose LLM-input embedding is more "
        "than 0.5 cosine-similar to the same cell of the previous frame (keep novelty 1 - cos >= 0.5), "
        "before the LLM, original (M-RoPE) positions",
        "scorers": [{"name": "temporal_novelty", "mode": "feature"}],
        "policies": [{"kind": "threshold", "budgets": [0.5]}],
        "layers": [0],
        "modes": ["mask", "drop"],
        "position_ids": ["original"],
    },
    "dtd_pixels": {
        "name": "dtd_pixels",
        "notes": "Differential Token Drop on pixels: rank tokens by the mean absolute RGB difference (in [0, 1]) "
        "of their block of the frame to the previous frame group (first-group tokens score the maximum, so are "
        "kept) and keep the top fraction (DTD's relative mode: no absolute pixel threshold is published for "
        "this scale), before the LLM, original (M-RoPE) positions",
        "scorers": [{"name": "temporal_novelty", "mode": "pixels"}],
        "policies": ["topk_ratio"],
        "budgets": list(DEFAULT_BUDGETS),
        "layers": [0],
        "modes": ["mask", "drop"],
        "position_ids": ["original"],
    },
    "random": {
        "name": "random",
        "notes": "random tokens before the LLM (what FastV falls back to at K = 0), with the controls",
        "scorers": [{"name": "random", "seed": 0}],
        "policies": ["topk_ratio"],
        "budgets": list(DEFAULT_BUDGETS),
        "layers": [0],
        "modes": ["mask"],
        "position_ids": ["original"],
    },
}


def load_spec(name_or_path: str | PruneSpec | dict[str, Any]) -> PruneSpec:
    """A preset name (`fastv`, `fastv+debias`, `divprune`, `dtd`, `dtd_pixels`, `random`), a YAML/JSON file, a
    dict or a spec."""
    if isinstance(name_or_path, PruneSpec):
        return name_or_path
    if isinstance(name_or_path, dict):
        return PruneSpec.from_dict(copy.deepcopy(name_or_path))
    if name_or_path in PRESETS:
        return PruneSpec.from_dict(copy.deepcopy(PRESETS[name_or_path]))
    path = Path(name_or_path)
    if not path.is_file():
        raise FlowlensError(
            f"unknown pruning spec {name_or_path!r}; presets: {', '.join(PRESETS)}; or give a YAML file"
        )
    from flowlens.engine.spec import read_yaml

    return PruneSpec.from_dict(read_yaml(path, "a pruning spec"))


def apply_debias(scores: np.ndarray, step: DebiasSpec | None, context: ScoreContext) -> np.ndarray:
    """`scores` after the debias step (unchanged without one); the result must keep one score per token."""
    if step is None:
        return scores
    out = np.asarray(debias_function(step.method)(scores, context, **dict(step.params)), dtype=np.float64)
    if out.shape != scores.shape:
        raise FlowlensError(f"debias {step.label} returned shape {out.shape}, expected {scores.shape}")
    return out
