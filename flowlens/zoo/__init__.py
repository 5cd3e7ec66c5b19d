"""Trained models that ship inside the package (`flowlens.load("toy")`)."""

from pathlib import Path

TOY_DIR = Path(__file__).parent / "toy"

__all__ = ["TOY_DIR"]
