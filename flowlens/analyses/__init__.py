"""Analyses that run a `VideoLM` over samples and return tables."""

from flowlens.analyses.evaluate import EvalResult, evaluate
from flowlens.analyses.readout import answer_readout, last_logits

__all__ = ["EvalResult", "answer_readout", "evaluate", "last_logits"]
