"""Keyword statistics of the video-token lens (Map the Flow §5, Fig. 4 and 5), as tables derived from `video_lens`.

Keywords come in categories (the paper's `spatial` and `temporal` lists by default, or a YAML file
`{spatial: [...], temporal: [...]}`); each word is reduced to its first sub-token (tokenised without
special tokens, first id decoded, whitespace stripped), and a video token is a hit for a keyword when its
top-1 token, decoded and stripped, is that string (the paper compares decoded strings). Over the run's
baseline-correct samples: top-1 hits are counted per keyword and state, summed in bins of `bin_size`
states, keywords with fewer than `min_count` hits in all dropped, each row normalised to sum 1 over the
bins, and an "All Average" row (mean of the kept rows) added per category.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from flowlens.errors import FlowlensError

if TYPE_CHECKING:
    from flowlens.store.run import Run

ALL_AVERAGE = "All Average"
# The paper's hard-coded lists (analysis/logit_lens_analysis.py, TVBench Action Sequence); "glass" is listed twice
# there, and the released code builds the temporal first-token list from the spatial one (a bug not copied here).
PAPER_KEYWORDS: dict[str, list[str]] = {
    "spatial": [
        "bag",
        "bed",
        "blanket",
        "book",
        "box",
        "cabinet",
        "camera",
        "clothes",
        "cup",
        "glass",
        "glass",
        "bottle",
        "dish",
        "door",
        "floor",
        "food",
        "laptop",
        "paper",
        "person",
        "phone",
        "sandwich",
        "table",
    ],  # fmt: skip
    "temporal": [
        "eat",
        "close",
        "do",
        "down",
        "drink",
        "hold",
        "on",
        "open",
        "put",
        "sit",
        "throw",
        "tidy",
        "take",
        "up",
    ],  # fmt: skip
}
STATS_COLUMNS = ["category", "keyword", "token", "bin", "layers", "count", "total", "frequency"]
HIT_COLUMNS = [
    "sample", "category", "keyword", "token", "layer", "bin", "layers", "position", "frame", "row", "col", "p",
    "kept",
]  # fmt: skip


def load_keywords(path: str | Path | None) -> dict[str, list[str]]:
    """The paper's lists (`path` None) or a YAML file mapping each category to a list of words."""
    if path is None:
        return {category: list(words) for category, words in PAPER_KEYWORDS.items()}
    file = Path(path).expanduser()
    if not file.is_file():
        raise FlowlensError(f"--keywords {path}: no such file")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise FlowlensError(f"--keywords {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise FlowlensError(
            f"--keywords {path}: expected a mapping such as {{spatial: [...], temporal: [...]}}"
        )
    out: dict[str, list[str]] = {}
    for category, words in data.items():
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise FlowlensError(f"--keywords {path}: {category!r} must be a list of words")
        out[str(category)] = [w.strip() for w in words]
    return out


def resolve_keywords(tokenizer: Any, lists: Mapping[str, list[str]]) -> dict[str, Any]:
    """Each keyword's first sub-token: {"categories": {category: [[word, token], ...]}, "dropped": [...]}.

    A word listed twice in a category, or whose first sub-token is the unknown token (a word-level
    vocabulary without it), is dropped with its reason.
    """
    categories: dict[str, list[list[str]]] = {}
    dropped: list[dict[str, str]] = []
    for category, words in lists.items():
        kept: list[list[str]] = []
        for word in words:
            if any(word == w for w, _ in kept):
                dropped.append({"category": category, "word": word, "reason": "listed twice"})
                continue
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if not ids or ids[0] == getattr(tokenizer, "unk_token_id", None):
                dropped.append({"category": category, "word": word, "reason": "not in the vocabulary"})
                continue
            kept.append([word, tokenizer.decode([int(ids[0])]).strip()])
        categories[category] = kept
    return {"categories": categories, "dropped": dropped}


def layer_bins(n_states: int, bin_size: int, overlap: int = 0) -> list[tuple[str, int, int]]:
    """(label, first state, stop) of each bin: states [b·size, (b+1)·size + overlap), labelled 1-based."""
    out = []
    for start in range(0, n_states, bin_size):
        end = min(start + bin_size, n_states)
        out.append((f"{start + 1}-{end}", start, min(end + overlap, n_states)))
    return out


def _keyword_index(keywords: Mapping[str, Any]) -> tuple[list[tuple[str, str, str]], dict[str, list[int]]]:
    """[(category, word, token)] and token -> the indices of the keywords it is a hit for."""
    entries = [(c, w, t) for c, pairs in keywords["categories"].items() for w, t in pairs]
    by_token: dict[str, list[int]] = {}
    for i, (_, _, token) in enumerate(entries):
        by_token.setdefault(token, []).append(i)
    return entries, by_token


def hit_counts(
    layers: np.ndarray, tokens: Iterable[str], keywords: Mapping[str, Any], n_states: int
) -> np.ndarray:
    """(keywords, states) top-1 hit counts of rows with state `layers[i]` and top-1 token `tokens[i]`."""
    entries, by_token = _keyword_index(keywords)
    counts = np.zeros((len(entries), n_states), dtype=np.int64)
    frame = pd.DataFrame({"layer": np.asarray(layers, np.int64), "token": [str(t).strip() for t in tokens]})
    frame = frame[frame["token"].isin(set(by_token))]
    for (layer, token), n in frame.groupby(["layer", "token"]).size().items():
        for i in by_token[token]:
            counts[i, int(layer)] += int(n)
    return counts


def keyword_statistics(
    counts: np.ndarray,
    keywords: Mapping[str, Any],
    bin_size: int = 5,
    min_count: int = 100,
    bin_overlap: int = 0,
) -> pd.DataFrame:
    """The paper's Fig. 4 table from (keywords, states) counts: binned, dropped under `min_count`, normalised."""
    entries, _ = _keyword_index(keywords)
    bins = layer_bins(counts.shape[1], bin_size, bin_overlap)
    binned = np.stack([counts[:, start:stop].sum(1) for _, start, stop in bins], axis=1)
    records: list[dict[str, Any]] = []
    for category in keywords["categories"]:
        rows = [i for i, entry in enumerate(entries) if entry[0] == category and counts[i].sum() >= min_count]
        frequencies = []
        for i in rows:
            total = int(binned[i].sum())
            frequency = binned[i] / total
            frequencies.append(frequency)
            for b, (label, _, _) in enumerate(bins):
                records.append(
                    {
                        "category": category,
                        "keyword": entries[i][1],
                        "token": entries[i][2],
                        "bin": b,
                        "layers": label,
                        "count": int(binned[i, b]),
                        "total": total,
                        "frequency": float(frequency[b]),
                    }
                )
        if rows:
            mean = np.mean(frequencies, axis=0)
            for b, (label, _, _) in enumerate(bins):
                records.append(
                    {
                        "category": category,
                        "keyword": ALL_AVERAGE,
                        "token": "",
                        "bin": b,
                        "layers": label,
                        "count": int(binned[rows, b].sum()),
                        "total": int(binned[rows].sum()),
                        "frequency": float(mean[b]),
                    }
                )
    return pd.DataFrame(records, columns=STATS_COLUMNS)


def keyword_hits(
    rows: pd.DataFrame,
    keywords: Mapping[str, Any],
    kept: set[tuple[str, str]],
    n_states: int,
    bin_size: int = 5,
) -> pd.DataFrame:
    """Every top-1 hit of a keyword in `rows` (a `video_lens` table with a `sample` column) with its (frame,
    row, col) cell; `kept`: the (category, keyword) pairs over the min count."""
    entries, by_token = _keyword_index(keywords)
    token = rows["token"].astype(str).str.strip()
    hit = token.isin(set(by_token)).to_numpy()
    found = rows.loc[hit].copy()
    found["token"] = token.to_numpy()[hit]
    parts = []
    for tok, group in found.groupby("token", sort=False):
        for i in by_token[tok]:
            category, word, _ = entries[i]
            parts.append(group.assign(category=category, keyword=word, kept=(category, word) in kept))
    if not parts:
        return pd.DataFrame(columns=HIT_COLUMNS)
    hits = pd.concat(parts, ignore_index=True)
    hits["bin"] = hits["layer"].astype(np.int64) // bin_size
    labels = [label for label, _, _ in layer_bins(n_states, bin_size)]
    hits["layers"] = [labels[b] for b in hits["bin"]]
    return hits.sort_values(["sample", "layer", "position"], kind="stable")[HIT_COLUMNS].reset_index(
        drop=True
    )


# ---------------------------------------------------------------------------- derived tables of a run
def _correct_samples(run: Run) -> list[str]:
    return [s for s in run.row_tables.get("video_lens", []) if run.answer(s).correct is True]


def _settings(run: Run) -> dict[str, Any]:
    return run.config.get("settings", {})


def run_keyword_counts(run: Run, samples: list[str] | None = None) -> np.ndarray:
    """(keywords, states) hit counts over `samples` (default: the baseline-correct samples of the run)."""
    keywords = _settings(run)["keyword_tokens"]
    samples = _correct_samples(run) if samples is None else samples
    n_states = max((run.layout(s).n_layers for s in run.row_tables.get("video_lens", [])), default=0)
    counts = np.zeros((sum(len(v) for v in keywords["categories"].values()), n_states), np.int64)
    for sample in samples:
        rows = run.rows(sample, "video_lens")
        counts += hit_counts(rows["layer"].to_numpy(), rows["token"], keywords, n_states)
    return counts


def lens_keywords(run: Run, **overrides: Any) -> pd.DataFrame:
    """`lens_keywords`: the run's keyword statistics (its bin size, overlap and min count unless overridden)."""
    settings = {**_settings(run), **overrides}
    return keyword_statistics(
        run_keyword_counts(run),
        settings["keyword_tokens"],
        int(settings["bin_size"]),
        int(settings["min_count"]),
        int(settings["bin_overlap"]),
    )


def lens_keyword_hits(run: Run) -> pd.DataFrame:
    """`lens_keyword_hits`: every keyword hit of the baseline-correct samples with its (frame, row, col) cell."""
    settings = _settings(run)
    keywords = settings["keyword_tokens"]
    stats = lens_keywords(run)
    kept = {(c, k) for c, k in zip(stats["category"], stats["keyword"], strict=True) if k != ALL_AVERAGE}
    parts = []
    for sample in _correct_samples(run):
        rows = run.rows(sample, "video_lens").assign(sample=sample)
        n_states = run.layout(sample).n_layers
        parts.append(keyword_hits(rows, keywords, kept, n_states, int(settings["bin_size"])))
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=HIT_COLUMNS)
