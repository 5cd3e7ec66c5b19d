"""Kill points and a full disk: a run killed (SIGKILL) or starved of space at each stage reopens and resumes.

Each killed run is a real `flowlens` CLI run in a child process. To keep the file fast, one helper process
imports flowlens once and forks a child per run; the child installs test-only hooks (monkeypatches, nothing
in the library) that SIGKILL it at the k-th sample write, failure write or report write named by
`FLOWLENS_TEST_KILL` (`sample:2`, `failure:1`, `report:1`), in the middle of that write, or (`fsize:2`)
that set a file size limit just before the k-th sample write so that HDF5's own writes fail, as they do
on a full disk. Every stopped run is then resumed and compared with an uninterrupted run of the same
samples. A full disk is also simulated in this process, by a dataset creation that raises ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
from test_data import write_mp4

import flowlens
from flowlens.cli import main
from flowlens.errors import DiskFullError
from flowlens.report import html
from flowlens.store import hdf5

TRACE = ["trace", "tiny:llava_next_video", "--frames", "4"]
KNOCKOUT = [
    "knockout",
    "tiny:llava_next_video",
    "--dataset",
    "synthetic",
    "--limit",
    "3",
    "--frames",
    "4",
    "--preset",
    "vql-to-ql",
    "--window",
    "3",
]
TRACE_TABLES = ("answers", "flow_summary", "frame_flow")
KNOCKOUT_TABLES = ("answers", "knockout")

# The helper process: import everything once, install the kill hooks, then fork one child per request.
FORKER = r"""
import builtins, io, json, os, resource, signal, sys

import flowlens.cli
import flowlens.report.html
from flowlens.analyses.registry import analyses
from flowlens.store import hdf5

analyses()  # every analysis module imported before the first fork
counts = {}


def hit(stage):
    # True at the k-th call of `stage` when FLOWLENS_TEST_KILL is `stage:k`.
    name, _, k = os.environ.get("FLOWLENS_TEST_KILL", "").partition(":")
    if name != stage:
        return False
    counts[stage] = counts.get(stage, 0) + 1
    return counts[stage] == int(k)


def die(file=None):
    if file is not None:
        file.flush()  # what was written so far reaches the file, as a cache eviction might have done
    os.kill(os.getpid(), signal.SIGKILL)


commit = hdf5.RunWriter._commit


def killing_commit(self, sample_id, fill, *rest):
    # sample:k  -> killed after the k-th sample's datasets are written, before it is marked complete
    # fsize:k   -> the k-th sample's write meets a file size limit (as a full disk: refused before it starts)
    if hit("sample"):
        return commit(self, sample_id, lambda group: (fill(group), die(group.file)), *rest)
    if hit("fsize"):
        self._file.flush()
        limit = os.path.getsize(self.path) + 4096
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return commit(self, sample_id, fill, *rest)


write_failure = hdf5.RunWriter.write_failure


def killing_write_failure(self, *args, **kwargs):
    # failure:k -> killed inside the k-th failure write, when its group exists but has no reason yet
    if hit("failure"):
        hdf5._now = lambda: die(self._file)
    return write_failure(self, *args, **kwargs)


class HalfWrite:
    # a file whose first write stores half the text, syncs it and kills the process
    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, text):
        self.file.write(text[: len(text) // 2])
        self.file.flush()
        os.fsync(self.file.fileno())
        die()

    def __getattr__(self, name):
        return getattr(self.file, name)


real_open = io.open


def killing_open(file, mode="r", *args, **kwargs):
    # report:k -> killed half-way through the k-th write of an .html file
    opened = real_open(file, mode, *args, **kwargs)
    if "w" in mode and ".html" in os.fspath(file) and hit("report"):
        return HalfWrite(opened)
    return opened


hdf5.RunWriter._commit = killing_commit
hdf5.RunWriter.write_failure = killing_write_failure
io.open = builtins.open = killing_open

print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ["FLOWLENS_TEST_KILL"] = job["kill"]
        code = 99
        try:
            code = flowlens.cli.main(job["argv"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    signalled = os.WIFSIGNALED(status)
    print(json.dumps({"signal": os.WTERMSIG(status) if signalled else None,
                      "code": None if signalled else os.WEXITSTATUS(status)}), flush=True)
"""


class Forker:
    """The helper process: `run(argv, kill)` runs the CLI in a fresh fork and says how it ended."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.process = subprocess.Popen(
            [sys.executable, "-c", FORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = False
        self.n = 0

    def run(self, argv: list[str], kill: str) -> tuple[dict[str, Any], str]:
        """Run `flowlens <argv>` with the kill point `kill`; return how it ended and its output."""
        assert self.process.stdin is not None and self.process.stdout is not None
        if not self.ready:
            assert self.process.stdout.readline().strip() == "ready", "the helper process did not start"
            self.ready = True
        self.n += 1
        log = self.logs / f"child{self.n}.log"
        self.process.stdin.write(json.dumps({"argv": argv, "kill": kill, "log": str(log)}) + "\n")
        self.process.stdin.flush()
        ended = json.loads(self.process.stdout.readline())
        return ended, log.read_text()

    def killed(self, argv: list[str], kill: str) -> None:
        """Run `flowlens <argv>` and check the kill point was reached (the child died of SIGKILL)."""
        ended, output = self.run(argv, kill)
        assert ended["signal"] == signal.SIGKILL, f"{kill} was never reached: {ended}\n{output[-3000:]}"

    def close(self) -> None:
        """Stop the helper (it has no child left: each request waits for its child)."""
        self.process.kill()
        self.process.communicate()


@pytest.fixture(scope="module")
def forker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forker]:
    if not hasattr(os, "fork"):
        pytest.skip("the kill points need os.fork")
    helper = Forker(tmp_path_factory.mktemp("logs"))  # imports while the reference runs are computed
    yield helper
    helper.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three good clips, one missing video and one line that is not JSON (a load failure written first)."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    good = {"question": "What moved?", "options": ["red ball", "blue box"], "answer": "A"}
    lines = []
    for name in ("a", "missing", "b", "c"):
        if name != "missing":
            write_mp4(folder / f"{name}.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
        lines.append(json.dumps({"id": name, "video": f"{name}.mp4", **good}))
    lines.insert(1, "{not json")
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "data.jsonl")


@pytest.fixture(scope="module")
def reference(dataset: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted runs of the same samples, in this process (while the helper, started first, imports)."""
    out = tmp_path_factory.mktemp("reference")
    assert main([*TRACE, "--dataset", dataset, "--out", str(out / "trace")]) == 1  # two samples fail
    assert main([*KNOCKOUT, "--out", str(out / "knockout")]) == 0
    return {"trace": out / "trace" / "trace.h5", "knockout": out / "knockout" / "knockout.h5"}


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ids of the samples this process writes (a resume must write exactly the unfinished ones)."""
    written: list[str] = []
    commit = hdf5.RunWriter._commit

    def counting(self: hdf5.RunWriter, sample_id: str, fill: Any, *rest: Any) -> None:
        written.append(sample_id)
        commit(self, sample_id, fill, *rest)

    monkeypatch.setattr(hdf5.RunWriter, "_commit", counting)
    return written


def entries(path: Path, group: str = "samples") -> list[str]:
    """The names under `samples` (or `failures`) as stored, complete or not."""
    with h5py.File(path, "r", locking=False) as file:
        return sorted(file[group])


def check_readable(path: Path, samples: list[str], tables: tuple[str, ...]) -> None:
    """The file opens, lists exactly `samples` and every table loads with their rows."""
    with flowlens.open_run(path) as run:
        assert run.samples == samples
        for name in tables:
            assert set(run.table(name)["sample"].astype(str)) == set(samples), name


def tidy(table: pd.DataFrame) -> pd.DataFrame:
    """Plain columns, rows sorted by sample (stable: each sample's rows keep their stored order)."""
    plain = table.apply(lambda column: column.astype(str) if column.dtype == "category" else column)
    return plain.sort_values("sample", kind="stable").reset_index(drop=True)


def assert_same_run(path: Path, reference: Path, tables: tuple[str, ...]) -> None:
    """Same samples, failures and tables as the uninterrupted run (numbers within 1e-6)."""
    with flowlens.open_run(path) as got, flowlens.open_run(reference) as want:
        assert set(got.samples) == set(want.samples)
        assert got.failures == want.failures
        for name in tables:
            pd.testing.assert_frame_equal(
                tidy(got.table(name)), tidy(want.table(name)), check_exact=False, rtol=1e-6, atol=1e-6
            )


def resume(argv: list[str], out: Path, code: int) -> None:
    """Resume the run in `out` in this process; it must finish with `code`."""
    assert main([*argv, "--out", str(out), "--resume"]) == code


@pytest.mark.slow
def test_killed_writing_a_sample_and_again_resuming(
    forker: Forker, dataset: str, reference: dict[str, Path], commits: list[str], tmp_path: Path
) -> None:
    argv, path = [*TRACE, "--dataset", dataset], tmp_path / "trace.h5"
    forker.killed([*argv, "--out", str(tmp_path)], "sample:2")  # b's datasets written, not marked complete
    assert entries(path) == ["a"]  # b's group was never linked
    check_readable(path, ["a"], TRACE_TABLES)
    forker.killed([*argv, "--out", str(tmp_path), "--resume"], "sample:2")  # b again, then killed in c
    assert entries(path) == ["a", "b"]
    check_readable(path, ["a", "b"], TRACE_TABLES)
    resume(argv, tmp_path, 1)
    assert commits == ["c"]
    assert entries(path) == ["a", "b", "c"]
    assert_same_run(path, reference["trace"], TRACE_TABLES)


@pytest.mark.slow
def test_killed_writing_a_failure(
    forker: Forker, dataset: str, reference: dict[str, Path], commits: list[str], tmp_path: Path
) -> None:
    argv, path = [*TRACE, "--dataset", dataset], tmp_path / "trace.h5"
    forker.killed([*argv, "--out", str(tmp_path)], "failure:2")  # the missing video's, before its reason
    assert entries(path, "failures") == ["data%2Ejsonl%3A2"]  # that failure's group was never linked
    check_readable(path, ["a"], TRACE_TABLES)
    with flowlens.open_run(path) as run:
        assert list(run.failures) == ["data.jsonl:2"]  # a failure without its reason is not one
    resume(argv, tmp_path, 1)
    assert commits == ["b", "c"]
    assert_same_run(path, reference["trace"], TRACE_TABLES)


@pytest.mark.slow
def test_killed_writing_the_report(
    forker: Forker, dataset: str, reference: dict[str, Path], commits: list[str], tmp_path: Path
) -> None:
    argv, path, report = [*TRACE, "--dataset", dataset], tmp_path / "trace.h5", tmp_path / "trace.html"
    forker.killed([*argv, "--out", str(tmp_path)], "report:1")
    assert not report.exists()  # no half report where the report belongs
    check_readable(path, ["a", "b", "c"], TRACE_TABLES)
    resume(argv, tmp_path, 1)
    assert commits == []
    assert_same_run(path, reference["trace"], TRACE_TABLES)
    written = report.read_text()
    assert written.rstrip().endswith("</html>")
    forker.killed([*argv, "--out", str(tmp_path), "--resume"], "report:1")  # a rewrite, killed half-way
    assert report.read_text() == written  # the previous report is intact
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "trace.h5",
        "trace.html",
        "trace_samples",  # the per-sample pages, each written whole or not at all
    ]
    pages = [p for p in (tmp_path / "trace_samples").iterdir() if not p.name.startswith(".")]
    assert all(p.read_text().rstrip().endswith("</html>") for p in pages if p.suffix == ".html")


@pytest.mark.slow
def test_killed_knockout_run(
    forker: Forker, reference: dict[str, Path], commits: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "knockout.h5"
    forker.killed([*KNOCKOUT, "--out", str(tmp_path)], "sample:2")
    with flowlens.open_run(path) as run:
        (first,) = run.samples
        assert entries(path) == [first]
        assert set(run.table("knockout")["sample"]) == {first}
    resume(KNOCKOUT, tmp_path, 0)
    assert len(commits) == 2 and first not in commits
    assert_same_run(path, reference["knockout"], KNOCKOUT_TABLES)


def test_disk_full_stops_with_one_line_and_resumes(
    dataset: str,
    reference: dict[str, Path],
    commits: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    argv, path = [*TRACE, "--dataset", dataset], tmp_path / "trace.h5"
    create = h5py.Group.create_dataset
    full = []

    def filling(self: h5py.Group, name: str, *args: Any, **kwargs: Any) -> h5py.Dataset:
        if self.attrs.get("id") == "b" and name == "frame_flow" or full:  # the disk stays full from then on
            full.append(name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return create(self, name, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(h5py.Group, "create_dataset", filling)
        code = main([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("flowlens:")]  # tqdm writes there too
    assert full and "Traceback" not in err and len(lines) == 1, err
    assert "No space left on device" in lines[0] and str(path) in lines[0] and "--resume" in lines[0]
    assert code == 4
    assert not (tmp_path / "trace.html").exists()
    assert entries(path) == ["a"]
    check_readable(path, ["a"], TRACE_TABLES)
    commits.clear()
    resume(argv, tmp_path, 1)
    assert commits == ["b", "c"]
    assert_same_run(path, reference["trace"], TRACE_TABLES)


def test_full_disk_while_writing_the_report_keeps_the_previous_one(
    reference: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    report = html.write_report(reference["trace"], tmp_path / "trace.html")
    before = report.read_bytes()

    class Full:
        """A file that stores part of the first write, then finds the disk full."""

        def __init__(self, file: Any) -> None:
            self.file = file

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, text: str) -> int:
            self.file.write(text[:1000])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def opening(*args: Any, **kwargs: Any) -> Full:
        return Full(open(*args, **kwargs))  # noqa: SIM115 (closed by Full)

    monkeypatch.setattr(html, "open", opening, raising=False)
    with pytest.raises(DiskFullError, match=re.escape(f"disk full: cannot write {report} (")):
        html.write_report(reference["trace"], report)
    assert report.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [report, tmp_path / "trace_samples"]  # no partial report left


@pytest.mark.slow
def test_real_write_error_keeps_finished_samples(
    forker: Forker, dataset: str, reference: dict[str, Path], commits: list[str], tmp_path: Path
) -> None:
    """A file size limit (as a full disk) stops the run with one line before HDF5 writes: no link to unwritten data.

    (HDF5 itself recovers badly from a write refused half-way -- it can crash the process -- so the writer
    checks the room a sample needs first; `test_disk_full_stops_with_one_line_and_resumes` covers a refusal
    that happens during a write.)"""
    argv, path = [*TRACE, "--dataset", dataset], tmp_path / "trace.h5"
    ended, output = forker.run([*argv, "--out", str(tmp_path)], "fsize:2")  # writing b hits the limit
    lines = [line for line in output.splitlines() if line.startswith("flowlens:")]
    assert lines and "File too large" in lines[0] and str(path) in lines[0], output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert ended == {"signal": None, "code": 4}, ended
    assert entries(path) == ["a"]
    check_readable(path, ["a"], TRACE_TABLES)
    resume(argv, tmp_path, 1)
    assert commits == ["b", "c"]
    assert_same_run(path, reference["trace"], TRACE_TABLES)
