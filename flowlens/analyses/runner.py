"""The loop every dataset-level analysis shares: one HDF5 run file, a progress bar, failures recorded
per sample with their reason, resume, and the HTML report at the end."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from flowlens.compat import CompatError
from flowlens.data.sample import Sample
from flowlens.errors import FlowlensError, SampleError
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run, open_run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

REPORT_FILE = "report.html"


def default_out_dir(analysis: str) -> Path:
    """A fresh folder under artifacts/ for a run without --out."""
    return Path("artifacts") / time.strftime(f"{analysis}-%Y%m%d-%H%M%S")


def base_config(lm: VideoLM, analysis: str) -> dict[str, Any]:
    """Config keys every run records: the analysis, the model and how prompts were built."""
    return {
        "analysis": analysis,
        "model": lm.name,
        "revision": lm.revision,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "template": lm.template.to_dict(),
    }


def model_info(lm: VideoLM) -> dict[str, Any]:
    return {
        "model": lm.name,
        "revision": lm.revision,
        "family": lm.family,
        "architecture": lm.model.config.architectures[0],
    }


@dataclass
class RunControl:
    """Where a run goes and how it treats an existing run file (shared by trace, knockout and pathways)."""

    out: str | Path | None = None  # folder; default artifacts/<analysis>-<time>
    resume: bool = False
    overwrite: bool = False
    report: bool = True
    progress: bool = True
    config_extra: dict[str, Any] = field(default_factory=dict)

    def path(self, analysis: str, run_file: str) -> Path:
        return (Path(self.out) if self.out is not None else default_out_dir(analysis)) / run_file


def run_analysis(
    lm: VideoLM,
    samples: Iterable[Sample],
    analysis: str,
    run_file: str,
    settings: dict[str, Any],
    write_one: Callable[[RunWriter, Sample], None],
    control: RunControl,
) -> Run:
    """`run_over_samples` with the config every run records (model, template, `settings`, extras)."""
    config = {**base_config(lm, analysis), **settings, **control.config_extra}
    return run_over_samples(
        lm,
        samples,
        control.path(analysis, run_file),
        config,
        write_one,
        control.resume,
        control.overwrite,
        control.report,
        control.progress,
    )


def run_over_samples(
    lm: VideoLM,
    samples: Iterable[Sample],
    path: Path,
    config: dict[str, Any],
    write_one: Callable[[RunWriter, Sample], None],
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
) -> Run:
    """Call `write_one(writer, sample)` for each sample not yet in `path`; record failures; write the report.

    A sample that cannot be used (missing video, no options, answer not an option, too long) is recorded
    as failed with its reason and the run goes on; so is a dataset line that failed to load
    (`samples.failures`, id `<file>:<line>`). With `resume`, finished samples are skipped.
    """
    load_failures = list(getattr(samples, "failures", []))  # dataset lines that never became samples
    samples = list(samples)
    with RunWriter(path, config, model_info(lm), resume=resume, overwrite=overwrite) as writer:
        for failure in load_failures:
            writer.write_failure(
                f"{Path(failure.source).name}:{failure.line}", failure.reason, {"line": failure.line}
            )
        done = set(writer.completed_ids())
        todo = [s for s in samples if str(s.id) not in done]
        for sample in tqdm(todo, desc=str(config["analysis"]), unit="sample", disable=not progress):
            try:
                write_one(writer, sample)
            except CompatError:
                raise  # the installed transformers broke a mechanism: every sample would be wrong
            except (SampleError, FlowlensError) as exc:
                writer.write_failure(str(sample.id), str(exc), sample.metadata)
    run = open_run(path)
    if report:
        from flowlens.report.html import write_report

        write_report(run, path.parent / REPORT_FILE)
    return run
