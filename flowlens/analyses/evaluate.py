"""Multiple-choice accuracy per sample and task: the answer at `last` as the paper reads it (argmax over the
whole vocabulary, fp32 head), with the letter-restricted answer as `predicted_letter` / `accuracy_letter`.

Like every analysis it runs through the shared loop into `DIR/eval.h5` (resume, failures, report); the
blind (blank frames) and shuffled-frame controls are options of the run.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from flowlens.analyses.frames import FrameTransform, blank_frames, shuffled_frames, transformed_frames
from flowlens.analyses.options import all_settings, option, positive, results_settings
from flowlens.analyses.readout import answer_readout, last_logits
from flowlens.analyses.registry import Analysis, register_analysis
from flowlens.analyses.runner import RunControl, run_analysis
from flowlens.analyses.trace import check_context
from flowlens.data.sample import Sample
from flowlens.errors import UsageError
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

NO_TASK = "-"
TABLE = "eval"
SUMMARY_COLUMNS = ["task", "n", "correct", "accuracy", "accuracy_letter", "chance", "mean_p_answer", "failed"]


@dataclass
class EvalOptions:
    """How each sample is shown to the model."""

    frames: int = option(8, "frames sampled from each video")
    blind: bool = option(False, "replace the video by blank frames (the no-video floor)")
    shuffle_frames: bool = option(False, "permute the sampled frames (seeded per sample)")
    shuffle_seed: int = option(0, "seed of --shuffle-frames")

    def __post_init__(self) -> None:
        positive("frames", self.frames)
        if self.blind and self.shuffle_frames:
            raise UsageError("--blind and --shuffle-frames are exclusive (blank frames have no order)")

    @property
    def mode(self) -> str:
        return "blind (blank frames)" if self.blind else "shuffled frames" if self.shuffle_frames else "video"

    def transform(self) -> FrameTransform | None:
        if self.blind:
            return blank_frames
        return shuffled_frames(self.shuffle_seed) if self.shuffle_frames else None


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

    @classmethod
    def from_run(cls, run: Run) -> EvalResult:
        """The result of an `eval` run file (any completed part of a resumed run included)."""
        answers = run.table("answers")
        rows = run.table(TABLE) if TABLE in run.row_tables else pd.DataFrame({"sample": []})
        table = answers.merge(rows.drop(columns=["task"], errors="ignore"), on="sample", how="left")
        letters = [c for c in answers.columns if c.startswith("p_")]
        samples = pd.DataFrame(
            {
                "sample": table["sample"],
                "task": table["task"].fillna(NO_TASK).astype(str),
                "answer": table["answer"],
                "predicted": table["predicted"],
                "correct": table["correct"],
                "predicted_letter": table["predicted_letter"],
                "correct_letter": table["correct_letter"],
                "p_answer": table.get("p_answer"),
                "probs": [
                    {c[2:]: round(float(r[c]), 6) for c in letters if pd.notna(r[c])}
                    for _, r in table.iterrows()
                ],
                "n_options": table.get("n_options"),
                "chance": table.get("chance"),
            }
        )
        failures = [
            {"sample": sample, "reason": reason, "task": run.failure_metadata(sample).get("task")}
            for sample, reason in run.failures.items()
        ]
        failed_tasks = pd.Series([f["task"] or NO_TASK for f in failures], dtype=object)
        settings = {"model": run.config.get("model"), **run.config.get("settings", {})}
        settings["n_samples"] = len(samples) + len(failures)
        return cls(samples, summarize(samples, failed_tasks), failures, settings)


def eval_sample(lm: VideoLM, sample: Sample, options: EvalOptions) -> tuple[Any, Any, dict[str, list]]:
    """(layout, answer read-out, the `eval` row) of one sample (frame transforms applied by the caller)."""
    sample.validate(require_options=True)
    inputs, layout = lm.prepare(sample, frames=options.frames)
    check_context(lm, layout)
    readout = answer_readout(last_logits(lm, inputs), layout, lm.tokenizer)
    letters, answer = layout.option_letters, layout.answer_letter
    row = {
        "labelled": [answer is not None],
        "p_answer": [float(readout.probs[letters.index(answer)]) if answer is not None else float("nan")],
        "n_options": [len(letters)],
        "chance": [1.0 / len(letters)],
    }
    return layout, readout, row


def evaluate_run(
    lm: VideoLM,
    samples: Any,
    out: str | Path | None = None,
    options: EvalOptions | None = None,
    **control: Any,
) -> Run:
    """Evaluate every sample into `out/eval.h5`; `EvalResult.from_run(run)` gives the per-task summary."""
    options = options or EvalOptions()

    def write_one(writer: RunWriter, sample: Sample) -> None:
        layout, readout, row = eval_sample(lm, sample, options)
        writer.write_rows(str(sample.id), layout, readout, TABLE, row, dict(sample.metadata))

    with transformed_frames(lm, options.transform()):
        return run_analysis(
            lm,
            samples,
            EvalAnalysis.name,
            all_settings(options),
            results_settings(options),
            write_one,
            RunControl(out, **control),
        )


def evaluate(
    lm: VideoLM,
    samples: Any,
    frames: int = 8,
    blind: bool = False,
    shuffle_frames: bool = False,
    shuffle_seed: int = 0,
    progress: bool = True,
    out: str | Path | None = None,
) -> EvalResult:
    """Evaluate every sample and return the per-sample rows and per-task summary; failures are recorded.

    `blind` feeds black frames (the no-video floor); `shuffle_frames` permutes the sampled frames
    (seeded per sample) to measure how much the model relies on frame order. With `out` the run file
    (`out/eval.h5`) and report stay there; without, they go to a temporary folder that is removed.
    """
    options = EvalOptions(frames, blind, shuffle_frames, shuffle_seed)
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="flowlens-eval-"))
    try:
        run = evaluate_run(lm, samples, folder, options, progress=progress, report=out is not None)
        with run:
            return EvalResult.from_run(run)
    finally:
        if out is None:
            shutil.rmtree(folder, ignore_errors=True)


def summarize(table: pd.DataFrame, failed_tasks: pd.Series | None = None) -> pd.DataFrame:
    """Per-task n, accuracy, chance and failures (tasks sorted by name), then an `all` row.

    Accuracies are over labelled samples only (`n`); failures are counted per task where known.
    """
    failed_tasks = failed_tasks if failed_tasks is not None else pd.Series([], dtype=object)
    tasks = sorted(set(table["task"]) | set(failed_tasks))
    records = [
        _summary_row(str(task), table[table["task"] == task], int((failed_tasks == task).sum()))
        for task in tasks
    ]
    records.append(_summary_row("all", table, len(failed_tasks)))
    return pd.DataFrame(records, columns=SUMMARY_COLUMNS)


def _summary_row(task: str, group: pd.DataFrame, failed: int) -> dict[str, Any]:
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
        "failed": failed,
    }


@register_analysis
class EvalAnalysis(Analysis):
    name = "eval"
    help = "multiple-choice accuracy per task (optionally blind or with shuffled frames)"
    Options = EvalOptions

    def run(self, lm: VideoLM, samples: Any, options: EvalOptions, control: RunControl, **extra: Any) -> Run:
        return evaluate_run(lm, samples, control.out, options, **control.kwargs())

    def summary(self, run: Run) -> list[str]:
        result = EvalResult.from_run(run)
        mode = EvalOptions(
            **{k: v for k, v in result.settings.items() if k in EvalOptions.__dataclass_fields__}
        )
        lines = [f"{mode.mode}; accuracy over labelled samples (argmax over the whole vocabulary)"]
        lines.append(f"{'task':<18} {'n':>5} {'accuracy':>9} {'letters':>8} {'chance':>7} {'failed':>7}")
        for row in result.summary.itertuples():
            lines.append(
                f"{row.task:<18} {row.n:>5} {row.accuracy:>9.3f} {row.accuracy_letter:>8.3f} "
                f"{row.chance:>7.3f} {row.failed:>7}"
            )
        return lines

    def summary_json(self, run: Run) -> dict[str, Any]:
        return EvalResult.from_run(run).to_dict()
