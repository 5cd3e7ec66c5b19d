"""Multiple-choice accuracy per sample and task: the answer at `last` as the paper reads it (argmax over the
whole vocabulary, fp32 head), with the letter-restricted answer as `prediction_letter` / `accuracy_letter`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from flowlens.analyses.frames import FrameTransform, blank_frames, shuffled_frames, transformed_frames
from flowlens.analyses.readout import answer_readout, last_logits
from flowlens.data.sample import Sample
from flowlens.errors import FlowlensError

NO_TASK = "-"
SUMMARY_COLUMNS = ["task", "n", "correct", "accuracy", "accuracy_letter", "chance", "mean_p_answer", "failed"]


@dataclass
class EvalResult:
    """Per-sample rows, a per-task summary (plus an `all` row) and every failure with its reason."""

    samples: pd.DataFrame
    summary: pd.DataFrame
    failures: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def accuracy(self, task: str = "all") -> float:
        """Accuracy of one task (or `all`)."""
        row = self.summary.loc[self.summary["task"] == task]
        if row.empty:
            raise KeyError(f"no task {task!r}; tasks: {', '.join(self.summary['task'])}")
        return float(row["accuracy"].iloc[0])

    def to_dict(self) -> dict[str, Any]:
        summary = self.summary.astype(object).where(self.summary.notna(), None)
        return {
            "settings": self.settings,
            "summary": summary.to_dict(orient="records"),
            "failures": self.failures,
        }


def evaluate(
    lm: Any,
    samples: list[Sample],
    frames: int = 8,
    blind: bool = False,
    shuffle_frames: bool = False,
    shuffle_seed: int = 0,
    progress: bool = True,
) -> EvalResult:
    """Run every sample; predict the most probable option letter. Failed samples are recorded, not raised.

    `blind` feeds black frames (the no-video floor); `shuffle_frames` permutes the sampled frames
    (seeded per sample) to measure how much the model relies on frame order.
    """
    from tqdm.auto import tqdm

    if blind and shuffle_frames:
        raise FlowlensError("--blind and --shuffle-frames are exclusive (blank frames have no order)")
    transform: FrameTransform | None = (
        blank_frames if blind else shuffled_frames(shuffle_seed) if shuffle_frames else None
    )
    failures = [f.to_dict() for f in getattr(samples, "failures", [])]
    rows: list[dict[str, Any]] = []
    with transformed_frames(lm, transform):
        for sample in tqdm(samples, desc="evaluate", unit="sample", disable=not progress):
            rows.append(_score(lm, sample, frames))
    for row in rows:
        if row["error"]:
            failures.append({"id": row["id"], "reason": row["error"]})
    table = pd.DataFrame(rows, columns=list(_score_columns()))
    settings = {
        "model": lm.name,
        "frames": frames,
        "blind": blind,
        "shuffle_frames": shuffle_frames,
        "shuffle_seed": shuffle_seed if shuffle_frames else None,
        "n_samples": len(samples),
    }
    return EvalResult(
        table,
        summarize(table, load_failures=len(failures) - int(table["error"].notna().sum())),
        failures,
        settings,
    )


def _score_columns() -> dict[str, None]:
    return dict.fromkeys(
        [
            "id",
            "task",
            "answer",
            "prediction",
            "correct",
            "prediction_letter",
            "correct_letter",
            "p_answer",
            "probs",
            "n_options",
            "chance",
            "error",
        ]
    )


def _score(lm: Any, sample: Sample, frames: int) -> dict[str, Any]:
    """One sample's row: prediction, correctness and letter probabilities, or the reason it failed."""
    row: dict[str, Any] = dict.fromkeys(_score_columns())
    row.update(id=sample.id, task=str(sample.metadata.get("task", NO_TASK)))
    try:
        inputs, layout = lm.prepare(sample, frames=frames)
        readout = answer_readout(last_logits(lm, inputs), layout, lm.tokenizer)
    except Exception as exc:  # a bad video or prompt must not stop the run; the reason is recorded
        reason = str(exc) if isinstance(exc, FlowlensError) else f"{type(exc).__name__}: {exc}"
        row["error"] = reason or type(exc).__name__
        return row
    letters = layout.option_letters
    answer = layout.answer_letter
    row.update(
        prediction=readout.predicted,
        prediction_letter=readout.predicted_letter,
        probs={x: round(float(p), 6) for x, p in zip(letters, readout.probs, strict=True)},
        n_options=len(letters),
        chance=1.0 / len(letters),
        answer=answer,
    )
    if answer is not None:
        row.update(
            correct=readout.correct,
            correct_letter=readout.correct_letter,
            p_answer=float(readout.probs[letters.index(answer)]),
        )
    return row


def summarize(table: pd.DataFrame, load_failures: int = 0) -> pd.DataFrame:
    """Per-task n, accuracy, chance and failures (tasks sorted by name), then an `all` row."""
    records = [_summary_row(str(task), group) for task, group in table.groupby("task", sort=True)]
    overall = _summary_row("all", table)
    overall["failed"] += load_failures
    return pd.DataFrame([*records, overall], columns=SUMMARY_COLUMNS)


def _summary_row(task: str, group: pd.DataFrame) -> dict[str, Any]:
    scored = group[group["correct"].notna()]
    n = len(scored)
    correct = int(scored["correct"].astype(bool).sum())
    correct_letter = int(scored["correct_letter"].astype(bool).sum())
    return {
        "task": task,
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else float("nan"),
        "accuracy_letter": correct_letter / n if n else float("nan"),
        "chance": float(scored["chance"].mean()) if n else float("nan"),
        "mean_p_answer": float(scored["p_answer"].mean()) if n else float("nan"),
        "failed": int(group["error"].notna().sum()),
    }
