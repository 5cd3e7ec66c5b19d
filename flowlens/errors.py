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
