"""docs/cli.md is what the argument parser generates, and the docs site builds in strict mode (broken links,
missing pages, API entries that do not resolve and unrenderable notebooks all fail)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_EXTRA = [
    "mkdocs",
    "material",
    "mkdocstrings",
    "mkdocstrings_handlers.python",
    "mkdocs_jupyter",
    "nbformat",
]


def test_cli_reference_is_generated_from_the_parser():
    from flowlens.docs_cli import render

    expected = render()
    actual = (ROOT / "docs" / "cli.md").read_text()
    assert actual == expected, (
        "docs/cli.md is stale: run `python -m flowlens.docs_cli > docs/cli.md` (make cli-docs)"
    )


def test_cli_reference_lists_every_command_and_flag():
    from flowlens.cli import build_parser

    text = (ROOT / "docs" / "cli.md").read_text()
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name, parser in commands.items():
        assert f"## flowlens {name}\n" in text
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in text, f"{name} {flag} missing from docs/cli.md"


def test_docs_site_builds_strict(tmp_path):
    missing = [m for m in DOCS_EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(
            f"the docs extra is not installed (missing {', '.join(missing)}): pip install -e '.[docs]'"
        )
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "build_docs.py"),
            "--no-execute",
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    site = tmp_path / "site"
    for page in [
        "index.html",
        "concepts/index.html",
        "cli/index.html",
        "api/index.html",
        "gotchas/index.html",
        "adding-a-family/index.html",
        "run-file/index.html",
        "notebooks/01_quickstart/index.html",
        "img/concepts.svg",
    ]:
        assert (site / page).is_file(), page
    api = (site / "api" / "index.html").read_text()
    assert "prepare" in api and "open_run" in api  # docstrings rendered, not just headings
    print(f"docs site built in {time.perf_counter() - started:.0f} s")


def test_notebook_figures_get_html_that_draws_them():
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[docs]')")
    import plotly.graph_objects as go

    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
    build_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_docs)
    figure = go.Figure(go.Scatter(x=[1, 2], y=[3, 4], name="</script><b>x</b>")).update_layout(height=300)
    cell = nbformat.v4.new_code_cell("figure")
    cell.outputs = [nbformat.v4.new_output("display_data", {build_docs.PLOTLY_MIME: figure.to_plotly_json()})]
    nb = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("text")])
    assert build_docs.plotly_html(nb) == 1
    html = cell.outputs[0]["data"]["text/html"]
    assert "Plotly.newPlot(" in html and "height:300px" in html
    assert "</script><b>" not in html and html.count("</script>") == 1  # a trace name cannot end the script
