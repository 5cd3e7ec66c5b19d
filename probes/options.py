"""`ProbeOptions`: what `flowlens probe` and `probes.probe_run` do (CLI flags and the run's settings derive from it)."""

from __future__ import annotations

from dataclasses import dataclass

from flowlens.analyses.options import option, positive
from flowlens.errors import FlowlensError
from flowlens.hooks import DTYPES, ActivationSpec
from probes.data import POOLS

C_GRID = (0.01, 0.1, 1.0, 10.0)  # the inverse regularisation strengths the inner folds choose from


@dataclass
class ProbeOptions:
    """Targets, where to read them, and how each probe is fitted and scored."""

    target: list[str] = option(
        ["frame_index"],
        "what to probe: answer, predicted (letters at last), frame_index, row, col (video tokens), task, "
        "direction, count, colour, order, noise (frame-pooled video), or any sample metadata key",
        metavar="TARGET",
    )
    hook: str = option(
        "blocks.*.hook_resid_post", "hooks to probe, one probe per layer (globs; several joined by +)"
    )
    group: str | None = option(
        None,
        "token group to read every target at (default per target: last for answer/predicted, video for "
        "frame_index/row/col, frame_mean for the rest)",
    )
    pool: str = option(
        "mean",
        "sample labels: average each sample's rows (mean), concatenate them in order (concat), or keep "
        "every row with its sample's label (tokens)",
        choices=POOLS,
    )
    folds: int = option(5, "outer cross-validation folds (split by sample)")
    inner_folds: int = option(
        3, "inner folds choosing C (split by sample; 1: no choice, the middle of --c-grid)"
    )
    c_grid: list[float] = option(list(C_GRID), "inverse regularisation strengths to choose from", metavar="C")
    max_iter: int = option(500, "lbfgs iterations per fit")
    max_tokens: int | None = option(
        None, "keep at most this many token rows per sample (a seeded random subset; default: all)"
    )
    probe_seed: int = option(0, "seed of the folds, the control labels and the token subsets")
    threads: int | None = option(
        None, "BLAS threads while fitting (default: the library's own)", affects_results=False
    )
    frames: int = option(8, "frames per video when a model and a dataset are traced first")
    activations_dtype: str = option(
        "float16", "dtype of the activations traced first (model and dataset mode)", choices=tuple(DTYPES)
    )

    def __post_init__(self) -> None:
        self.target = [str(t) for t in self.target] or ["frame_index"]
        ActivationSpec.parse(f"{self.hook}@last")  # a hook pattern that matches no hook name fails here
        if self.pool not in POOLS:
            raise FlowlensError(f"--pool {self.pool!r}: use one of {', '.join(POOLS)}")
        if self.folds < 2:
            raise FlowlensError(f"--folds must be at least 2, got {self.folds}")
        for name in ("inner_folds", "max_iter", "max_tokens", "threads", "frames"):
            positive(name, getattr(self, name))
        self.c_grid = [float(c) for c in self.c_grid]
        if not self.c_grid or min(self.c_grid) <= 0:
            raise FlowlensError(f"--c-grid needs positive values, got {self.c_grid}")
        if self.activations_dtype not in DTYPES:
            raise FlowlensError(
                f"--activations-dtype {self.activations_dtype!r}: use one of {', '.join(DTYPES)}"
            )
