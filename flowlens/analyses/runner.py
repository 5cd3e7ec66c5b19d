"""The loop every dataset-level analysis shares: one HDF5 run file, a progress bar, failures recorded
per sample with their reason, resume, and the HTML report at the end.

What a run records splits in two: `settings` (every option, for the record) and `identity` (everything
that changes a number: model, revision, dtype, prompt template, the dataset's identity and the options
that affect results, derived from the options dataclass). A resumed run must match the stored identity
exactly; the error lists every differing key with both values.

A run stopped at any point (killed, or out of disk space) leaves a run file that opens and resumes: each
sample is marked complete only once all of it is on disk, and the report is replaced in one rename. When
the disk fills (or a quota or file size limit is reached) the run stops with a `DiskFullError` naming the
file; the CLI prints that one line and exits 4, and the same command with `--resume` continues once there
is room.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from flowlens import distributed
from flowlens.compat import CompatError
from flowlens.data.sample import Sample
from flowlens.errors import (
    DiskFullError,
    FlowlensError,
    LaunchStoppedError,
    NothingToDoError,
    SampleError,
    UsageError,
)
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run, open_run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

log = logging.getLogger("flowlens.run")
ARTIFACTS = Path("artifacts")
# Dataset settings that make a different set of samples (a resumed run must match them); a different
# slice, limit or task selection only chooses other samples of the same set, and may be resumed.
DATASET_IDENTITY = ("dataset", "data_dir", "split_name", "seed", "columns", "prompt_preset", "video_backend")


def default_out_dir(analysis: str, root: Path = ARTIFACTS) -> Path:
    """A fresh folder under artifacts/ for a run without --out: `<analysis>-<time>`, `-2`, `-3` if taken."""
    stamp = time.strftime(f"{analysis}-%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        candidate = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            candidate.mkdir(parents=True, exist_ok=False)  # claimed atomically: two runs never share one
            return candidate
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def model_config(lm: VideoLM) -> dict[str, Any]:
    """What every run records about the model and how prompts were built (all of it affects numbers)."""
    return {
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
    """Where a run goes and how it treats an existing run file (shared by every analysis).

    `dataset` is what the CLI knows about the dataset (name, split, seed, ...); its identity keys
    (`DATASET_IDENTITY`) must match on resume.
    """

    out: str | Path | None = None  # folder; default artifacts/<analysis>-<time>
    resume: bool = False
    overwrite: bool = False
    report: bool = True
    progress: bool = True
    dataset: dict[str, Any] = field(default_factory=dict)
    config_extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other: choose one")

    def check(self, run_file: str) -> None:
        """Refuse, before any work, an output that exists (without --resume/--overwrite) or a resume of nothing."""
        if self.out is None:
            if self.resume:
                raise UsageError("--resume needs --out: the folder of the run to continue")
            return
        path = Path(self.out) / run_file
        shards = distributed.shards(path)  # a killed multi-rank launch leaves only its shards
        if self.resume and not (path.is_file() or shards):
            raise UsageError(f"nothing to resume: {path} does not exist")
        if (path.exists() or shards) and not (self.resume or self.overwrite):
            found = path if path.exists() else shards[0]
            raise UsageError(
                f"{found} already exists: add --resume to continue it or --overwrite to replace it"
            )

    def kwargs(self) -> dict[str, Any]:
        """This control as keyword arguments of the analysis functions (`out` apart)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "out"}

    def folder(self, analysis: str) -> Path:
        return Path(self.out) if self.out is not None else default_out_dir(analysis)


def run_analysis(
    lm: VideoLM,
    samples: Iterable[Sample],
    analysis: str,
    settings: dict[str, Any],
    identity: dict[str, Any],
    write_one: Callable[[RunWriter, Sample], None],
    control: RunControl,
) -> Run:
    """`run_over_samples` into `<out>/<analysis>.h5` with the config every run records.

    `settings`: every option of the analysis (for the record); `identity`: those that change a number,
    plus resolved specs (block sets, rule tables). Model, template and the dataset's identity join both.
    """
    model = model_config(lm)
    dataset = dict(control.dataset)
    identity_dataset = {k: dataset[k] for k in DATASET_IDENTITY if dataset.get(k) is not None}
    config = {
        "analysis": analysis,
        **model,
        "settings": settings,
        "dataset": dataset,
        "identity": {"analysis": analysis, **model, "settings": identity, "dataset": identity_dataset},
        **control.config_extra,
    }
    control.check(f"{analysis}.h5")
    folder = control.folder(analysis)
    return run_over_samples(
        lm,
        samples,
        folder / f"{analysis}.h5",
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
    """Call `write_one(writer, sample)` for each sample not yet in the run; record failures; write the report.

    A sample that cannot be used (missing video, no options, answer not an option, too long) is recorded
    as failed with its reason and the run goes on; so is a dataset line that failed to load
    (`samples.failures`, id `<file>:<line>`). With `resume`, finished samples are skipped. A run with no
    sample at all is a `NothingToDoError`; a `CompatError` (transformers broke a mechanism) or a
    `DiskFullError` stops it. Under `torchrun` / `accelerate launch` each rank writes its own shard file
    and rank 0 merges them at the end (`flowlens.distributed`).
    """
    current = distributed.init()
    load_failures = list(getattr(samples, "failures", []))  # dataset lines that never became samples
    samples = list(samples)
    if not samples and not load_failures:
        raise NothingToDoError("no samples to run: the dataset selection is empty")
    done: set[str] = set()
    stale: list[Path] = []  # earlier launches' shards (none after an overwrite)
    if current.main:
        _prepare_launch(path, config, lm, resume, overwrite)
        stale = distributed.shards(path)
        done = _finished_in(path, stale)
    # every rank gets rank 0's view, read before any rank writes: they agree on the samples left to run
    done, stale = distributed.share((done, stale) if current.main else None, current)
    target = distributed.shard_path(path, current.rank) if current.parallel else path
    own_resume = (resume and not current.parallel) or (current.parallel and target.exists())
    previous = distributed.on_stop(current)
    try:
        with RunWriter(
            target, config, model_info(lm), resume=own_resume, overwrite=overwrite and not current.parallel
        ) as writer:
            if current.main:
                for failure in load_failures:
                    writer.write_failure(
                        f"{Path(failure.source).name}:{failure.line}",
                        failure.reason,
                        {"line": failure.line, "source": str(failure.source)},
                    )
            todo = [s for s in samples if str(s.id) not in done]
            mine = todo[current.rank :: current.size]
            bar = tqdm(
                total=len(todo),
                desc=str(config["analysis"]),
                unit="sample",
                disable=not (progress and current.main),
            )
            try:
                _run_share(writer, mine, write_one, path, current, bar)
                if current.parallel:  # every rank done and its shard closed: then rank 0 merges
                    distributed.wait_for_ranks(path, current, lambda n: bar.update(n - bar.n))
            except BaseException:
                bar.close()  # the error line then starts on a line of its own
                raise
        distributed.barrier(current)
    except distributed.Stopped:
        raise LaunchStoppedError(
            f"the launcher stopped this rank (another rank failed?): {distributed.describe(path, current)}; "
            "finished samples are kept in the shard files: rerun with --resume (on any number of ranks)"
        ) from None
    finally:
        distributed.restore_stop(previous)
    bar.update(len(todo) - bar.n)
    bar.close()
    if current.main and (current.parallel or stale):
        merge_shards(path, config, lm)
    distributed.barrier(current)
    run = open_run(path)
    if report and current.main:
        from flowlens.report.html import write_report

        write_report(run, path.with_suffix(".html"))
    return run


def _run_share(
    writer: RunWriter,
    mine: list[Sample],
    write_one: Callable[[RunWriter, Sample], None],
    path: Path,
    current: distributed.World,
    bar: Any,
) -> None:
    """Run this rank's samples; in a launch, keep its status file saying which sample it is on."""
    where = {"pid": os.getpid(), "host": socket.gethostname()}
    for n, sample in enumerate(mine):
        if current.parallel:
            distributed.write_status(path, current.rank, working=str(sample.id), done=n, **where)
        try:
            distributed.fault_point(current, n)
            _run_one(writer, sample, write_one)
        except Exception as exc:
            if current.parallel:  # the other ranks and the next launch read where this one stopped
                distributed.write_status(
                    path, current.rank, working=str(sample.id), done=n, error=str(exc), **where
                )
                exc.add_note(f"rank {current.rank} was working on sample {str(sample.id)!r}")
            raise
        bar.update(_progress(path, current, n + 1) - bar.n)
    if current.parallel:
        distributed.write_status(path, current.rank, working=None, done=len(mine), finished=True, **where)


def _run_one(writer: RunWriter, sample: Sample, write_one: Callable[[RunWriter, Sample], None]) -> None:
    """Write one sample, or record why it failed (a broken mechanism or a full disk stops the run)."""
    try:
        write_one(writer, sample)
    except (CompatError, DiskFullError, LaunchStoppedError):
        raise  # a broken mechanism or a full disk: every further sample would fail the same way
    except (SampleError, FlowlensError) as exc:
        video = sample.video if isinstance(sample.video, (str, Path)) else None
        writer.write_failure(str(sample.id), str(exc), {**sample.metadata, "source": video and str(video)})


def _prepare_launch(path: Path, config: dict[str, Any], lm: VideoLM, resume: bool, overwrite: bool) -> None:
    """Rank 0, before any rank writes: clear a run being overwritten, check a resumed one's settings (run
    file and every shard, whose half-written samples are dropped), and say what an earlier launch's ranks
    were doing when they stopped."""
    if overwrite:
        for old in [path, *distributed.shards(path)]:
            old.unlink(missing_ok=True)
        distributed.clear_statuses(path)
        return
    for existing in [path, *distributed.shards(path)]:
        if resume and existing.exists():  # refuses other settings now, not at the merge
            RunWriter(existing, config, model_info(lm), resume=True).close()
    for rank, status in distributed.read_statuses(path).items():
        if status.get("working"):
            log.warning(
                "rank %d of an earlier launch stopped while working on sample %r; it is run again",
                rank,
                status["working"],
            )
    distributed.clear_statuses(path)  # this launch's progress counts only its own ranks


def _finished_in(path: Path, shards: list[Path]) -> set[str]:
    """Ids complete in the run file or in any shard (rank 0 reads them before any rank writes)."""
    done: set[str] = set()
    for other in [path, *shards]:
        if other.exists():
            with open_run(other) as run:
                done.update(run.samples)
    return done


def _progress(path: Path, current: distributed.World, own: int) -> int:
    """Samples finished over all ranks of this launch (rank 0 reads the others' status files)."""
    if not current.parallel:
        return own
    statuses = distributed.read_statuses(path)
    return own + sum(int(statuses.get(rank, {}).get("done", 0)) for rank in range(1, current.size))


def merge_shards(path: Path, config: dict[str, Any], lm: VideoLM) -> None:
    """Rank 0: copy every shard's finished samples and failures into the run file, then remove the shards."""
    shards = distributed.shards(path)
    with RunWriter(path, config, model_info(lm), resume=path.exists()) as writer:
        for shard in shards:
            writer.absorb(shard)
    for shard in shards:
        shard.unlink(missing_ok=True)
    distributed.clear_statuses(path)
