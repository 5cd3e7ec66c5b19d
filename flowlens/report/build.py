"""What `flowlens report` does: rebuild run reports, compare two runs, index a folder, export static figures."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from markupsafe import Markup

from flowlens.errors import FlowlensError
from flowlens.report.html import _script_safe, templates, write_atomic, write_report
from flowlens.report.plain import figure_json, to_figure
from flowlens.report.sections import Section, build_sections, render_html
from flowlens.store.run import Run, open_run, run_files


def report_targets(path: str | os.PathLike[str]) -> list[Path]:
    """The run files `path` names: the file itself, or every run file directly in the folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = run_files(path)
        if not found:
            raise FlowlensError(f"no flowlens run file in {path}")
        return found
    raise FlowlensError(f"no run file or folder at {path}")


def rebuild(run_file: Path, out: Path | None = None, sample_pages: bool = True) -> Path:
    """Write the report of one run file (default: beside it, `trace.h5` -> `trace.html`)."""
    return write_report(run_file, out or run_file.with_suffix(".html"), sample_pages=sample_pages)


def render_page(title: str, heading: str, sub: str, sections: list[Section], body: Markup | str = "") -> str:
    """A standalone page (plotly inlined once when a section has figures) from sections."""
    from plotly.offline import get_plotlyjs

    figures = {key: json.loads(figure_json(f)) for s in sections for key, f in s.figures.items()}
    return (
        templates()
        .get_template("page.html")
        .render(
            title=title,
            heading=heading,
            sub=sub,
            body=body,
            sections=sections,
            figures_used=bool(figures),
            figures=Markup(_script_safe(json.dumps(figures))),
            plotly_js=Markup(get_plotlyjs()) if figures else "",
        )
    )


def write_compare(a: str | os.PathLike[str], b: str | os.PathLike[str], out: Path) -> Path:
    """Put two comparable runs on shared axes in one page; a FlowlensError says why they are not comparable."""
    from flowlens.report.compare import check_comparable, compare_sections, label

    with open_run(a) as run_a, open_run(b) as run_b:
        check_comparable(run_a, run_b)
        sections = compare_sections(run_a, run_b)
        sub = f"A: {label(run_a)} · B: {label(run_b)} · analysis {run_a.config.get('analysis')}"
        html = render_page("flowlens comparison", "flowlens comparison", sub, sections)
    return write_atomic(out, html)


INDEX_TABLE = """<table>
<tr><th>run</th><th>kind</th><th>model</th><th>dataset</th><th>samples</th><th>failed</th><th>accuracy</th><th>created</th></tr>
{% for r in rows %}<tr><td class="mono"><a href="{{ r.href }}">{{ r.name }}</a></td><td>{{ r.kind }}</td><td>{{ r.model }}</td>
<td>{{ r.dataset }}</td><td class="num">{{ r.samples }}</td><td class="num">{{ r.failed }}</td>
<td class="num">{% if r.accuracy is not none %}{{ "%.1f" | format(100 * r.accuracy) }}%{% else %}–{% endif %}</td>
<td>{{ r.created }}</td></tr>{% endfor %}
</table>"""


def index_rows(folder: Path, build_missing: bool = True) -> list[dict[str, Any]]:
    """One row per run file under `folder` (recursively), its report built when missing."""
    rows = []
    for run_file in sorted(folder.rglob("*.h5")):
        if run_file not in run_files(run_file.parent):
            continue
        report = run_file.with_suffix(".html")
        with open_run(run_file) as run:
            if build_missing and not report.exists():
                write_report(run, report)
            rows.append(_index_row(run, report.relative_to(folder)))
    return rows


def _index_row(run: Run, href: Path) -> dict[str, Any]:
    answers = run.table("answers")
    scored = answers[answers["correct"].notna()]
    dataset = run.config.get("dataset") or {}
    name = dataset.get("dataset") if isinstance(dataset, dict) else dataset
    split = dataset.get("split_name") if isinstance(dataset, dict) else None
    return {
        "name": str(href.with_suffix(".h5")),
        "href": href.as_posix(),
        "kind": run.config.get("analysis") or "?",
        "model": run.model_info.get("model") or run.config.get("model") or "?",
        "dataset": f"{name}:{split}" if name and split else (name or "–"),
        "samples": len(run.samples),
        "failed": len(run.failures),
        "accuracy": float(scored["correct"].astype(bool).mean()) if len(scored) else None,
        "created": run.created,
    }


def write_index(folder: str | os.PathLike[str], out: Path | None = None) -> Path:
    """`index.html` over every run under `folder`: kind, model, dataset, samples, accuracy, date, link."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlowlensError(f"--index needs a folder, got {folder}")
    rows = index_rows(folder)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sub = f"{len(rows)} runs under {folder} · written {when}"
    page = render_page("flowlens runs", "flowlens runs", sub, [], render_html(INDEX_TABLE, rows=rows))
    return write_atomic(out or folder / "index.html", page)


def export_figures(run_file: Path, folder: Path, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Every figure of the run's report as static files (`<figure id>.png/.svg`), through kaleido."""
    try:
        import kaleido  # noqa: F401
    except ImportError as exc:
        raise FlowlensError(
            "--figures needs kaleido (and a Chrome or Chromium): pip install 'flowlens[report]'"
        ) from exc
    import plotly.io as pio

    folder.mkdir(parents=True, exist_ok=True)
    with open_run(run_file) as run:
        figures = {key: to_figure(f) for s in build_sections(run) for key, f in s.figures.items()}
    prefix = run_file.stem
    figs, paths = [], []
    for key, figure in figures.items():
        for fmt in formats:
            figs.append(figure)
            paths.append(folder / f"{prefix}-{key}.{fmt}")
    if hasattr(pio, "write_images"):  # one browser for all figures (plotly >= 6.1)
        pio.write_images(figs, paths, width=1100)
    else:
        for figure, path in zip(figs, paths, strict=True):
            figure.write_image(path, width=1100)
    return paths
