"""Report sections contributed by analyses: each owns a small builder, the report composes them.

A builder takes an open `Run` and returns a `Section` (or None when the run holds nothing for it). The
report renders every section in `order`: a title, a caption saying what was measured and how, its
plotly figures and an optional HTML table (already escaped: build it with `markupsafe.escape`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import jinja2
from markupsafe import Markup

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from flowlens.store.run import Run


@dataclass
class Section:
    """One block of the report: `id` is its anchor, `figures` maps element ids to plotly figures."""

    id: str
    title: str
    caption: str
    figures: dict[str, go.Figure | dict] = field(default_factory=dict)  # a go.Figure or a plain figure dict
    html: Markup = field(default_factory=lambda: Markup(""))
    on_request: dict[str, go.Figure | dict] = field(default_factory=dict)  # drawn when the reader opens them


_BUILDERS: list[tuple[int, str, Callable[[Run], Section | None]]] = []


def register_section(name: str, builder: Callable[[Run], Section | None], order: int = 100) -> None:
    """Add (or replace) the section builder called `name`; sections render by `order`, then name."""
    _BUILDERS[:] = [b for b in _BUILDERS if b[1] != name]
    _BUILDERS.append((order, name, builder))
    _BUILDERS.sort(key=lambda b: (b[0], b[1]))


def build_sections(run: Run) -> list[Section]:
    """Every registered section this run has something for (built-in analyses registered first)."""
    from flowlens.analyses.registry import analyses
    from flowlens.report import builtin  # noqa: F401 (registers the trace, knockout and pathways sections)

    analyses()  # importing the analyses registers their sections
    return [section for _, _, builder in _BUILDERS if (section := builder(run)) is not None]


_SNIPPETS = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def render_html(template: str, **context: object) -> Markup:
    """A small HTML fragment from a jinja2 template string, every value autoescaped."""
    return Markup(_SNIPPETS.from_string(template).render(**context))


def who(run: Run, n: int | None = None, what: str = "samples") -> str:
    """`model M, N samples` for captions (N defaults to the run's complete samples)."""
    model = run.model_info.get("model") or run.config.get("model") or "unknown model"
    count = len(run.samples) if n is None else n
    return f"model {model}, {count} {what}"
