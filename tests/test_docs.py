"""Every code block in README.md and docs/*.md runs (or, where it needs data we cannot ship, resolves), so docs
cannot drift from the code.

- ```python blocks of one page run in order in one namespace, in a temporary folder, after a prelude
  that defines `lm` (tiny LLaVA-NeXT-Video), `samples` (two synthetic samples), `sample` and a clip
  `clip.mp4`. Each block's source is registered in `linecache` (nnsight reads a trace's body from it). A block whose first line is `# requires: ...` (a benchmark's files, a GPU, the Hub) is
  compiled and every `flowlens` name it uses must exist, but it is not run.
- ```console lines starting with `$ flowlens` must parse with the real argument parser (lines that elide
  arguments with `...` must at least use flags the subcommand has).
"""

from __future__ import annotations

import ast
import importlib
import linecache
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


def prelude(tmp: Path) -> dict:
    import flowlens
    from flowlens.data.video_writer import write_mp4

    frames = np.random.default_rng(0).integers(0, 256, (16, 64, 80, 3), dtype=np.uint8)
    write_mp4(tmp / "clip.mp4", frames, fps=8)
    lm = flowlens.load("tiny:llava_next_video")
    samples = flowlens.data.load("synthetic", split="test[:2]")
    return {"flowlens": flowlens, "lm": lm, "samples": samples, "sample": samples[0], "np": np}


def _check_names(code: str, where: str) -> None:
    """Every `flowlens.x.y` attribute and `from flowlens.x import y` in `code` exists."""
    tree = ast.parse(code, where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flowlens"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
        if isinstance(node, ast.Attribute):
            parts = []
            value: ast.AST = node
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id == "flowlens":
                obj = importlib.import_module("flowlens")
                for name in reversed(parts):
                    if not hasattr(obj, name):
                        try:
                            obj = importlib.import_module(f"{obj.__name__}.{name}")
                            continue
                        except (ImportError, AttributeError):
                            raise AssertionError(
                                f"{where}: flowlens has no {'.'.join(reversed(parts))}"
                            ) from None
                    obj = getattr(obj, name)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = prelude(tmp_path)
    for i, code in enumerate(blocks(page, "python")):
        where = f"{page.name} python block {i + 1}"
        _check_names(code, where)
        if code.lstrip().startswith("# requires:"):
            continue
        # nnsight reads a trace's `with` body back from its source: register each block's text under its name
        linecache.cache[where] = (len(code), None, code.splitlines(keepends=True), where)
        exec(compile(code, where, "exec"), namespace)  # noqa: S102


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "console")], ids=lambda p: p.name)
def test_console_commands_parse(page):
    from flowlens.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for code in blocks(page, "console"):
        for line in code.splitlines():
            if not line.startswith("$ flowlens "):
                continue
            words = shlex.split(line[2:].split("  #")[0])
            if "..." in words:  # arguments elided: every flag must still exist
                known = commands[words[1]]._option_string_actions
                unknown = [w for w in words if w.startswith("--") and w not in known]
                assert not unknown, f"{page.name}: `{line}` uses unknown flags {unknown}"
                continue
            try:
                parser.parse_args(words[1:])
            except SystemExit as exc:
                raise AssertionError(f"{page.name}: `{line}` does not parse") from exc
