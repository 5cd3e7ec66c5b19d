"""User-facing errors: one line that says what went wrong and what to do (the CLI exits 2 on them)."""

from __future__ import annotations


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


class NothingToDoError(FlowlensError):
    """Nothing could be run: no sample selected, or no sample succeeded where one was needed; the CLI exits 3."""


# Exit codes of every `flowlens` command (docs/cli.md).
EXIT_OK = 0  # every sample succeeded
EXIT_SOME_FAILED = 1  # some samples failed (reasons in the run file); the others are written
EXIT_USAGE = 2  # bad arguments or input found before any work
EXIT_NOTHING = 3  # no sample succeeded, or nothing to do
EXIT_INTERNAL = 4  # a bug, or a dependency that broke a mechanism (CompatError)
