"""Data-parallel runs under real launchers (torchrun, accelerate launch) on CPU with gloo (issue 16).

Each launch test starts two processes on the toy model and compares the merged run file with a
single-process run of the same samples, table by table (rows in any order, values exact).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import flowlens
from flowlens import distributed
from flowlens.analyses.runner import RunControl
from flowlens.cli import main
from flowlens.errors import UsageError

ROOT = Path(flowlens.__file__).resolve().parents[1]
DATA = ["--dataset", "synthetic", "--split", "test"]
KNOCKOUT = ["--window", "1", "--centres", "0", "1", "--frames", "2"]
LAUNCH_TIMEOUT = 240


def canonical(table: pd.DataFrame) -> pd.DataFrame:
    """The table with categories as text and rows sorted by every column: equal tables compare equal."""
    table = table.copy()
    for column in table.columns:
        if isinstance(table[column].dtype, pd.CategoricalDtype):
            table[column] = table[column].astype(str)
    return table.sort_values(list(table.columns), na_position="first").reset_index(drop=True)


def assert_same_run(expected: Path, got: Path) -> None:
    """Same samples (each once), same failures, same tables with identical values, order aside."""
    with flowlens.open_run(expected) as a, flowlens.open_run(got) as b:
        assert sorted(b.samples) == sorted(a.samples) and len(set(b.samples)) == len(b.samples)
        assert b.failures == a.failures
        assert b.tables() == a.tables()
        for name in a.tables():
            pd.testing.assert_frame_equal(
                canonical(b.table(name)), canonical(a.table(name)), check_exact=True
            )
    leftovers = [p.name for p in got.parent.iterdir() if ".rank" in p.name]
    assert not leftovers, f"shards or status files left after the merge: {leftovers}"


def launch(
    launcher: list[str], args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`launcher -m flowlens args` as a user would type it, with this checkout on the path."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(key, None)
    return subprocess.run(
        [*launcher, "-m", "flowlens", *args],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
        env=full_env,
        cwd=ROOT,
    )


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]


def accelerate(n: int) -> list[str]:
    with socket.socket() as s:  # a free port: other launches on this machine may hold the default one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # --multi_gpu is accelerate's torch-elastic launcher; without CUDA it runs its processes on CPU (gloo)
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]


def single(tmp_path: Path, command: str, *args: str) -> Path:
    """The reference: the same command in this process (one rank), on one thread as each launched rank
    (float32 sums over another number of threads may differ in the last bit)."""
    out = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([command, "toy", *args, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out / f"{command}.h5"


# ------------------------------------------------------------------ without a launcher
def test_shard_names_and_a_world_from_the_environment(tmp_path, monkeypatch):
    run = tmp_path / "trace.h5"
    assert distributed.shard_path(run, 3).name == "trace.rank003.h5"
    for name in ("trace.rank000.h5", "trace.rank012.h5", "trace.rank001.status.json", "other.rank000.h5"):
        (tmp_path / name).write_text("")
    assert [p.name for p in distributed.shards(run)] == ["trace.rank000.h5", "trace.rank012.h5"]
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.world() == distributed.World(2, 4, 0)
    assert distributed.label() == "flowlens[rank 2/4]"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key)
    assert distributed.world() == distributed.World() and distributed.label() == "flowlens"
    assert distributed.share({"x": 1}) == {"x": 1}  # one process: nothing to broadcast


def test_status_files_say_where_each_rank_stopped(tmp_path):
    run = tmp_path / "trace.h5"
    distributed.write_status(run, 0, working=None, done=3, finished=True)
    distributed.write_status(run, 1, working="s7", done=2, error="boom")
    said = distributed.describe(run, distributed.World(0, 3))
    assert said == (
        "rank 0 (this rank): finished (3 samples); rank 1: stopped on sample 's7' after 2 samples, "
        "failed: boom; rank 2: no sample started"
    )
    distributed.clear_statuses(run)
    assert distributed.read_statuses(run) == {}


def test_shards_alone_are_a_run_to_resume_not_to_overwrite_silently(tmp_path):
    (tmp_path / "trace.rank001.h5").write_text("")
    RunControl(out=tmp_path, resume=True).check("trace.h5")  # a killed launch left only shards
    with pytest.raises(UsageError, match=r"trace\.rank001\.h5 already exists: add --resume"):
        RunControl(out=tmp_path).check("trace.h5")
    with pytest.raises(UsageError, match="nothing to resume"):
        RunControl(out=tmp_path / "empty", resume=True).check("trace.h5")


# ------------------------------------------------------------------ real launches (gloo on CPU)
def test_torchrun_two_ranks_trace_equals_one_process(tmp_path):
    args = ["trace", "toy", *DATA, "--limit", "8"]
    result = launch(torchrun(2), [*args, "--out", str(tmp_path / "two")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trace: 8 samples into") == 1  # rank 0 alone reports
    assert_same_run(single(tmp_path, "trace", *DATA, "--limit", "8"), tmp_path / "two" / "trace.h5")


def test_torchrun_two_ranks_knockout_equals_one_process(tmp_path):
    args = ["knockout", "toy", *DATA, "--limit", "4", *KNOCKOUT]
    result = launch(torchrun(2), [*args, "--out", str(tmp_path / "two")])
    assert result.returncode == 0, result.stderr[-3000:]
    reference = single(tmp_path, "knockout", *DATA, "--limit", "4", *KNOCKOUT)
    assert_same_run(reference, tmp_path / "two" / "knockout.h5")


def test_torchrun_two_ranks_prune_from_a_trace_run_equals_one_process(tmp_path):
    """`flowlens prune RUN_DIR` under a launcher: the ranks share the stored trace and split its samples."""
    assert main(["trace", "toy", *DATA, "--limit", "4", "--out", str(tmp_path / "t")]) == 0
    args = ["prune", str(tmp_path / "t"), "--spec", "fastv"]
    result = launch(torchrun(2), [*args, "--out", str(tmp_path / "two")])
    assert result.returncode == 0, result.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert_same_run(tmp_path / "one" / "prune.h5", tmp_path / "two" / "prune.h5")


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="accelerate is not installed")
def test_accelerate_launch_two_processes_trace_equals_one_process(tmp_path):
    args = ["trace", "toy", *DATA, "--limit", "6"]
    result = launch(accelerate(2), [*args, "--out", str(tmp_path / "two")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(single(tmp_path, "trace", *DATA, "--limit", "6"), tmp_path / "two" / "trace.h5")


def test_a_killed_rank_fails_the_launch_and_one_rank_resumes_it(tmp_path):
    """Rank 1 is SIGKILLed while on its third sample: the launch fails naming it; the shards stay readable;
    `--resume` on one process finishes the run with every sample exactly once."""
    out = tmp_path / "two"
    args = ["trace", "toy", *DATA, "--limit", "10", "--out", str(out)]
    result = launch(torchrun(2), args, env={distributed.FAULT: "1:2:kill"})
    assert result.returncode != 0
    assert "exitcode  : -9" in result.stderr and "rank      : 1" in result.stderr  # torchrun's account
    said = [line for line in result.stderr.splitlines() if line.startswith("flowlens[rank 0/2]: error:")]
    assert len(said) == 1, result.stderr[-3000:]
    assert "rank 1: stopped on sample 'syn3003-00005' after 2 samples" in said[0]  # todo[1::2][2]
    assert not (out / "trace.h5").exists()
    with flowlens.open_run(out / "trace.rank001.h5") as shard:  # killed mid-run, still readable
        assert sorted(shard.samples) == ["syn3003-00001", "syn3003-00003"]
    with flowlens.open_run(out / "trace.rank000.h5") as shard:
        kept = len(shard.samples)
    assert main(["trace", "toy", *DATA, "--limit", "10", "--out", str(out), "--resume"]) == 0
    assert_same_run(single(tmp_path, "trace", *DATA, "--limit", "10"), out / "trace.h5")
    assert kept >= 1


def test_a_rank_that_raises_names_itself_and_its_sample(tmp_path):
    out = tmp_path / "two"
    result = launch(
        torchrun(2),
        ["trace", "toy", *DATA, "--limit", "4", "--out", str(out)],
        {distributed.FAULT: "1:1:raise"},
    )
    assert result.returncode != 0
    lines = [
        line for line in result.stderr.splitlines() if line.startswith("flowlens[rank 1/2]: internal error:")
    ]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "fault injected" in lines[0] and "(rank 1 was working on sample 'syn3003-00003')" in lines[0]
    status = distributed.read_statuses(out / "trace.h5")[1]
    assert (
        status["working"] == "syn3003-00003" and status["done"] == 1 and "fault injected" in status["error"]
    )


def test_merge_copies_in_batches_and_a_finished_sample_beats_its_failure(tmp_path):
    """`absorb` in batches of 2: every complete sample once, a failure dropped where another shard finished
    the sample, a half-copied leftover (temporary name) replaced."""
    import dataclasses

    from flowlens.store.hdf5 import RunWriter

    assert main(["trace", "toy", *DATA, "--limit", "1", "--out", str(tmp_path / "one")]) == 0
    with flowlens.open_run(tmp_path / "one" / "trace.h5") as run:
        trace, config, info = run.sample(run.samples[0]), run.config, run.model_info
    a, b, merged = tmp_path / "t.rank000.h5", tmp_path / "t.rank001.h5", tmp_path / "t.h5"
    with RunWriter(a, config, info) as writer:
        for i in range(5):
            writer.write_sample(dataclasses.replace(trace, sample_id=f"s{i}"))
        writer.write_failure("s9", "video missing")
    with RunWriter(b, config, info) as writer:
        writer.write_failure("s1", "out of memory")  # finished by rank 0 in another launch
        writer.write_sample(dataclasses.replace(trace, sample_id="s9"))  # retried and finished here
        writer.write_sample(dataclasses.replace(trace, sample_id="s5"))
    with RunWriter(merged, config, info) as writer:
        assert writer.absorb(a, batch=2) == (5, 1)
        assert writer.absorb(b, batch=2) == (2, 0)
        assert writer.absorb(b, batch=2) == (0, 0)  # nothing twice
    with flowlens.open_run(merged) as run:
        assert sorted(run.samples) == ["s0", "s1", "s2", "s3", "s4", "s5", "s9"]
        assert run.failures == {}
        np.testing.assert_array_equal(run.sample("s9").frame_flow, trace.frame_flow)
