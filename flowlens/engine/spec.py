"""Knockouts as data: `Block(src, dst)` edges over layout groups, layer schedules, YAML/JSON round trip.

`Block(src, dst)` means queries in `dst` may not attend keys in `src` (Map the Flow's "src ↛ dst").
`CROSS_FRAME` blocks every frame group from every earlier frame group. A `Knockout` is a set of
blocks applied in a set of layers, optionally only in some heads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowlens.errors import FlowlensError

CROSS_FRAME = "cross_frame"


@dataclass(frozen=True)
class Block:
    """Queries in group `dst` may not attend keys in group `src`; `Block.cross_frame()` is the frame-to-earlier-frames set."""

    src: str
    dst: str

    @classmethod
    def cross_frame(cls) -> Block:
        return cls(CROSS_FRAME, CROSS_FRAME)

    @property
    def is_cross_frame(self) -> bool:
        return self.src == CROSS_FRAME

    @property
    def label(self) -> str:
        """`video->question`, or `cross_frame`."""
        return CROSS_FRAME if self.is_cross_frame else f"{self.src}->{self.dst}"

    def to_data(self) -> str | dict[str, str]:
        return CROSS_FRAME if self.is_cross_frame else {"src": self.src, "dst": self.dst}

    @classmethod
    def from_data(cls, data: Any) -> Block:
        """`cross_frame`, `src->dst` or {src: ..., dst: ...} -> Block; group names are non-empty and hold no `->`."""
        if data == CROSS_FRAME:
            return cls.cross_frame()
        if isinstance(data, str) and "->" in data:
            src, dst = data.split("->", 1)
        elif isinstance(data, dict) and set(data) == {"src", "dst"}:
            src, dst = data["src"], data["dst"]
        else:
            raise FlowlensError(
                f"a block is `cross_frame`, `src->dst` or {{src: ..., dst: ...}}, got {data!r}"
            )
        src, dst = _group_name(src, data), _group_name(dst, data)
        if CROSS_FRAME in (src, dst):
            raise FlowlensError(
                f"`{CROSS_FRAME}` is a block on its own, not a group: write it alone, got {data!r}"
            )
        return cls(src, dst)


def _group_name(value: Any, data: Any) -> str:
    """A block's group name, stripped: non-empty printable text without `->` (else a FlowlensError naming `data`)."""
    name = value.strip() if isinstance(value, str) else ""
    if not name or "->" in name or not name.isprintable():
        raise FlowlensError(f"a block's groups are names such as `video` or `last`, got {data!r}")
    return name


def _indices(value: Any, what: str) -> tuple[int, ...]:
    """A list of non-negative integers (layers or heads), or a FlowlensError saying what `what` must be."""
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value
    ):
        raise FlowlensError(f"knockout `{what}` is a list of integers >= 0, got {value!r}")
    return tuple(value)


def _mapping(data: Any, what: str) -> dict[str, Any]:
    """`data` when it is a mapping, else a FlowlensError saying `what` must be one."""
    if not isinstance(data, dict):
        raise FlowlensError(f"{what} is a mapping, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Knockout:
    """Blocks applied in `layers` (0-based language layers), in every head or only in `heads`."""

    blocks: tuple[Block, ...]
    layers: tuple[int, ...]
    heads: tuple[int, ...] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "layers", tuple(sorted(set(int(x) for x in self.layers))))
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(sorted(set(int(h) for h in self.heads))))

    @property
    def label(self) -> str:
        return self.name or " + ".join(b.label for b in self.blocks) or "clean"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"blocks": [b.to_data() for b in self.blocks], "layers": list(self.layers)}
        if self.heads is not None:
            data["heads"] = list(self.heads)
        if self.name:
            data["name"] = self.name
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Knockout:
        data = _mapping(data, "a knockout")
        unknown = set(data) - {"blocks", "layers", "heads", "name"}
        if unknown:
            raise FlowlensError(f"unknown knockout fields: {', '.join(sorted(map(str, unknown)))}")
        blocks = data.get("blocks", [])
        if not isinstance(blocks, list):
            raise FlowlensError(f"knockout `blocks` is a list of blocks, got {blocks!r}")
        name = str(data.get("name", ""))
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: JSON could not keep it as it is
            raise FlowlensError(f"knockout `name` is not valid Unicode text: {name!r}") from None
        return cls(
            blocks=tuple(Block.from_data(b) for b in blocks),
            layers=_indices(data.get("layers", []), "layers"),
            heads=None if data.get("heads") is None else _indices(data["heads"], "heads"),
            name=name,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Knockout:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, a number too long, nesting too deep
            raise FlowlensError(f"a knockout is a JSON object: {exc}") from None
        return cls.from_dict(data)


# ---------------------------------------------------------------- layer schedules
def window(layer: int, n_layers: int, k: int = 9) -> list[int]:
    """k layers centred on `layer`, clipped: [max(0, l - k//2), min(L, l + ceil(k/2))) (Map the Flow's default, k = 9)."""
    return list(range(max(0, layer - k // 2), min(n_layers, layer + math.ceil(k / 2))))


def inverse_window(layer: int, n_layers: int, k: int = 9) -> list[int]:
    """Every layer outside the centred window."""
    inside = set(window(layer, n_layers, k))
    return [x for x in range(n_layers) if x not in inside]


def top_down(layer: int, n_layers: int, k: int = 9) -> list[int]:
    """Layers [l, L)."""
    return list(range(layer, n_layers))


def bottom_up(layer: int, n_layers: int, k: int = 9) -> list[int]:
    """Layers [0, l]."""
    return list(range(0, min(layer + 1, n_layers)))


SCHEDULES = {"window": window, "inverse": inverse_window, "top_down": top_down, "bottom_up": bottom_up}


def schedule(style: str, layer: int, n_layers: int, k: int = 9) -> list[int]:
    """The layers a knockout centred (or anchored) at `layer` covers, by schedule `style`."""
    try:
        return SCHEDULES[style](layer, n_layers, k)
    except KeyError:
        raise FlowlensError(f"unknown layer schedule {style!r}; use one of {', '.join(SCHEDULES)}") from None


# ---------------------------------------------------------------- block sets and presets
@dataclass
class BlockSet:
    """A named list of block groups swept together: each entry is one curve (one knockout per layer)."""

    name: str
    curves: list[tuple[str, tuple[Block, ...]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "curves": {label: [b.to_data() for b in blocks] for label, blocks in self.curves},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockSet:
        curves = _mapping(data, "a block set").get("curves")
        if not isinstance(curves, dict) or not curves:
            raise FlowlensError("a block set needs `curves`: {label: [blocks...]}")
        parsed = []
        for label, blocks in curves.items():
            if not isinstance(blocks, list):
                raise FlowlensError(f"curve {label!r} is a list of blocks, got {blocks!r}")
            parsed.append((str(label), tuple(Block.from_data(b) for b in blocks)))
        labels = [label for label, _ in parsed]
        if len(set(labels)) < len(labels):
            raise FlowlensError(f"curve labels must differ, got {', '.join(map(repr, labels))}")
        return cls(str(data.get("name", "custom")), parsed)


def _curve(*blocks: Block) -> tuple[str, tuple[Block, ...]]:
    return " + ".join(b.label for b in blocks), tuple(blocks)


PRESETS: dict[str, BlockSet] = {
    "cross-frame": BlockSet("cross-frame", [_curve(Block.cross_frame())]),
    "vql-to-ql": BlockSet(
        "vql-to-ql",
        [
            _curve(Block("video", "question")),
            _curve(Block("video", "last")),
            _curve(Block("question", "last")),
            _curve(Block("last", "last")),
        ],
    ),
    "question-and-options-to-last": BlockSet(
        "question-and-options-to-last",
        [
            _curve(Block("question_only", "last")),
            _curve(Block("true_option", "last")),
            _curve(Block("false_options", "last")),
        ],
    ),
    "vq-to-true-opt": BlockSet(
        "vq-to-true-opt",
        [
            _curve(Block("video", "question_only")),
            _curve(Block("question_only", "true_option")),
            _curve(Block("video", "true_option")),
        ],
    ),
}
PRESETS["map-the-flow"] = BlockSet(
    "map-the-flow",
    [
        c
        for name in ("cross-frame", "vql-to-ql", "question-and-options-to-last", "vq-to-true-opt")
        for c in PRESETS[name].curves
    ],
)


def load_block_set(name_or_path: str) -> BlockSet:
    """A preset name or a YAML/JSON file `{name: ..., curves: {label: [blocks]}}`."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        raise FlowlensError(
            f"unknown preset {name_or_path!r}; presets: {', '.join(PRESETS)}; or give a YAML file"
        )
    return BlockSet.from_dict(read_yaml(path, "a block set"))


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML (or JSON) file's top-level mapping, or a one-line FlowlensError saying why it is not `what`."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise FlowlensError(f"{path}: cannot read {what} ({reason})") from None
    if not isinstance(data, dict):
        raise FlowlensError(f"{path}: {what} is a YAML mapping, got {type(data).__name__}")
    return data
