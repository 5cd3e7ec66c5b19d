"""Data-parallel runs under `torchrun` or `accelerate launch`: which rank this is, its shard of samples, its file.

The launcher does the rendezvous and sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK` (torchrun and accelerate
both do); flowlens only reads them. Each rank takes every `world`-th sample not finished yet (in any file
of the run), writes its own shard file `<name>.rank003.h5` (HDF5 has no safe concurrent writer) and a
small status file saying which sample it works on; when all ranks are done, rank 0 merges the shards
into the usual `<name>.h5`, so readers, `export` and the report see one run. A killed multi-rank run
resumes on any number of ranks: finished samples are found in the merged file and in every shard.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

SHARD = re.compile(r"^(?P<stem>.+)\.rank(?P<rank>\d{3,})\.h5$")


@dataclass(frozen=True)
class World:
    """This process's place in a launch: `rank` of `size` processes, `local_rank` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def world() -> World:
    """The launch this process is part of, from the launcher's environment (one process when none)."""
    try:
        return World(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError:
        return World()


def init(current: World | None = None, timeout_s: float = 3600.0) -> World:
    """Join the launcher's process group (gloo on CPU, nccl on CUDA) if this is a multi-process launch."""
    current = current or world()
    if current.parallel:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return current


def barrier(current: World | None = None) -> None:
    """Wait for every rank (a no-op in a single process)."""
    current = current or world()
    if current.parallel:
        import torch.distributed as dist

        dist.barrier()


def share(value: Any, current: World | None = None) -> Any:
    """Rank 0's `value` on every rank (a no-op in a single process): ranks then agree on what to run."""
    current = current or world()
    if not current.parallel:
        return value
    import torch.distributed as dist

    box = [value if current.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def label(current: World | None = None) -> str:
    """`flowlens` in a single process, `flowlens[rank 1/4]` in a launch: the prefix of every printed line."""
    current = current or world()
    return f"flowlens[rank {current.rank}/{current.size}]" if current.parallel else "flowlens"


class Stopped(BaseException):
    """The launcher asked this rank to stop (SIGTERM: torchrun does so when another rank dies)."""


def on_stop(current: World | None = None) -> Any:
    """In a launch, turn SIGTERM into `Stopped` (so shards close and the rank says where it was); returns
    the previous handler for `restore_stop` (None when nothing was changed)."""
    current = current or world()
    if not current.parallel:
        return None
    try:
        return signal.signal(signal.SIGTERM, _raise_stopped)
    except ValueError:  # not the main thread: leave the default
        return None


def restore_stop(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _raise_stopped(signum: int, frame: Any) -> None:
    raise Stopped()


FAULT = "FLOWLENS_TEST_FAULT"  # "<rank>:<samples>:kill|raise": tests make a rank die after that many samples


def fault_point(current: World, written: int) -> None:
    """Test hook: with `FLOWLENS_TEST_FAULT=1:2:kill`, rank 1 kills itself (SIGKILL) after writing two
    samples, while on its third (`raise`: it raises instead). Does nothing without the variable."""
    spec = os.environ.get(FAULT)
    if not spec:
        return
    rank, after, how = spec.split(":")
    if int(rank) == current.rank and int(after) == written:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"fault injected by {FAULT}={spec}")


def device(requested: str | None, current: World | None = None) -> str | None:
    """The device a rank loads its model on: `cuda` (or `auto` with CUDA) becomes this rank's own GPU."""
    current = current or world()
    if not current.parallel or requested not in ("cuda", "auto"):
        return requested
    import torch

    if torch.cuda.is_available():
        return f"cuda:{current.local_rank}"
    return "cpu" if requested == "auto" else requested


def shard_path(path: Path, rank: int) -> Path:
    """Rank `rank`'s shard file of run file `path` (`trace.h5` -> `trace.rank003.h5`)."""
    return path.with_name(f"{path.stem}.rank{rank:03d}.h5")


def shards(path: Path) -> list[Path]:
    """Every shard file of run file `path` in its folder, whatever world size wrote it."""
    found = []
    for candidate in sorted(path.parent.glob(f"{path.stem}.rank*.h5")):
        match = SHARD.match(candidate.name)
        if match and match["stem"] == path.stem:
            found.append(candidate)
    return found


def status_path(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.stem}.rank{rank:03d}.status.json")


def write_status(path: Path, rank: int, **state: Any) -> None:
    """Record what rank `rank` is doing (the sample it works on, how many it finished) for the others to read."""
    target = status_path(path, rank)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(state))
    partial.replace(target)


def read_statuses(path: Path) -> dict[int, dict[str, Any]]:
    """Every rank's last status for run file `path` (ranks of earlier launches included)."""
    out = {}
    for candidate in path.parent.glob(f"{path.stem}.rank*.status.json"):
        match = re.match(rf"^{re.escape(path.stem)}\.rank(\d+)\.status\.json$", candidate.name)
        if match:
            try:
                out[int(match[1])] = json.loads(candidate.read_text())
            except (OSError, ValueError):
                continue
    return dict(sorted(out.items()))


def describe(path: Path, current: World) -> str:
    """What each rank of this launch was doing, from the status files (`rank 1: working on sample 'x', 3 done`)."""
    statuses = read_statuses(path)
    parts = []
    for rank in range(current.size):
        status = statuses.get(rank)
        who = f"rank {rank}" + (" (this rank)" if rank == current.rank else "")
        if status is None:
            parts.append(f"{who}: no sample started")
        elif status.get("finished"):
            parts.append(f"{who}: finished ({status.get('done', 0)} samples)")
        else:
            what = f"sample {status.get('working')!r}" if status.get("working") else "no sample"
            error = f", failed: {status['error']}" if status.get("error") else ""
            parts.append(f"{who}: stopped on {what} after {status.get('done', 0)} samples{error}")
    return "; ".join(parts)


def wait_for_ranks(path: Path, current: World, progress: Callable[[int], None] | None = None) -> None:
    """Wait (in Python, so SIGTERM still stops it) until every rank of this launch has finished its
    share, calling `progress(samples done over all ranks)`; rank 0 raises `LaunchStoppedError` as soon as
    a rank reports an error or its process is gone from this machine."""
    from flowlens.errors import LaunchStoppedError

    host = socket.gethostname()
    while True:
        statuses = read_statuses(path)
        mine = [statuses.get(rank, {}) for rank in range(current.size)]
        if all(status.get("finished") for status in mine):
            return
        if progress is not None:
            progress(sum(int(status.get("done", 0)) for status in mine))
        for rank, status in enumerate(mine):
            if status.get("finished") or not current.main:
                continue
            gone = status.get("host") == host and not _alive(int(status.get("pid", 0)))
            if status.get("error") or gone:
                why = "failed" if status.get("error") else f"died (process {status.get('pid')} is gone)"
                raise LaunchStoppedError(
                    f"rank {rank} {why}: {describe(path, current)}; finished samples are kept in the shard "
                    "files: rerun with --resume (on any number of ranks)"
                )
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # unknown: assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_statuses(path: Path) -> None:
    for candidate in path.parent.glob(f"{path.stem}.rank*.status.json"):
        candidate.unlink(missing_ok=True)
