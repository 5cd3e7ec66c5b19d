"""Token importance, debiasing and pruning: trace once, score offline, select, re-run (docs/pruning.md)."""

from flowlens.pruning.scorers import SCORERS, ScoreContext, register_scorer, score

__all__ = ["SCORERS", "ScoreContext", "register_scorer", "score"]
