"""Analyses register themselves here; the CLI builds one subcommand per entry (no long `cli.py` to edit).

An analysis is a subclass of `Analysis` with an `Options` dataclass (its flags, settings and resume
check derive from it, see `flowlens.analyses.options`), a `run` entry point through the shared run loop,
and a `summary` for the terminal. Optional hooks parse extra flags (`add_arguments`/`resolve`, before the
model loads) and check the options against the model (`check`, before any sample runs).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from flowlens.errors import FlowlensError, UsageError

if TYPE_CHECKING:
    from flowlens.analyses.runner import RunControl
    from flowlens.models.base import VideoLM
    from flowlens.store.run import Run

_BUILTIN = (
    "flowlens.analyses.evaluate",
    "flowlens.analyses.trace_run",
    "flowlens.analyses.knockout_run",
    "flowlens.analyses.pathways",
    "flowlens.analyses.lens",
    "flowlens.analyses.debias",
    "flowlens.analyses.patch",
    "probes.analysis",
    "flowlens.analyses.prune",
)
_ANALYSES: dict[str, Analysis] = {}


class Analysis:
    """One run-file analysis: `<name>.h5` and `<name>.html` in the output folder, `flowlens <name>` on the CLI."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    Options: ClassVar[type]

    @property
    def run_file(self) -> str:
        return f"{self.name}.h5"

    @property
    def report_file(self) -> str:
        return f"{self.name}.html"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Flags beyond the options dataclass (e.g. a preset or a rules file)."""

    def resolve(self, args: argparse.Namespace, options: Any) -> dict[str, Any]:
        """Extra keyword arguments of `run` from those flags; raise FlowlensError on bad input (before loading)."""
        return {}

    def check(self, lm: VideoLM, options: Any, extra: dict[str, Any]) -> list[str]:
        """Refuse options the model cannot run (FlowlensError); return warnings to print."""
        return []

    def announce(self, lm: VideoLM, samples: Any, options: Any) -> list[str]:
        """Lines printed before the run (sizes, time); raise FlowlensError to refuse it (e.g. over --max-gb)."""
        return []

    def run(self, lm: VideoLM, samples: Any, options: Any, control: RunControl, **extra: Any) -> Run:
        raise NotImplementedError

    def from_run(self, source: Path, options: Any, control: RunControl, **extra: Any) -> Run:
        """Run on an existing run folder instead of a model and a dataset (`flowlens <name> RUN_DIR`).

        Analyses that can (e.g. a lens or probes over stored activations) override this; `control.out`
        defaults to the source folder.
        """
        raise UsageError(
            f"`flowlens {self.name}` runs on a model and a dataset, not on an existing run folder"
        )

    def summary(self, run: Run) -> list[str]:
        """Lines the CLI prints after the run (besides the counts and failures)."""
        return []

    def summary_json(self, run: Run) -> dict[str, Any]:
        """What `--json` prints about the run's results."""
        return {"summary": self.summary(run)}


def register_analysis(cls: type[Analysis]) -> type[Analysis]:
    """Class decorator: make an analysis available to `flowlens <name>` and `analysis(name)`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _ANALYSES[cls.name] = cls()
    return cls


def analyses() -> dict[str, Analysis]:
    """Every registered analysis by name: the built-in ones (imported on first use) in `_BUILTIN` order, then
    others in registration order, so the CLI and its generated docs never depend on what was imported first."""
    for module in _BUILTIN:
        importlib.import_module(module)
    rank = {module: i for i, module in enumerate(_BUILTIN)}
    order = sorted(_ANALYSES, key=lambda name: rank.get(type(_ANALYSES[name]).__module__, len(rank)))
    return {name: _ANALYSES[name] for name in order}


def analysis(name: str) -> Analysis:
    found = analyses()
    if name not in found:
        raise FlowlensError(f"unknown analysis {name!r}; analyses: {', '.join(found)}")
    return found[name]
