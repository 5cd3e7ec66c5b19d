"""Train the toy video LLM on the synthetic benchmark: `python -m flowlens.zoo.train_toy [--out DIR]`.

Reproduces `flowlens/zoo/toy/` on CPU (2 threads) from a seed, in two stages:

1. text warm-up (`flowlens.zoo.text_warmup`): the language model learns to answer multiple choice
   with a letter, from text-only questions that name the answer;
2. video instruction tuning: the synthetic train split, every sample prepared once with
   `VideoLM.prepare` (the exact inputs evaluation uses), cross-entropy on the answer letter at
   `last`, with fading auxiliary targets early on: the answer's first word at `last`, and a word the
   video alone determines (direction, first object) at the end of every frame.

Saves weights (safetensors), processor, prompt template and a JSON training log (config, per-epoch
loss, val accuracy per task, wall time) into the output folder.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowlens import compat
from flowlens.data import read_jsonl, synthetic
from flowlens.models.base import VideoLM
from flowlens.models.llava_next_video import LlavaNextVideoAdapter
from flowlens.models.loading import PROMPT_FILE
from flowlens.models.prompt import PromptTemplate
from flowlens.zoo import TOY_DIR
from flowlens.zoo.encoding import Encoded, batch, encode, frame_ends, last_logits
from flowlens.zoo.text_warmup import text_warmup
from flowlens.zoo.toy_model import TOY_TEMPLATE, ToyArchitecture, initialise, toy_components

LOG_NAME = "train_log.json"


@dataclass
class TrainConfig:
    """Everything that determines the toy model (the log records it)."""

    seed: int = 0
    text_steps: int = 800
    text_batch_size: int = 64
    text_lr: float = 3e-3
    train_size: int = synthetic.SPLIT_SIZES["train"]
    val_size: int = synthetic.SPLIT_SIZES["val"]
    frames: int = 8
    epochs: int = 8
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    bf16: bool = True  # bf16 autocast for the training passes (weights and evaluation stay float32)
    # Warm-up objective: also predict the answer's first word ("green", "right", "three") at `last`,
    # with this weight until `concept_hold` of training, fading to 0 at `concept_end`. It gives the
    # vision tower a direct signal before the letter-matching circuit exists; the final model is
    # trained on the letter alone.
    concept_weight: float = 1.0
    concept_hold: float = 0.3
    concept_end: float = 0.6
    # In-video targets: the last token of every frame after the first also predicts a word the video
    # alone determines (`encoding.frame_word_ids`: the direction of motion, the first object's colour),
    # with the same fading weight. Supervised only through the letter at `last`, moving_direction
    # stayed at chance for thousands of steps, and event_order could sit on a ~50% plateau (it told
    # early from late, not first from second); seven targets per clip build those features directly.
    frame_targets: bool = True
    # Curriculum: lead phases, `steps` batches from one task only (full auxiliary weight), before the
    # mixed epochs: mixed in from the start, the motion detector did not form before the auxiliary
    # weight had faded; alone it forms in about 200 steps.
    lead: tuple[tuple[str, int], ...] = (("moving_direction", 300),)
    # Each epoch shows these tasks' samples this many times.
    task_repeats: dict[str, int] = field(default_factory=dict)
    threads: int = 2
    workers: int = 2
    arch: ToyArchitecture = field(default_factory=ToyArchitecture)
    template: PromptTemplate = field(default_factory=lambda: PromptTemplate(**TOY_TEMPLATE.to_dict()))


def build_lm(cfg: TrainConfig) -> VideoLM:
    """An untrained toy `VideoLM` with weights from `cfg.seed`."""
    config, processor = toy_components(cfg.arch)
    torch.manual_seed(cfg.seed)
    model = LlavaNextVideoAdapter.model_class()(config)
    initialise(model, cfg.arch)
    lm = VideoLM(model, processor, LlavaNextVideoAdapter(model, processor), "toy", None)
    lm.template = cfg.template
    return lm


def load_data(cfg: TrainConfig, tokenizer: Any, progress: bool = True) -> tuple[Encoded, Encoded]:
    """Generate (cached) the train and val splits and prepare their inputs (one worker pool for both)."""
    splits = []
    for split, n in (("train", cfg.train_size), ("val", cfg.val_size)):
        samples = read_jsonl(synthetic.cached(split=split, n=n, progress=progress))
        if samples.failures:
            raise RuntimeError(f"synthetic {split} split has unreadable lines: {samples.failures[:3]}")
        splits.append(samples)
    both = encode(
        [*splits[0], *splits[1]], cfg.arch, cfg.template, tokenizer, cfg.frames, cfg.workers, progress
    )
    return both.take(0, len(splits[0])), both.take(len(splits[0]), len(both))


@torch.no_grad()
def accuracy_by_task(model: Any, data: Encoded, pad_id: int, batch_size: int = 64) -> dict[str, float]:
    """Accuracy per task (and `all`) from the option-letter logits at `last`, as `flowlens eval` scores it."""
    model.eval()
    correct: list[bool] = []
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)))
        logits = last_logits(model, batch(data, index, pad_id))
        for row, i in enumerate(index.tolist()):
            letters = logits[row, data.option_ids[i]]
            correct.append(int(letters.argmax()) == int(data.answers[i]))
    result = {
        t: _mean([c for c, task in zip(correct, data.tasks, strict=True) if task == t])
        for t in sorted(set(data.tasks))
    }
    result["all"] = _mean(correct)
    return result


def _mean(values: list[bool]) -> float:
    return round(sum(values) / len(values), 4) if values else float("nan")


def schedule(cfg: TrainConfig, tasks: list[str], generator: torch.Generator) -> list[list[torch.Tensor]]:
    """Index batches per phase: one per lead phase (its task only), then one per epoch over all tasks."""
    phases: list[list[torch.Tensor]] = []
    for task, steps in cfg.lead:
        pool = torch.tensor([i for i, t in enumerate(tasks) if t == task], dtype=torch.long)
        if not steps or not len(pool):
            continue
        draws = torch.cat(
            [
                pool[torch.randperm(len(pool), generator=generator)]
                for _ in range(math.ceil(steps * cfg.batch_size / len(pool)))
            ]
        )
        phases.append([draws[k * cfg.batch_size : (k + 1) * cfg.batch_size] for k in range(steps)])
    pool = torch.tensor([i for i, task in enumerate(tasks) for _ in range(cfg.task_repeats.get(task, 1))])
    for _ in range(cfg.epochs):
        order = pool[torch.randperm(len(pool), generator=generator)]
        phases.append(list(order.split(cfg.batch_size)))
    return phases


def training_loss(
    cfg: TrainConfig, model: Any, data: Encoded, index: torch.Tensor, pad_id: int, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, letter loss) of one batch: the answer letter at `last`, plus `weight` times the
    answer word at `last` and each sample's in-video word at the last token of every frame but the first."""
    ce = torch.nn.functional.cross_entropy
    inputs = batch(data, index, pad_id)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        hidden = model.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values_videos=inputs["pixel_values_videos"],
        ).last_hidden_state
        rows = torch.arange(len(index))
        logits = compat.output_head(model)(hidden[rows, inputs["last"]]).float()
        letter = ce(logits, data.targets[index])
        if weight <= 0:
            return letter, letter
        loss = letter + weight * ce(logits, data.concepts[index])
        framed = data.frame_words[index] >= 0
        if cfg.frame_targets and framed.any():
            ends = frame_ends(inputs["input_ids"][framed], model.config.video_token_id, cfg.frames)[:, 1:]
            rows = torch.arange(int(framed.sum()))[:, None]
            frame_logits = compat.output_head(model)(hidden[framed][rows, ends]).float()
            words = data.frame_words[index][framed].repeat_interleave(ends.shape[1])
            loss = loss + weight * ce(frame_logits.flatten(0, 1), words)
    return loss, letter


def train(
    cfg: TrainConfig, lm: VideoLM, train_set: Encoded, val_set: Encoded, progress: bool = True
) -> dict[str, Any]:
    """Train `lm.model` in place (lead phases, then `cfg.epochs`); return the per-phase log."""
    from tqdm.auto import tqdm

    model, pad_id = lm.model, int(lm.tokenizer.pad_token_id)
    phases = schedule(cfg, train_set.tasks, torch.Generator().manual_seed(cfg.seed))
    leads = [f"lead {task}" for task, steps in cfg.lead if steps and task in train_set.tasks]
    names = leads + [f"epoch {k}" for k in range(1, cfg.epochs + 1)]
    lead_steps = sum(map(len, phases[: len(leads)]))
    total = sum(map(len, phases))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98)
    )
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, cfg.warmup_steps, total)
    )
    log: list[dict[str, Any]] = []
    bar = tqdm(total=total, desc="stage 2: video", unit="step", disable=not progress)
    step = 0
    for name, batches in zip(names, phases, strict=True):
        model.train()
        losses, letter_losses = [], []
        for index in batches:
            weight = (
                cfg.concept_weight
                if step < lead_steps
                else _concept_weight(cfg, (step - lead_steps) / (total - lead_steps))
            )
            loss, letter = training_loss(cfg, model, train_set, index, pad_id, weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_schedule.step()
            losses.append(float(loss.detach()))
            letter_losses.append(float(letter.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        val = accuracy_by_task(model, val_set, pad_id)
        log.append(
            {
                "phase": name,
                "steps": len(batches),
                "loss": round(float(np.mean(losses)), 4),
                "letter_loss": round(float(np.mean(letter_losses)), 4),
                "val_accuracy": val,
            }
        )
        bar.write(
            f"{name}: loss {log[-1]['loss']:.4f}  val " + "  ".join(f"{k} {v:.3f}" for k, v in val.items())
        )
    bar.close()
    model.eval()
    return {"phases": log, "steps": total}


def _concept_weight(cfg: TrainConfig, progress: float) -> float:
    """Weight of the answer-word warm-up loss at this point of training (constant, then linear to 0)."""
    if progress < cfg.concept_hold:
        return cfg.concept_weight
    fade = (cfg.concept_end - progress) / max(1e-9, cfg.concept_end - cfg.concept_hold)
    return cfg.concept_weight * max(0.0, fade)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def save(lm: VideoLM, out: Path, log: dict[str, Any]) -> None:
    """Weights (safetensors), processor and tokenizer, and the training log, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(out)
    lm.processor.save_pretrained(out)
    (out / PROMPT_FILE).write_text(json.dumps(lm.template.to_dict(), indent=2) + "\n")
    (out / LOG_NAME).write_text(json.dumps(log, indent=2) + "\n")


def run(cfg: TrainConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Generate data, prepare inputs, train and save; return the log."""
    start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    lm = build_lm(cfg)
    train_set, val_set = load_data(cfg, lm.tokenizer, progress)
    prepared = time.perf_counter()
    warmup = text_warmup(lm, cfg.text_steps, cfg.text_batch_size, cfg.text_lr, cfg.seed, cfg.bf16, progress)
    warmed = time.perf_counter()
    log = train(cfg, lm, train_set, val_set, progress)
    finished = time.perf_counter()
    log = {
        "config": {
            **asdict(cfg),
            "splits": {"train": synthetic.SPLIT_SEEDS["train"], "val": synthetic.SPLIT_SEEDS["val"]},
            "dataset_format": synthetic.FORMAT,
        },
        "text_warmup": warmup,
        **log,
        "final_val_accuracy": log["phases"][-1]["val_accuracy"],
        "wall_time_s": {
            "data": round(prepared - start, 1),
            "text_warmup": round(warmed - prepared, 1),
            "video": round(finished - warmed, 1),
            "total": round(finished - start, 1),
        },
        "torch": torch.__version__,
    }
    save(lm, out, log)
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flowlens.zoo.train_toy", description=__doc__.splitlines()[0]
    )
    defaults = TrainConfig()
    parser.add_argument(
        "--out", type=Path, default=Path("artifacts/toy"), help="output folder (default: artifacts/toy)"
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help=f"write into the installed package instead ({TOY_DIR}), replacing the shipped toy model",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--train-size", type=int, default=defaults.train_size)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    args = parser.parse_args(argv)
    cfg = TrainConfig(
        seed=args.seed, epochs=args.epochs, train_size=args.train_size, batch_size=args.batch_size, lr=args.lr
    )
    out = TOY_DIR if args.install else args.out
    log = run(cfg, out)
    print(
        json.dumps(
            {
                "out": str(out),
                "final_val_accuracy": log["final_val_accuracy"],
                "wall_time_s": log["wall_time_s"],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
