"""User-facing errors: one line that says what went wrong and what to do (the CLI exits 2 on them)."""

from __future__ import annotations

import errno
import os
import re


class FlowlensError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class ModelNotFoundError(FlowlensError):
    """The model name is neither a known alias, a local folder, nor a reachable Hub id."""


class UnsupportedArchitectureError(FlowlensError):
    """The checkpoint's architecture has no flowlens adapter."""


class LayoutError(FlowlensError):
    """The token layout could not be derived exactly from the processor outputs."""


class SampleError(FlowlensError):
    """A sample (video, question, options, answer) is unusable; the reason is recorded per sample."""


class UsageError(FlowlensError):
    """The command line or call is inconsistent (found before any work is done); the CLI exits 2."""


class DiskFullError(FlowlensError):
    """The file system refused to store more (disk full, quota, file size limit); the CLI exits 4."""


class LaunchStoppedError(FlowlensError):
    """A rank of a multi-process launch died (or the launcher stopped this one); the CLI exits 4."""


class NothingToDoError(FlowlensError):
    """Nothing could be run: no sample selected, or no sample succeeded where one was needed; the CLI exits 3."""


# Exit codes of every `flowlens` command (docs/cli.md).
EXIT_OK = 0  # every sample succeeded
EXIT_SOME_FAILED = 1  # some samples failed (reasons in the run file); the others are written
EXIT_USAGE = 2  # bad arguments or input found before any work
EXIT_NOTHING = 3  # no sample succeeded, or nothing to do
EXIT_INTERNAL = 4  # a bug, a broken mechanism (CompatError), a full disk (DiskFullError), a rank that died

# Write errors that mean "no room": what the CLI then says is wrong.
NO_SPACE = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached",
}


def no_space(exc: BaseException) -> int | None:
    """The errno of a write refused for lack of room (`NO_SPACE`), else None; h5py may give it only in its message."""
    code = getattr(exc, "errno", None)
    if code not in NO_SPACE:
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    return code if code in NO_SPACE else None


def disk_full(path: str | os.PathLike[str], code: int) -> DiskFullError:
    """The one-line error for a write of `path` refused with `code` (one of `NO_SPACE`)."""
    return DiskFullError(
        f"{NO_SPACE[code]}: cannot write {path} ({os.strerror(code)}); free some space, then run the "
        "same command with --resume (what was finished is kept)"
    )
