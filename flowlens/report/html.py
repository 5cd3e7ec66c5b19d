"""`write_report`: one self-contained HTML file (plotly.js inlined, no network) summarising a run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from flowlens.data.failures import count_kinds
from flowlens.errors import FlowlensError, disk_full, no_space
from flowlens.report import knockout
from flowlens.report.figures import edge_figure, frame_flow_figure, mean_frame_flow
from flowlens.report.sections import build_sections
from flowlens.store.knockout_summary import summarize_knockout
from flowlens.store.run import Run, open_run

MAX_SAMPLE_ROWS = 500
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def write_report(run: str | os.PathLike[str] | Run, out_html: str | os.PathLike[str]) -> Path:
    """Render the report of `run` (a path or an open `Run`) to `out_html` and return its path.

    The report is written beside `out_html`, synced, then renamed over it: a process killed half-way
    leaves the previous report (or none), never half of one. A full disk is a `DiskFullError`.
    """
    opened = run if isinstance(run, Run) else open_run(run)
    try:
        html = render_report(opened)
    finally:
        if opened is not run:
            opened.close()
    out = Path(out_html)
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


def render_report(run: Run) -> str:
    """The report as an HTML string; every user string goes through jinja2 autoescaping."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("flowlens.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("report.html").render(**report_context(run))


def report_context(run: Run) -> dict[str, Any]:
    """Everything the template shows: settings, counts, figures (as script-safe JSON) and answer rows."""
    answers = run.table("answers")
    figures: dict[str, str] = {}
    # runs of row tables only, or of run tables only (e.g. probes), skip the flow sections
    show_trace = bool(run.traced) or not (run.row_tables or run.run_tables)
    frame_mean = mean_frame_flow(run) if show_trace else None
    if frame_mean is not None:
        figures["frame-flow"] = frame_flow_figure(frame_mean).to_json()
    if show_trace:
        summary = run.table("flow_summary")
        if len(summary):
            figures["edge-flow"] = edge_figure(summary).to_json()
    knockouts = _knockout_context(run, figures)
    sections = build_sections(run)
    for section in sections:
        figures.update({key: figure.to_json() for key, figure in section.figures.items()})
    scored = answers[answers["correct"].notna()]
    return {
        "title": f"flowlens report: {run.model_info.get('model') or run.config.get('model') or run.path.name}",
        "run_file": run.path.name,
        "model": run.model_info.get("model") or run.config.get("model") or "unknown",
        "revision": run.model_info.get("revision") or "",
        "flowlens_version": run.flowlens_version,
        "created": run.created,
        "config": [(key, _show(value)) for key, value in sorted(run.config.items())],
        "model_info": [(key, _show(value)) for key, value in sorted(run.model_info.items())],
        "n_samples": len(run.samples),
        "samples_label": "samples" if (run.row_tables or run.run_tables) else "samples traced",
        "show_trace": show_trace,
        **knockouts,
        "n_failures": len(run.failures),
        "failure_kinds": count_kinds(run.failures.values()),
        "n_scored": len(scored),
        "n_unlabelled": len(answers) - len(scored),
        "accuracy": float(scored["correct"].astype(bool).mean()) if len(scored) else None,
        "tasks": _task_rows(answers),
        "failures": list(run.failures.items()),
        "frame_mean": frame_mean,
        "sections": sections,
        "answer_rows": _answer_rows(answers.head(MAX_SAMPLE_ROWS)),
        "answer_rows_hidden": max(0, len(answers) - MAX_SAMPLE_ROWS),
        "figures": Markup(_script_safe(json.dumps({k: json.loads(v) for k, v in figures.items()}))),
        "plotly_js": Markup(get_plotlyjs()),
    }


def _knockout_context(run: Run, figures: dict[str, str]) -> dict[str, Any]:
    """The knockout and pathways sections: figures (added to `figures`), per-curve and per-condition rows."""
    context: dict[str, Any] = {"knockout": None, "pathways": None}
    if "knockout" in run.row_tables:
        table = run.table("knockout")
        try:
            summary = summarize_knockout(table)
        except FlowlensError as exc:  # a malformed table should not cost the rest of the report
            context["knockout"] = {
                "error": str(exc),
                "curves": [],
                "n_samples": table["sample"].nunique(),
                "clean_accuracy": None,
            }
        else:
            clean = knockout.clean_accuracy(table)
            figures["knockout-change"] = knockout.change_figure(summary).to_json()
            figures["knockout-accuracy"] = knockout.accuracy_figure(summary, clean).to_json()
            context["knockout"] = {
                "error": None,
                "curves": knockout.curve_rows(summary),
                "n_samples": table["sample"].nunique(),
                "clean_accuracy": clean,
            }
    if "pathways" in run.row_tables:
        table = run.table("pathways")
        context["pathways"] = {"rows": knockout.pathway_rows(table), "n_samples": table["sample"].nunique()}
    return context


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
