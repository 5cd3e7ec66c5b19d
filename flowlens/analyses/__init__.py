"""Analyses that run a `VideoLM` over samples and return results."""
