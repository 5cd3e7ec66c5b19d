"""Knockout tables under two transformers releases, same weights: `python -m benchmarks.version_parity 5.23.0`.

Builds a throwaway venv with the locked set but `transformers==<version>` (uv), runs `flowlens knockout`
on the tiny LLaVA-NeXT-Video and Qwen2.5-VL folders with this venv and with that one, and prints the
largest probability difference per model. Issue 10's acceptance: max |dp| <= 1e-6.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("llava_next_video", "qwen2_5_vl")


def other_venv(version: str, where: Path) -> Path:
    lock = (ROOT / "requirements" / "lock.txt").read_text().splitlines()
    pinned = [f"transformers=={version}" if line.startswith("transformers==") else line for line in lock]
    where.mkdir(parents=True, exist_ok=True)
    (where / "lock.txt").write_text("\n".join(pinned) + "\n")
    uv = [str(Path(sys.executable).parent / "uv"), "--no-progress"]
    subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(where / "venv")], check=True)
    python = str(where / "venv" / "bin" / "python")
    subprocess.run(
        [*uv, "pip", "install", "--quiet", "--python", python, "-r", str(where / "lock.txt")], check=True
    )
    subprocess.run(
        [*uv, "pip", "install", "--quiet", "--python", python, "--no-deps", "-e", str(ROOT)], check=True
    )
    return where / "venv" / "bin"


def main(version: str, where: Path = Path("/tmp/flowlens-version-parity")) -> None:
    import flowlens
    from flowlens.models.tiny import tiny_path

    bins = {"this": Path(sys.executable).parent, version: other_venv(version, where)}
    for family in FAMILIES:
        folder = tiny_path(family)  # the same weights for both releases
        tables = {}
        for name, bin_dir in bins.items():
            out = where / f"{family}-{name}"
            command = [str(bin_dir / "flowlens"), "knockout", str(folder), "--dataset", "synthetic"]
            command += ["--split", "test", "--limit", "6", "--preset", "map-the-flow", "--window", "3"]
            subprocess.run([*command, "--out", str(out), "--overwrite"], check=True, capture_output=True)
            key = ["sample", "curve", "layer"]
            tables[name] = flowlens.open_run(out).table("knockout").sort_values(key).reset_index(drop=True)
        a, b = tables.values()
        columns = [c for c in a.columns if c.startswith("p_")]
        dp = max(float(np.nanmax(np.abs(a[c] - b[c]))) for c in columns)
        same = bool((a["new_answer"] == b["new_answer"]).all())
        print(f"{family}: {len(a)} rows, max |dp| = {dp:.2e}, same answers: {same}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "5.23.0")
