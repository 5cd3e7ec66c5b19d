"""`trace` over many samples: one HDF5 run file, failures recorded per sample, resumable, with a progress bar."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from flowlens.analyses.trace import TraceOptions, trace_sample
from flowlens.data.sample import Sample
from flowlens.errors import FlowlensError, SampleError
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run, open_run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

RUN_FILE = "trace.h5"
REPORT_FILE = "report.html"


def default_out_dir() -> Path:
    """A fresh folder under artifacts/ for a run without --out."""
    return Path("artifacts") / time.strftime("trace-%Y%m%d-%H%M%S")


def run_config(lm: VideoLM, options: TraceOptions, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved configuration written into the run file (and compared on --resume)."""
    return {
        "analysis": "trace",
        "model": lm.name,
        "revision": lm.revision,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "template": lm.template.to_dict(),
        **asdict(options),
        **(extra or {}),
    }


def trace(
    lm: VideoLM,
    samples: Iterable[Sample],
    out: str | Path | None = None,
    options: TraceOptions | None = None,
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = True,
    config_extra: dict[str, Any] | None = None,
) -> Run:
    """Trace every sample into `out/trace.h5` (and `out/report.html`); return the opened `Run`.

    A sample that cannot be prepared (missing video, no options, answer not an option, too long) is
    recorded as failed with its reason and the run goes on; so is a dataset line that failed to load
    (`samples.failures`, id `<file>:<line>`). With `resume`, finished samples are skipped.
    """
    options = options or TraceOptions()
    out_dir = Path(out) if out is not None else default_out_dir()
    path = out_dir / RUN_FILE
    load_failures = list(getattr(samples, "failures", []))  # dataset lines that never became samples
    samples = list(samples)
    model_info = {
        "model": lm.name,
        "revision": lm.revision,
        "family": lm.family,
        "architecture": lm.model.config.architectures[0],
    }
    config = run_config(lm, options, config_extra)
    with RunWriter(path, config, model_info, resume=resume, overwrite=overwrite) as writer:
        for failure in load_failures:
            writer.write_failure(
                f"{Path(failure.source).name}:{failure.line}", failure.reason, {"line": failure.line}
            )
        done = set(writer.completed_ids())
        todo = [s for s in samples if str(s.id) not in done]
        for sample in tqdm(todo, desc="trace", unit="sample", disable=not progress):
            try:
                writer.write_sample(trace_sample(lm, sample, options))
            except (SampleError, FlowlensError) as exc:
                writer.write_failure(str(sample.id), str(exc), sample.metadata)
    run = open_run(path)
    if report:
        from flowlens.report.html import write_report

        write_report(run, out_dir / REPORT_FILE)
    return run
