"""`LinearProbe` (a scikit-learn classifier) and `cross_validate`: outer folds by sample, C by inner folds by sample.

The probe is `StandardScaler` + `LogisticRegression` in a `Pipeline`; `fit(X, y, groups)` chooses C from
`c_grid` by a grid search whose folds are `StratifiedGroupKFold` over `groups` (the sample of each row), so
no sample is ever on both sides of an inner split either. `cross_validate` does the same one level up:
every row is held out exactly once, and a sample's rows are always held out together.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from flowlens.errors import FlowlensError
from probes.options import C_GRID


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Logistic regression on standardised features, C chosen by inner cross-validation grouped by sample.

    `fit(X, y, groups=None)`: without groups every row is its own group. With one value in `c_grid`,
    fewer than two groups, or an inner fold whose training rows hold a single class, there is no choice
    to make and the middle of the grid is used; with one class in `y` the probe predicts that class. After
    fitting: `C_` (the chosen C), `pipeline_` (the refitted pipeline), `converged_` (lbfgs converged on
    every fit), `classes_`, `inner_splits_` (the (train, validation) rows of each inner fold).
    """

    def __init__(
        self,
        c_grid: Sequence[float] = C_GRID,
        inner_folds: int = 3,
        max_iter: int = 500,
        seed: int = 0,
    ) -> None:
        self.c_grid = c_grid
        self.inner_folds = inner_folds
        self.max_iter = max_iter
        self.seed = seed

    def _pipeline(self, c: float) -> Pipeline:
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=c, max_iter=self.max_iter, random_state=self.seed)
        )

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> LinearProbe:
        X, y = np.asarray(X), np.asarray(y)
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        grid = [float(c) for c in self.c_grid]
        if not grid:
            raise FlowlensError("a probe needs at least one value of C")
        middle = float(np.sort(grid)[(len(grid) - 1) // 2])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            self.inner_splits_ = self._inner_splits(y, groups, len(grid))
            if len(np.unique(y)) < 2:  # one class to learn: predict it (logistic regression needs two)
                self.C_ = middle
                self.pipeline_ = make_pipeline(DummyClassifier(strategy="most_frequent")).fit(X, y)
            elif not self.inner_splits_:  # nothing to choose C with: the middle of the grid
                self.C_ = middle
                self.pipeline_ = self._pipeline(middle).fit(X, y)
            else:
                search = GridSearchCV(
                    self._pipeline(grid[0]),
                    {"logisticregression__C": grid},
                    cv=self.inner_splits_,
                    error_score="raise",
                ).fit(X, y)
                self.C_ = float(search.best_params_["logisticregression__C"])
                self.pipeline_ = search.best_estimator_
        self.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        for w in caught:  # anything else the fit warned about is passed on
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.classes_ = self.pipeline_.classes_
        return self

    def _inner_splits(
        self, y: np.ndarray, groups: np.ndarray, n_grid: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Inner (fit, validation) rows split by group; none when there is no choice to make or data to make
        it with (one C, fewer than two groups, or an inner fit fold of a single class)."""
        folds = min(int(self.inner_folds), len(np.unique(groups)))
        if n_grid < 2 or folds < 2 or len(np.unique(y)) < 2:
            return []
        splits = group_folds(y, groups, folds, self.seed)
        return [] if any(len(np.unique(y[fit])) < 2 for fit, _ in splits) else splits

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.pipeline_.predict(np.asarray(X))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.pipeline_.predict_proba(np.asarray(X))


@dataclass
class CrossValidation:
    """Held-out predictions of every row, the folds (train and test row indices) and what each fold chose."""

    predictions: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    c: list[float] = field(default_factory=list)
    converged: bool = True
    majority: float = float("nan")  # accuracy of the training folds' most frequent label

    def accuracy(self, y: np.ndarray) -> float:
        return float(np.mean(self.predictions == np.asarray(y)))


def outer_folds(
    y: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) of each outer fold: `StratifiedGroupKFold` over the samples, seeded."""
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise FlowlensError(f"probing needs rows from at least 2 samples, got {n_groups}")
    return group_folds(y, groups, min(folds, n_groups), seed)


def group_folds(
    y: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`StratifiedGroupKFold(folds, shuffle=True, random_state=seed)` splits; when no class has `folds` rows
    (it refuses), the groups in a seeded random order dealt to the folds in turn."""
    split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        try:
            return list(split.split(np.zeros(len(y)), y, groups))
        except ValueError:
            pass
    names = np.random.default_rng(seed).permutation(np.unique(groups))
    fold_of = dict(zip(names.tolist(), np.arange(len(names)) % folds, strict=True))
    assigned = np.asarray([fold_of[g] for g in groups.tolist()])
    return [(np.flatnonzero(assigned != k), np.flatnonzero(assigned == k)) for k in range(folds)]


def cross_validate(
    probe: LinearProbe,
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    folds: int | list[tuple[np.ndarray, np.ndarray]] = 5,
    seed: int = 0,
) -> CrossValidation:
    """Fit `probe` on each outer fold's training samples and predict its held-out samples.

    `folds` is a number of folds or the folds themselves (to score a control task on the real task's folds).
    """
    X, y, groups = np.asarray(X), np.asarray(y), np.asarray(groups)
    splits = outer_folds(y, groups, folds, seed) if isinstance(folds, int) else folds
    predictions = np.empty(len(y), dtype=y.dtype)
    majority_hits, chosen, converged = 0, [], True
    for train, test in splits:
        if set(groups[train]) & set(groups[test]):
            raise FlowlensError(
                "a fold holds rows of one sample on both sides"
            )  # never: the split is by group
        fitted = _clone(probe).fit(X[train], y[train], groups[train])
        predictions[test] = fitted.predict(X[test])
        chosen.append(fitted.C_)
        converged &= fitted.converged_
        values, counts = np.unique(y[train], return_counts=True)
        majority_hits += int(np.sum(y[test] == values[np.argmax(counts)]))
    return CrossValidation(predictions, splits, chosen, converged, majority_hits / len(y))


def _clone(probe: LinearProbe) -> LinearProbe:
    from sklearn.base import clone

    return clone(probe)
