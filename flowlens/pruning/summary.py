"""The pruning table of a run: per (curve, policy, budget, layer, mode, position ids) over samples.

Columns: `n` samples, `accuracy` (share answered correctly, vocabulary-wide argmax, labelled samples),
`clean_accuracy` (the unpruned model on the same samples), `relative_accuracy` = accuracy / clean accuracy,
`agreement` (top-1 equal to the unpruned answer), `kl` (mean KL(p_unpruned || p_pruned) over the vocabulary
at `last`), `delta_gold_logprob` (mean log p_pruned(gold) - log p_unpruned(gold)), `kept_frac`, the drop-mode
cost columns, and `auc`: the area under the curve's accuracy-vs-budget line (trapezoid over the budgets,
divided by their range: the mean accuracy over the budget range; a single budget gives its accuracy).
Random seeds pool into one `random` curve; `spec` is the row's specification (seeds listed).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

KEYS = ["curve", "role", "policy", "budget", "layer", "mode", "position_ids", "match"]
CURVE = ["curve", "role", "policy", "layer", "mode", "position_ids", "match"]
MEANS = {
    "agree": "agreement",
    "kl": "kl",
    "delta_gold_logprob": "delta_gold_logprob",
    "kept_frac": "kept_frac",
    "flops_ratio_c2": "flops_ratio_c2",
    "flops_ratio_c3": "flops_ratio_c3",
    "prefill_s": "prefill_s",
    "prefill_s_unpruned": "prefill_s_unpruned",
    "peak_bytes": "peak_bytes",
    "peak_bytes_unpruned": "peak_bytes_unpruned",
}


def _spec(specs: pd.Series, seeds: pd.Series) -> str:
    data = json.loads(specs.iloc[0])
    found = sorted({int(s) for s in seeds})
    data["seed"] = found if len(found) > 1 else found[0]
    return json.dumps(data, sort_keys=True)


def auc(budgets: np.ndarray, accuracy: np.ndarray) -> float:
    """Trapezoid area under accuracy(budget) divided by the budget range (one budget: its accuracy)."""
    order = np.argsort(budgets)
    x, y = np.asarray(budgets, dtype=float)[order], np.asarray(accuracy, dtype=float)[order]
    if x.size < 2 or x[-1] == x[0]:
        return float(np.mean(y))
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def summarize(rows: pd.DataFrame, clean: pd.DataFrame) -> pd.DataFrame:
    """The pruning table from per-sample rows and the clean answers (`sample`, `correct`) of the run."""
    if rows.empty:
        return pd.DataFrame()
    correct = clean.set_index("sample")["correct"]
    # samples in id order, not write order: the means then sum in the same order however the run was
    # split (a multi-rank run merges its shards in another order than one process writes)
    rows = rows.iloc[np.argsort(rows["sample"].astype(str).to_numpy(), kind="stable")]
    rows = rows.assign(
        clean_correct=rows["sample"].map(correct).astype(object),
    )
    out = []
    for key, group in rows.groupby(KEYS, sort=False, dropna=False):
        labelled = group[group["clean_correct"].notna()]
        record = dict(zip(KEYS, key, strict=True))
        record["n"] = int(group["sample"].nunique())
        record["n_rows"] = len(group)
        accuracy = float(labelled["correct"].astype(float).mean()) if len(labelled) else float("nan")
        clean_accuracy = (
            float(labelled["clean_correct"].astype(float).mean()) if len(labelled) else float("nan")
        )
        record["accuracy"] = accuracy
        record["clean_accuracy"] = clean_accuracy
        record["relative_accuracy"] = accuracy / clean_accuracy if clean_accuracy else float("nan")
        for column, name in MEANS.items():
            if column in group:
                record[name] = float(group[column].astype(float).mean())
        record["scorer"] = group["scorer"].iloc[0] if record["role"] != "random" else "random"
        record["debias"] = group["debias"].iloc[0]
        record["spec"] = _spec(group["spec"], group["seed"])
        out.append(record)
    table = pd.DataFrame(out)
    table["auc"] = np.nan
    for _, group in table.groupby(CURVE, sort=False, dropna=False):
        table.loc[group.index, "auc"] = auc(group["budget"].to_numpy(), group["accuracy"].to_numpy())
    return table
