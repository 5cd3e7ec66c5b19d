"""Analyses that run a `VideoLM` over samples and return tables."""

from flowlens.analyses.evaluate import EvalResult, evaluate, option_probabilities

__all__ = ["EvalResult", "evaluate", "option_probabilities"]
