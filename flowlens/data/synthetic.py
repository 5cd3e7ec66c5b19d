"""Synthetic temporal VideoQA with known answers, modelled on TVBench's temporal categories.

Four temporal tasks and one static control, rendered as small solid-colour clips:

- `moving_direction`: one shape crosses the frame; which way does it move (2 options on its axis)?
- `event_order`: four objects flash one after another; which appeared first / last?
- `object_count`: one to four objects each appear in their own quarter of the clip; how many?
- `scene_transition`: the background colour changes once; what did it change from / to?
- `static`: one shape stands still; what colour is it (answerable from any single frame)?

Everything is a pure function of (seed, index): sample `i` of a seed is the same whatever `n` is.
Within every block of five consecutive samples each task occurs once, and each task's answer letter
cycles through a seeded permutation of its letters, so letters are balanced and carry no information.
Every event spans whole segments between the frames that uniform 8-frame sampling picks, so all
events stay visible at `--frames 8` for every clip length.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowlens.data.draw import COLORS, SHAPES, blank, draw
from flowlens.data.sample import OPTION_LETTERS
from flowlens.data.video import uniform_indices
from flowlens.data.video_writer import write_mp4

TASKS: tuple[str, ...] = ("moving_direction", "event_order", "object_count", "scene_transition", "static")
TEMPORAL_TASKS: tuple[str, ...] = TASKS[:4]
ORDER_TASKS: tuple[str, ...] = ("moving_direction", "event_order")

# Shipped splits: fixed, distinct seeds. Any other seed gives a fresh set (e.g. for held-out tests).
SPLIT_SEEDS: dict[str, int] = {"train": 1001, "val": 2002, "test": 3003}
SPLIT_SIZES: dict[str, int] = {"train": 6000, "val": 500, "test": 1000}
DEFAULT_SPLIT = "test"
DEFAULT_SEED_SIZE = 200

FORMAT = 2  # bump when rendering, encoding or questions change, so cached sets are rebuilt
FRAME_SIZE = 64
MIN_FRAMES, MAX_FRAMES = 8, 16
FPS = 8
SAMPLED_FRAMES = 8
ANNOTATIONS = "annotations.jsonl"
COUNT_WORDS = ("one", "two", "three", "four")


@dataclass
class Clip:
    """A rendered clip, its question, the correct option text and the distractor texts."""

    frames: np.ndarray
    question: str
    answer: str
    distractors: list[str]
    details: dict[str, Any] = field(default_factory=dict)


def vocabulary() -> list[str]:
    """Every word the questions and options can use (the toy tokenizer must know them all)."""
    words = set(COLORS) | set(SHAPES) | set(COUNT_WORDS) | {"left", "right", "up", "down", "first", "last"}
    for text in (
        "Which direction does the move ?",
        "Which object appeared first ?",
        "How many objects appeared in the video ?",
        "What colour did the background change to from ?",
        "What colour is the ?",
    ):
        words |= set(text.split())
    return sorted(words)


# ---------------------------------------------------------------- segments and positions
def slot_starts(n_frames: int, slots: int) -> list[int]:
    """First frame of each of `slots` equal parts of a clip, cut just before a uniformly sampled frame."""
    sampled = uniform_indices(n_frames, SAMPLED_FRAMES)
    return [0] + [int(sampled[j * SAMPLED_FRAMES // slots]) for j in range(1, slots)]


def _slot_range(n_frames: int, slots: int, j: int) -> range:
    starts = [*slot_starts(n_frames, slots), n_frames]
    return range(starts[j], starts[j + 1])


def _position(rng: np.random.Generator, radius: float) -> tuple[float, float]:
    lo, hi = radius + 2, FRAME_SIZE - radius - 2
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def _objects(rng: np.random.Generator, k: int) -> list[tuple[str, str]]:
    """`k` (colour, shape) pairs with distinct colours."""
    colors = rng.choice(list(COLORS), size=k, replace=False)
    return [(str(c), str(rng.choice(SHAPES))) for c in colors]


def _other_colors(rng: np.random.Generator, exclude: list[str], k: int) -> list[str]:
    pool = [c for c in COLORS if c not in exclude]
    return [str(c) for c in rng.choice(pool, size=k, replace=False)]


# ---------------------------------------------------------------- tasks
def moving_direction(rng: np.random.Generator, n_frames: int) -> Clip:
    """A shape crosses the frame along one axis; options are the two directions of that axis."""
    (color, shape), radius = _objects(rng, 1)[0], 9.0
    axis = str(rng.choice(["horizontal", "vertical"]))
    forward = bool(rng.integers(2))
    near, far = (
        rng.uniform(radius + 1, radius + 6),
        rng.uniform(FRAME_SIZE - radius - 6, FRAME_SIZE - radius - 1),
    )
    start, end = (near, far) if forward else (far, near)
    across = rng.uniform(radius + 2, FRAME_SIZE - radius - 2)
    frames = blank(n_frames, FRAME_SIZE)
    for t in range(n_frames):
        along = start + (end - start) * t / (n_frames - 1)
        cx, cy = (along, across) if axis == "horizontal" else (across, along)
        draw(frames[t], shape, color, cx, cy, radius)
    names = ("right", "left") if axis == "horizontal" else ("down", "up")
    answer, other = names if forward else names[::-1]
    question = f"Which direction does the {color} {shape} move?"
    return Clip(frames, question, answer, [other], {"direction": answer, "color": color, "shape": shape})


def event_order(rng: np.random.Generator, n_frames: int) -> Clip:
    """Four objects flash in turn, one per quarter; ask which came first or last."""
    objects = _objects(rng, 4)
    frames = blank(n_frames, FRAME_SIZE)
    for j, (color, shape) in enumerate(objects):
        cx, cy = _position(rng, 11.0)
        for t in _slot_range(n_frames, 4, j):
            draw(frames[t], shape, color, cx, cy, 11.0)
    names = [f"{c} {s}" for c, s in objects]
    ask = str(rng.choice(["first", "last"]))
    answer = names[0] if ask == "first" else names[-1]
    question = f"Which object appeared {ask}?"
    return Clip(frames, question, answer, [x for x in names if x != answer], {"sequence": names, "ask": ask})


def object_count(rng: np.random.Generator, n_frames: int) -> Clip:
    """One to four objects, each in its own quarter of the clip (never two at once); ask how many."""
    count = int(rng.integers(1, 5))
    slots = sorted(int(s) for s in rng.choice(4, size=count, replace=False))
    frames = blank(n_frames, FRAME_SIZE)
    for slot, (color, shape) in zip(slots, _objects(rng, count), strict=True):
        cx, cy = _position(rng, 11.0)
        for t in _slot_range(n_frames, 4, slot):
            draw(frames[t], shape, color, cx, cy, 11.0)
    answer = COUNT_WORDS[count - 1]
    question = "How many objects appeared in the video?"
    return Clip(
        frames, question, answer, [w for w in COUNT_WORDS if w != answer], {"count": count, "slots": slots}
    )


def scene_transition(rng: np.random.Generator, n_frames: int) -> Clip:
    """The background changes colour once near the middle; ask what it changed from or to."""
    before, after = (str(c) for c in rng.choice(list(COLORS), size=2, replace=False))
    cut = slot_starts(n_frames, SAMPLED_FRAMES)[int(rng.integers(3, 6))]
    frames = blank(n_frames, FRAME_SIZE, COLORS[before])
    frames[cut:] = np.asarray(COLORS[after], dtype=np.uint8)
    ask = str(rng.choice(["from", "to"]))
    answer, other = (before, after) if ask == "from" else (after, before)
    distractors = [other, *_other_colors(rng, [before, after], 2)]
    question = f"What colour did the background change {ask}?"
    return Clip(
        frames, question, answer, distractors, {"from": before, "to": after, "ask": ask, "cut_frame": cut}
    )


def static(rng: np.random.Generator, n_frames: int) -> Clip:
    """One shape stands still for the whole clip; ask its colour (the single-frame control)."""
    (color, shape), radius = _objects(rng, 1)[0], 11.0
    cx, cy = _position(rng, radius)
    frames = blank(n_frames, FRAME_SIZE)
    for t in range(n_frames):
        draw(frames[t], shape, color, cx, cy, radius)
    question = f"What colour is the {shape}?"
    return Clip(frames, question, color, _other_colors(rng, [color], 3), {"color": color, "shape": shape})


TASK_FUNCTIONS: dict[str, Callable[[np.random.Generator, int], Clip]] = {
    "moving_direction": moving_direction,
    "event_order": event_order,
    "object_count": object_count,
    "scene_transition": scene_transition,
    "static": static,
}
N_OPTIONS: dict[str, int] = {
    "moving_direction": 2,
    "event_order": 4,
    "object_count": 4,
    "scene_transition": 4,
    "static": 4,
}


# ---------------------------------------------------------------- samples
def schedule(seed: int, index: int) -> tuple[str, int]:
    """(task, answer position) of sample `index`: tasks permuted per block of 5, letters cycled per task."""
    block, offset = divmod(index, len(TASKS))
    task = TASKS[int(np.random.default_rng([seed, 0, block]).permutation(len(TASKS))[offset])]
    k = N_OPTIONS[task]
    cycle, position = divmod(block, k)
    letters = np.random.default_rng([seed, 1, TASKS.index(task), cycle]).permutation(k)
    return task, int(letters[position])


def make_sample(seed: int, index: int) -> tuple[dict[str, Any], np.ndarray]:
    """The annotation record (without `video`) and the frames of sample `index` of `seed`."""
    task, answer_pos = schedule(seed, index)
    rng = np.random.default_rng([seed, 2, index])
    n_frames = int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    clip = TASK_FUNCTIONS[task](rng, n_frames)
    distractors = [clip.distractors[i] for i in rng.permutation(len(clip.distractors))]
    options = distractors[:answer_pos] + [clip.answer] + distractors[answer_pos:]
    record = {
        "id": f"syn{seed}-{index:05d}",
        "question": clip.question,
        "options": options,
        "answer": OPTION_LETTERS[answer_pos],
        "task": task,
        "metadata": {"n_frames": n_frames, "fps": FPS, "answer_text": clip.answer, **clip.details},
    }
    return record, clip.frames


def generate(seed: int, n: int, out_dir: str | Path, progress: bool = False) -> Path:
    """Render samples 0..n-1 of `seed` into `out_dir` (videos/*.mp4 + annotations.jsonl); return the JSONL."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in tqdm(range(n), desc=f"synthetic seed {seed}", disable=not progress, unit="clip"):
        record, frames = make_sample(seed, index)
        video = f"videos/{record['id']}.mp4"
        write_mp4(out / video, frames, fps=FPS)
        lines.append(
            json.dumps({"id": record["id"], "video": video, **{k: v for k, v in record.items() if k != "id"}})
        )
    path = out / ANNOTATIONS
    path.write_text("\n".join(lines) + "\n")
    (out / "dataset.json").write_text(
        json.dumps({"name": "synthetic", "format": FORMAT, "seed": seed, "n": n}) + "\n"
    )
    return path


# ---------------------------------------------------------------- cache
def resolve(split: str | None = None, seed: int | None = None, n: int | None = None) -> tuple[str, int, int]:
    """(cache key, seed, size) for a shipped split or an explicit seed (default: the test split)."""
    from flowlens.errors import FlowlensError

    if split is not None and seed is not None:
        raise FlowlensError("give either a split or a seed for the synthetic dataset, not both")
    if n is not None and n < 1:
        raise FlowlensError(f"the number of samples must be positive, got {n}")
    if seed is not None:
        return str(seed), int(seed), n or DEFAULT_SEED_SIZE
    split = split or DEFAULT_SPLIT
    if split not in SPLIT_SEEDS:
        raise FlowlensError(
            f"unknown synthetic split {split!r}; use one of {', '.join(SPLIT_SEEDS)} or a seed"
        )
    return split, SPLIT_SEEDS[split], n or SPLIT_SIZES[split]


def cached(
    split: str | None = None, seed: int | None = None, n: int | None = None, progress: bool = False
) -> Path:
    """JSONL of a synthetic set under $FLOWLENS_CACHE/synthetic/<split-or-seed>-<n>/, generated once, atomically."""
    from flowlens.models.tiny import cache_root

    key, seed, n = resolve(split, seed, n)
    target = cache_root() / "synthetic" / f"{key}-{n}"
    if _is_current(target):
        return target / ANNOTATIONS
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-{n}-", dir=target.parent))
    try:
        generate(seed, n, staging, progress=progress)
        if target.exists() and not _is_current(target):  # stale format: move it aside, then replace
            stale = Path(tempfile.mkdtemp(prefix=f".stale-{key}-{n}-", dir=target.parent))
            target.rename(stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        with contextlib.suppress(OSError):  # another process finished first
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / ANNOTATIONS


def _is_current(folder: Path) -> bool:
    try:
        meta = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format") == FORMAT and (folder / ANNOTATIONS).exists()
