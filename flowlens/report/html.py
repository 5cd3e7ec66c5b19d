"""`write_report`: one self-contained HTML file (plotly.js inlined, no network) summarising a run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import pandas as pd
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from flowlens.data.failures import count_kinds
from flowlens.errors import disk_full, no_space
from flowlens.report.plain import figure_json
from flowlens.report.sections import build_sections
from flowlens.store.run import Run, open_run
from flowlens.store.schema import escape_id

PAGE_SIZE = 50  # answer rows per page of the paged table
MAX_FAILURE_ROWS = 200
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def write_report(
    run: str | os.PathLike[str] | Run, out_html: str | os.PathLike[str], sample_pages: bool = True
) -> Path:
    """Render the report of `run` (a path or an open `Run`) to `out_html` and return its path.

    With `sample_pages`, each traced sample also gets a page in `<report stem>_samples/` (linked from the
    answers table; the pages share one plotly.js file there). Each file is written beside its target, synced,
    then renamed over it: a process killed half-way leaves the previous report (or none), never half of one.
    A full disk is a `DiskFullError`.
    """
    from flowlens.report.sample_page import write_sample_pages

    out = Path(out_html)
    opened = run if isinstance(run, Run) else open_run(run)
    try:
        folder = f"{out.stem}_samples" if sample_pages and opened.traced else None
        if folder is not None:
            write_sample_pages(opened, out.parent / folder, report_name=out.name)
        html = render_report(opened, folder)
    finally:
        if opened is not run:
            opened.close()
    return write_atomic(out, html)


def write_atomic(out: Path, html: str) -> Path:
    """Write `html` to `out` through a synced temporary file renamed over it; a full disk is a DiskFullError."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as file:
            file.write(html)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        code = no_space(exc)
        if code is None:
            raise
        raise disk_full(out, code) from exc
    return out


def render_report(run: Run, sample_pages: str | None = None) -> str:
    """The report as an HTML string; every user string goes through jinja2 autoescaping."""
    return templates().get_template("report.html").render(**report_context(run, sample_pages))


def templates() -> jinja2.Environment:
    """The report templates, autoescaped, failing on a missing value."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("flowlens.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def report_context(run: Run, sample_pages: str | None = None) -> dict[str, Any]:
    """Everything the template shows: settings, counts, sections (figures as script-safe JSON) and answer rows.

    `sample_pages`: the folder (relative to the report) holding per-sample pages, linked from the answers table.
    """
    answers = run.table("answers")
    sections = build_sections(run)
    figures = {key: figure_json(figure) for section in sections for key, figure in section.figures.items()}
    later = {key: figure_json(figure) for section in sections for key, figure in section.on_request.items()}
    scored = answers[answers["correct"].notna()]
    rows = _answer_rows(answers)
    if sample_pages is not None:
        traced = set(run.traced)
        for row in rows:
            if row["sample"] in traced:
                row["href"] = f"{sample_pages}/{sample_file(row['sample'])}"
    return {
        "title": f"flowlens report: {run.model_info.get('model') or run.config.get('model') or run.path.name}",
        "run_file": run.path.name,
        "model": run.model_info.get("model") or run.config.get("model") or "unknown",
        "revision": run.model_info.get("revision") or "",
        "analysis": run.config.get("analysis") or "",
        "flowlens_version": run.flowlens_version,
        "created": run.created,
        "config": [(key, _show(value)) for key, value in sorted(run.config.items())],
        "model_info": [(key, _show(value)) for key, value in sorted(run.model_info.items())],
        "n_samples": len(run.samples),
        "samples_label": "samples" if (run.row_tables or run.run_tables) else "samples traced",
        "n_failures": len(run.failures),
        "failure_kinds": count_kinds(run.failures.values()),
        "n_scored": len(scored),
        "n_unlabelled": len(answers) - len(scored),
        "accuracy": float(scored["correct"].astype(bool).mean()) if len(scored) else None,
        "tasks": _task_rows(answers),
        "failures": list(run.failures.items())[:MAX_FAILURE_ROWS],
        "failures_hidden": max(0, len(run.failures) - MAX_FAILURE_ROWS),
        "sections": sections,
        "page_size": PAGE_SIZE,
        "answer_rows": rows[:PAGE_SIZE],
        "n_answer_rows": len(rows),
        "all_rows": Markup(_script_safe(json.dumps(_compact(rows) if len(rows) > PAGE_SIZE else []))),
        "figures": Markup(_script_safe(json.dumps({k: json.loads(v) for k, v in figures.items()}))),
        "on_request": Markup(_script_safe(json.dumps({k: json.loads(v) for k, v in later.items()}))),
        "plotly_js": Markup(get_plotlyjs()),
    }


def sample_file(sample: str) -> str:
    """The file name of a sample's page: its id made safe for a file name, URL-quoted for the link."""
    return quote(f"{escape_id(sample)}.html")


def _compact(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """Answer rows as short lists for the paged table's script: [sample, task, answer, predicted, correct,
    p_answer, mass, [[letter, p, share, predicted, answer], ...], href]."""
    return [
        [
            r["sample"],
            r["task"],
            r["answer"],
            r["predicted"],
            r["correct"],
            None if r["p_answer"] is None else round(r["p_answer"], 4),
            round(r["mass"], 4),
            [
                [o["letter"], round(o["p"], 4), round(o["share"], 3), o["predicted"], o["answer"]]
                for o in r["options"]
            ],
            r.get("href"),
        ]
        for r in rows
    ]


def _answer_rows(answers: pd.DataFrame) -> list[dict[str, Any]]:
    """Per sample: id, task, truth, prediction, correctness, p(answer), option mass and each option's share."""
    letters = [c[2:] for c in answers.columns if c.startswith("p_")]
    rows = []
    for record in answers.to_dict("records"):
        probs = {x: float(record[f"p_{x}"]) for x in letters if not pd.isna(record[f"p_{x}"])}
        mass = sum(probs.values())
        options = [
            {
                "letter": x,
                "p": p,
                "share": p / mass if mass > 0 else 0.0,
                "predicted": x == record["predicted"],
                "answer": x == record["answer"],
            }
            for x, p in probs.items()
        ]
        answer = _text(record["answer"])
        rows.append(
            {
                "sample": record["sample"],
                "task": _text(record["task"]),
                "answer": answer,
                "predicted": record["predicted"],
                "correct": None if pd.isna(record["correct"]) else bool(record["correct"]),
                "p_answer": probs.get(answer),
                "mass": mass,
                "options": options,
                "href": None,
            }
        )
    return rows


def _task_rows(answers: pd.DataFrame) -> list[dict[str, Any]]:
    """Accuracy per task (only when the run has more than one task), then overall; unlabelled samples counted apart."""
    table = answers.assign(task=answers["task"].fillna("-").astype(str), labelled=answers["correct"].notna())
    groups = [(str(t), g) for t, g in table.groupby("task", sort=True)] if table["task"].nunique() > 1 else []
    rows = []
    for task, group in [*groups, ("all", table)]:
        scored = group[group["labelled"]]
        correct = int((scored["correct"] == True).sum())  # noqa: E712 (nullable booleans)
        rows.append(
            {
                "task": task,
                "n": len(scored),
                "unlabelled": int(len(group) - len(scored)),
                "correct": correct,
                "accuracy": correct / len(scored) if len(scored) else None,
            }
        )
    return rows


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _text(value: Any) -> str:
    return "" if value is None or pd.isna(value) else str(value)


def _script_safe(text: str) -> str:
    """JSON that cannot close or open a tag inside <script> (escapes <, >, & and JS line separators)."""
    for char, escape in _SCRIPT_ESCAPES.items():
        text = text.replace(char, escape)
    return text
