"""One sample's lens rows (`answer_lens`, `video_lens`) from its residual states, however they were obtained.

Both ways of running the lens meet here: a forward that captures the states in fp32 (`flowlens lens MODEL`)
and the activations a trace stored (`flowlens lens RUN_DIR`) give the same {hook: {group: rows}} mapping,
and the same function turns it into rows, so the two modes agree wherever the states do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from flowlens.engine.lens import NORMS, LensHead, lens_states, needed_hooks, stacked
from flowlens.errors import FlowlensError
from flowlens.store.run import open_run, run_files

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM
    from flowlens.models.layout import TokenLayout
    from flowlens.store.run import Run

LAST, VIDEO = "last", "video_features"


class TokenText:
    """Decoded token strings (`tokenizer.decode([id])`, as the paper), cached per id."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        unique, inverse = np.unique(ids, return_inverse=True)
        for i in unique.tolist():
            if i not in self._cache:
                self._cache[i] = self.tokenizer.decode([i])
        return np.asarray([self._cache[i] for i in unique.tolist()], dtype=object)[inverse.reshape(-1)]


def wanted(n_layers: int, states: str, video: bool) -> dict[str, list[str]]:
    """group -> hooks a lens run reads (`last` for the answer lens, the video feature tokens for the video lens)."""
    out = {LAST: needed_hooks(n_layers, states, "answer")}
    if video:
        out[VIDEO] = needed_hooks(n_layers, states, "video")
    return out


def capture_specs(n_layers: int, states: str, video: bool) -> list[str]:
    """`--activations` specs that store what a lens run reads."""
    return [f"{'+'.join(hooks)}@{group}" for group, hooks in wanted(n_layers, states, video).items()]


def trace_hint(n_layers: int, states: str, video: bool) -> str:
    """The `flowlens trace` flags that store what `flowlens lens RUN_DIR` needs (globs where they suffice)."""
    hint = ["--activations 'blocks.*.hook_resid_post@last'"]
    if video:
        kinds = (
            "blocks.*.hook_resid_post"
            if states == "resid_post"
            else "blocks.*.hook_resid_pre+blocks.*.hook_resid_post"
        )
        hint.append(f"--activations '{kinds}@video'")
    return " ".join([*hint, "--activations-dtype float32"])


# ---------------------------------------------------------------------------- the answer lens
@torch.no_grad()
def answer_lens_columns(
    head: LensHead,
    activations: dict[str, dict[str, np.ndarray]],
    layout: TokenLayout,
    states: str,
    text: TokenText,
) -> dict[str, np.ndarray]:
    """One row per (state, norm, option letter): p (softmax over the whole vocabulary of the head) and rank."""
    chosen = lens_states(layout.n_layers, states, "answer")
    values = stacked(activations, chosen, LAST)  # (S, 1, D)
    ids = torch.as_tensor(layout.option_token_ids, device=head.device)
    letters = list(layout.option_letters)
    n_states, n_letters = len(chosen), len(letters)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("p", "rank", "top_id", "top_p")}
    for norm in NORMS:
        logits = head.logits(head.prepared(chosen, values, norm)[:, 0], "output")  # (S, vocab)
        logp = logits.log_softmax(-1)
        at = logits[:, ids]  # (S, K)
        parts["p"].append(logp[:, ids].exp().cpu().numpy().reshape(-1))
        parts["rank"].append(((logits[:, None, :] > at[:, :, None]).sum(-1) + 1).cpu().numpy().reshape(-1))
        top = logits.argmax(-1)
        parts["top_id"].append(np.repeat(top.cpu().numpy(), n_letters))
        parts["top_p"].append(np.repeat(logp.gather(1, top[:, None])[:, 0].exp().cpu().numpy(), n_letters))
    n = n_states * n_letters
    top_id = np.concatenate(parts["top_id"]).astype(np.int32)
    return {
        "layer": np.tile(np.repeat(np.arange(n_states, dtype=np.int16), n_letters), len(NORMS)),
        "hook": np.asarray([s.label for s in chosen for _ in letters] * len(NORMS), dtype=object),
        "norm": np.repeat(np.asarray(NORMS, dtype=object), n),
        "letter": np.asarray(letters * n_states * len(NORMS), dtype=object),
        "is_answer": np.asarray([x == layout.answer_letter for x in letters] * n_states * len(NORMS)),
        "p": np.concatenate(parts["p"]).astype(np.float64),
        "rank": np.concatenate(parts["rank"]).astype(np.int32),
        "top_token": text(top_id),
        "top_id": top_id,
        "top_p": np.concatenate(parts["top_p"]).astype(np.float64),
    }


# ---------------------------------------------------------------------------- the video-token lens
@torch.no_grad()
def video_lens_columns(
    head: LensHead,
    activations: dict[str, dict[str, np.ndarray]],
    layout: TokenLayout,
    states: str,
    projection: str,
    norm: str,
    top_k: int,
    text: TokenText,
) -> dict[str, np.ndarray]:
    """One row per (state, video feature token): its top-1 token, that token's p and the top-k ids."""
    chosen = lens_states(layout.n_layers, states, "video")
    values = stacked(activations, chosen, VIDEO)  # (S, V, D)
    n_states, n_video = values.shape[0], values.shape[1]
    ids, logp = head.top_k(head.prepared(chosen, values, norm), projection, top_k)
    cells = layout.video_cells
    columns = {
        "layer": np.repeat(np.arange(n_states, dtype=np.int16), n_video),
        "position": np.tile(layout[VIDEO].astype(np.int32), n_states),
        "frame": np.tile(cells[:, 0].astype(np.int16), n_states),
        "row": np.tile(cells[:, 1].astype(np.int16), n_states),
        "col": np.tile(cells[:, 2].astype(np.int16), n_states),
        "token": text(ids[:, 0]),
        "token_id": ids[:, 0].astype(np.int32),
        "p": np.exp(logp[:, 0]).astype(np.float32),
    }
    for j in range(ids.shape[1]):
        columns[f"top_{j + 1}"] = ids[:, j].astype(np.int32)
    return columns


# ---------------------------------------------------------------------------- stored states
def source_run(folder: Path, skip: str) -> Run:
    """The trace run in `folder` (the run file named `skip`, e.g. lens.h5, and runs without traces left out)."""
    if folder.is_file():
        return open_run(folder)
    found = []
    for path in run_files(folder):
        if path.name == skip:
            continue
        run = open_run(path)
        if run.traced:
            found.append(run)
        else:
            run.close()
    if len(found) == 1:
        return found[0]
    names = ", ".join(r.path.name for r in found)
    for run in found:
        run.close()
    if not found:
        raise FlowlensError(f"{folder} holds no trace run (trace.h5) to read activations from")
    raise FlowlensError(f"{folder} holds several trace runs ({names}); give the run file itself")


def load_run_model(src: Run, device: str | None, dtype: str | None) -> VideoLM:
    """The model that wrote `src` (its config's name and revision; a tiny model at the run's depth)."""
    import flowlens

    name = str(src.config.get("model") or src.model_info.get("model") or "")
    if not name:
        raise FlowlensError(f"{src.path} does not say which model wrote it")
    layers = src.layout(src.traced[0]).n_layers if name.startswith("tiny:") else None
    return flowlens.load(name, device=device, dtype=dtype, revision=src.config.get("revision"), layers=layers)


def stored_groups(source: Run, n_layers: int, states: str, video: bool) -> dict[str, dict[str, str]]:
    """group -> {hook: stored group to read it from}; a FlowlensError naming the trace flags when one is missing."""
    held = set(source.activation_names())
    found: dict[str, dict[str, str]] = {}
    missing = []
    for group, hooks in wanted(n_layers, states, video).items():
        choices = [LAST] if group == LAST else [VIDEO, "video"]
        for hook in hooks:
            stored = next((c for c in choices if (hook, c) in held), None)
            if stored is None:
                missing.append(f"{hook}@{choices[-1]}")
            else:
                found.setdefault(group, {})[hook] = stored
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise FlowlensError(
            f"{source.path} does not hold the activations the lens reads ({shown}); trace with "
            f"{trace_hint(n_layers, states, video)} (or run `flowlens lens` on the model with --dataset)"
            + ("" if not video else ", or add --no-video-lens for the answer lens alone")
        )
    return found


def read_states(
    source: Run, sample: str, groups: dict[str, dict[str, str]], last_rows: dict[str, pd.Series] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """{hook: {group: rows}} of one stored sample (video rows restricted to the feature tokens)."""
    layout = source.layout(sample)
    out: dict[str, dict[str, np.ndarray]] = {}
    for group, hooks in groups.items():
        for hook, stored in hooks.items():
            if group == LAST and last_rows is not None:
                values = last_rows[hook][sample]
            else:
                found = source.activations(hook, stored, samples=[sample])
                values = found.values
                if stored != VIDEO:
                    keep = np.isin(found.index["position"].to_numpy(), layout[VIDEO])
                    values = values[keep]
            out.setdefault(hook, {})[group] = np.asarray(values, dtype=np.float32)
    return out


def read_last_rows(source: Run, groups: dict[str, dict[str, str]], samples: list[str]) -> dict[str, Any]:
    """hook -> {sample: (1, D) rows at `last`} for every sample at once (one read per hook)."""
    out: dict[str, Any] = {}
    for hook, stored in groups.get(LAST, {}).items():
        found = source.activations(hook, stored, samples=samples)
        codes = found.index["sample"].astype(str).to_numpy()
        out[hook] = {s: found.values[codes == s] for s in samples}
    return out


def source_dtypes(source: Run, groups: dict[str, dict[str, str]], sample: str) -> dict[str, str]:
    """group -> dtype of the stored rows the lens reads (float16 rows, e.g. `resid_last`, are noted)."""
    out = {}
    for group, hooks in groups.items():
        hook, stored = next(iter(hooks.items()))
        out[group] = str(source.activations(hook, stored, samples=[sample]).values.dtype)
    return out


# ---------------------------------------------------------------------------- answer emergence
def emergence(table: pd.DataFrame) -> pd.DataFrame:
    """Per (norm, layer) over the samples in `table`: mean p of the true letter, of the false letters (mean of
    each sample's false letters) and of the most probable false letter, and the share where the true letter wins."""
    labelled = table[table["sample"].isin(table.loc[table["is_answer"], "sample"])]
    if labelled.empty:
        return pd.DataFrame(columns=["norm", "layer", "n", "p_true", "p_false", "p_false_max", "true_wins"])
    keys = ["sample", "norm", "layer"]
    true = labelled[labelled["is_answer"]].set_index(keys)["p"]
    false = labelled[~labelled["is_answer"]].groupby(keys)["p"]
    per = pd.DataFrame({"p_true": true, "p_false": false.mean(), "p_false_max": false.max()}).reset_index()
    per["true_wins"] = per["p_true"] > per["p_false_max"]
    out = per.groupby(["norm", "layer"], sort=True).agg(
        n=("sample", "nunique"),
        p_true=("p_true", "mean"),
        p_false=("p_false", "mean"),
        p_false_max=("p_false_max", "mean"),
        true_wins=("true_wins", "mean"),
    )
    return out.reset_index()


def first_emergence(summary: pd.DataFrame, norm: str) -> int | None:
    """The first layer at which the mean p(true letter) exceeds the mean p of the most probable false letter."""
    rows = summary[(summary["norm"] == norm) & (summary["p_true"] > summary["p_false_max"])]
    return int(rows["layer"].min()) if len(rows) else None
