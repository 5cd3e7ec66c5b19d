"""Build the docs site: stage docs/ with the notebooks (executed with nbclient unless --no-execute), then
`mkdocs build --strict`. `make docs` runs it; tests/test_docs_site.py runs it with --no-execute.

    python tools/build_docs.py [--site-dir site] [--no-execute]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_JS = "js/plotly.min.js"  # one copy for the whole site (mkdocs.yml extra_javascript)


def plotly_html(nb: Any) -> int:
    """Give every plotly output an HTML rendering that draws it with the site's plotly.js; return how many.

    A kernel's plotly figures carry only their JSON mimetype, which nbconvert's HTML does not draw. The page
    loads plotly.js once at the end of the body, so each figure is drawn on DOMContentLoaded.
    """
    count = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            spec = output.get("data", {}).get(PLOTLY_MIME)
            if spec is None:
                continue
            count += 1
            element = f"plotly-{uuid.uuid4().hex[:12]}"
            payload = json.dumps({"data": spec.get("data", []), "layout": spec.get("layout", {})})
            payload = payload.replace("</", "<\\/")  # never close the script element early
            height = (spec.get("layout") or {}).get("height") or 450
            output["data"]["text/html"] = (
                f'<div id="{element}" class="plotly-graph-div" style="height:{int(height)}px;width:100%"></div>'
                f"<script>window.addEventListener('DOMContentLoaded',function(){{var f={payload};"
                f"Plotly.newPlot('{element}',f.data,f.layout,{{responsive:true}});}});</script>"
            )
    return count


def stage_notebooks(dest: Path, execute: bool) -> list[Path]:
    """Copy notebooks/*.ipynb into `dest`, executed in a fresh kernel (cwd: a temporary folder) when asked."""
    import nbformat

    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if execute:
            from nbclient import NotebookClient

            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as work:
                NotebookClient(
                    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": work}}
                ).execute()
            for cell in nb.cells:  # progress bars and library warnings are noise on a web page
                if cell.cell_type == "code":
                    cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
            figures = plotly_html(nb)
            print(
                f"executed {path.name} in {time.perf_counter() - started:.0f} s ({figures} figures)",
                file=sys.stderr,
            )
        nbformat.write(nb, dest / path.name)
        written.append(dest / path.name)
    return written


def build(site_dir: Path, execute: bool = True) -> Path:
    """Stage docs/ and the notebooks in a temporary folder and build the site strictly into `site_dir`."""
    from mkdocs.commands.build import build as mkdocs_build
    from mkdocs.config import load_config

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    # notebook 05 takes its offline branch (a tiny: model) unless asked: `HF_HUB_OFFLINE=0 make docs`
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as stage:
        docs = Path(stage) / "docs"
        shutil.copytree(ROOT / "docs", docs)
        stage_notebooks(docs / "notebooks", execute)
        import plotly

        (docs / PLOTLY_JS).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", docs / PLOTLY_JS)
        config = load_config(
            str(ROOT / "mkdocs.yml"), docs_dir=str(docs), site_dir=str(site_dir.resolve()), strict=True
        )
        here = os.getcwd()
        os.chdir(
            stage
        )  # mkdocs-jupyter keeps its cache under ./.cache: in the staging folder, not the checkout
        try:
            mkdocs_build(config)
        finally:
            os.chdir(here)
    return site_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-dir", default=str(ROOT / "site"), help="where the site goes (default: site/)")
    parser.add_argument(
        "--no-execute", action="store_true", help="render the notebooks as stored (no outputs)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mkdocs").setLevel(logging.INFO)
    started = time.perf_counter()
    from mkdocs.exceptions import MkDocsException

    try:
        site = build(Path(args.site_dir), execute=not args.no_execute)
    except MkDocsException as exc:  # strict mode: the warnings above turned into an error
        print(f"docs build failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"docs site in {site}/ ({time.perf_counter() - started:.0f} s); open {site}/index.html",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
