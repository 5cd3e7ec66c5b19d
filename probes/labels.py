"""What a probe predicts: a `Target` names a label, where it comes from and which token group it is read at.

Two levels:

- **sample** labels, one per sample: any key of the sample's metadata (`task`, `direction`, `count`, ...),
  the ground-truth answer letter (`answer`), the model's letter (`predicted`), or labels given directly
  (`Target.of_samples`). Samples without the label are left out.
- **token** labels, one per stored row, read from the activation index: `frame_index` (the row's frame
  group), `row` and `col` (its spatial cell). Rows without one (text tokens, `frame_mean` rows for `row`
  and `col`) are left out.

Every label is compared as a string (`3` and `"3"` are one class).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from flowlens.errors import FlowlensError
from flowlens.hooks import FRAME_MEAN

if TYPE_CHECKING:
    import pandas as pd

    from flowlens.store.run import Run

SAMPLE, TOKEN = "sample", "token"
INDEX_LABELS = {"frame_index": "frame", "row": "row", "col": "col"}  # token label -> activation index column


@dataclass(frozen=True)
class Target:
    """A label to probe for: its name, level (`sample` or `token`), default token group, and how to read it.

    `read(run, sample)` gives a sample label (None: the sample has none); token labels come from the
    activation index column `column`.
    """

    name: str
    level: str
    group: str
    help: str = ""
    column: str | None = None
    read: Callable[[Run, str], Any] | None = field(default=None, compare=False, repr=False)

    def sample_labels(self, run: Run, samples: list[str]) -> dict[str, str]:
        """sample -> label (as str) for the samples that carry one."""
        if self.level != SAMPLE or self.read is None:
            raise FlowlensError(f"{self.name!r} is a token label, not a sample label")
        out = {}
        for sample in samples:
            value = self.read(run, sample)
            if value is not None:
                out[sample] = _as_label(value)
        return out

    def token_labels(self, index: pd.DataFrame) -> np.ndarray:
        """The label of each row of an activation index (None where the row has none)."""
        if self.level != TOKEN or self.column is None:
            raise FlowlensError(f"{self.name!r} is a sample label, not a token label")
        values = index[self.column].to_numpy()
        return np.asarray([str(v) if v >= 0 else None for v in values], dtype=object)

    @classmethod
    def of_samples(cls, name: str, labels: Mapping[str, Any], group: str = FRAME_MEAN) -> Target:
        """A sample label given directly (sample id -> label), e.g. a label computed outside the run."""
        table = {str(k): v for k, v in labels.items()}
        return cls(name, SAMPLE, group, "labels given by the caller", read=lambda run, s: table.get(s))

    @classmethod
    def metadata(cls, key: str, group: str = FRAME_MEAN, name: str | None = None) -> Target:
        """The sample metadata value `key` (samples without it are left out)."""
        return cls(
            name or key,
            SAMPLE,
            group,
            f"sample metadata {key!r}",
            read=lambda run, s: run.metadata(s).get(key),
        )


def _as_label(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value, sort_keys=True)
    return str(value)


def _answer(run: Run, sample: str) -> str | None:
    return run.answer(sample).answer


def _predicted(run: Run, sample: str) -> str | None:
    return run.answer(sample).predicted_letter or None


def _first_colour(run: Run, sample: str) -> str | None:
    sequence = run.metadata(sample).get("sequence")
    return str(sequence[0]).split()[0] if sequence else None


def _noise(run: Run, sample: str) -> str:
    """A label that carries nothing: one of four classes from a SHA-256 of the sample id (the same in every run).

    (Not CRC-32: it is affine in the id's bits, so for ids that count up it follows their digits.)
    """
    import hashlib

    return "ABCD"[hashlib.sha256(f"noise:{sample}".encode()).digest()[0] % 4]


BUILTIN: dict[str, Target] = {
    t.name: t
    for t in (
        Target("answer", SAMPLE, "last", "ground-truth answer letter", read=_answer),
        Target(
            "predicted", SAMPLE, "last", "the model's answer letter (most probable option)", read=_predicted
        ),
        Target("frame_index", TOKEN, "video", "frame group of each video token", column="frame"),
        Target("row", TOKEN, "video", "spatial row of each video feature token", column="row"),
        Target("col", TOKEN, "video", "spatial column of each video feature token", column="col"),
        Target.metadata("task", FRAME_MEAN),
        Target.metadata("direction", FRAME_MEAN),  # moving_direction: left/right/up/down
        Target.metadata("count", FRAME_MEAN),  # object_count: 1..4
        Target.metadata(
            "color", FRAME_MEAN, name="colour"
        ),  # static and moving_direction: the shape's colour
        Target(
            "order",
            SAMPLE,
            FRAME_MEAN,
            "event_order: colour of the object that appeared first",
            read=_first_colour,
        ),
        Target(
            "noise",
            SAMPLE,
            FRAME_MEAN,
            "a random label per sample (a leakage check: stays at chance)",
            read=_noise,
        ),
    )
}


def resolve_target(name: str | Target) -> Target:
    """A built-in target by name, or the metadata key `name` (read at frame-pooled video tokens)."""
    if isinstance(name, Target):
        return name
    if name in BUILTIN:
        return BUILTIN[name]
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise FlowlensError(
            f"--target {name!r}: give a built-in target ({', '.join(BUILTIN)}) or a metadata key"
        )
    return Target.metadata(name)


def metadata_keys(run: Run, samples: list[str]) -> list[str]:
    """Metadata keys the samples carry (for error messages)."""
    keys: dict[str, None] = {}
    for sample in samples:
        keys.update(dict.fromkeys(run.metadata(sample)))
    return sorted(keys)
