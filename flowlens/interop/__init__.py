"""Bridges to other interpretability libraries (optional extras)."""
