"""Stage 1 of toy training: text-only multiple choice, so the language model learns to answer with a letter.

A pretrained LLM arrives at video instruction tuning already able to pick "the option that is X" and
say its letter; a from-scratch toy LM does not, and on video alone that letter-binding circuit forms
only after a long plateau. Here the question names the answer ("Which option is green?") over the
option pools of the synthetic benchmark, in the same chat template and prompt layout without the
video. Sequences are short and have no vision tower, so a few hundred steps take about a minute.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from flowlens import compat
from flowlens.data.draw import COLORS, SHAPES
from flowlens.data.sample import OPTION_LETTERS, Sample
from flowlens.data.synthetic import COUNT_WORDS
from flowlens.models.base import USER_MARKER
from flowlens.models.prompt import build_user_text

OPTION_POOLS: tuple[tuple[str, ...], ...] = (
    tuple(COLORS),
    tuple(f"{c} {s}" for c in COLORS for s in SHAPES),
    ("left", "right", "up", "down"),
    COUNT_WORDS,
)


def text_prompt(lm: Any, question: str, options: list[str]) -> str:
    """The full prompt text `lm.prepare` would build for this question, minus the video."""
    messages = [{"role": "user", "content": [{"type": "text", "text": USER_MARKER}]}]
    if lm.template.system:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": lm.template.system}]})
    rendered = lm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    before, after = (rendered[0] if isinstance(rendered, list) else rendered).split(USER_MARKER)
    sample = Sample("text", "", question, options, None)
    return before + build_user_text(sample, lm.template).text + after + lm.template.answer_prefix


def make_batch(lm: Any, rng: np.random.Generator, size: int) -> dict[str, torch.Tensor]:
    """`size` random text-only questions: right-padded ids, `last`, answer-letter and answer-word ids."""
    tok = lm.tokenizer
    seqs, letters, words = [], [], []
    for _ in range(size):
        pool = OPTION_POOLS[int(rng.integers(len(OPTION_POOLS)))]
        k = 2 if rng.random() < 0.25 else 4
        options = [str(x) for x in rng.choice(pool, size=k, replace=False)]
        answer = int(rng.integers(k))
        seqs.append(tok(text_prompt(lm, f"Which option is {options[answer]}?", options))["input_ids"])
        letters.append(tok.convert_tokens_to_ids(OPTION_LETTERS[answer]))
        words.append(tok(options[answer].split()[0], add_special_tokens=False)["input_ids"][0])
    ids = torch.full((size, max(map(len, seqs))), int(tok.pad_token_id), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "last": mask.sum(1) - 1,
        "letters": torch.tensor(letters),
        "words": torch.tensor(words),
    }


def text_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Vocabulary logits at `last` from the language model alone (no vision tower)."""
    hidden = compat.decoder(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    rows = torch.arange(len(batch["last"]))
    return compat.output_head(model)(hidden.last_hidden_state[rows, batch["last"]])


def text_warmup(
    lm: Any, steps: int, batch_size: int, lr: float, seed: int, bf16: bool = True, progress: bool = True
) -> list[dict[str, float]]:
    """Train the language model on text-only multiple choice; return loss and accuracy every 100 steps."""
    from tqdm.auto import tqdm

    model = lm.model
    model.train()
    params = [p for n, p in model.named_parameters() if "vision_tower" not in n and "multi_modal" not in n]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng = np.random.default_rng([seed, 7])
    letter_ids = torch.tensor([lm.tokenizer.convert_tokens_to_ids(x) for x in OPTION_LETTERS[:4]])
    log, losses, hits = [], [], []
    for step in tqdm(range(steps), desc="stage 1: text warm-up", unit="step", disable=not progress):
        batch = make_batch(lm, rng, batch_size)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = text_logits(model, batch).float()
        ce = torch.nn.functional.cross_entropy
        loss = ce(logits, batch["letters"]) + ce(logits, batch["words"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        predicted = letter_ids[logits[:, letter_ids].argmax(1)]
        losses.append(float(loss.detach()))
        hits.append(float((predicted == batch["letters"]).float().mean()))
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log.append(
                {
                    "step": step + 1,
                    "loss": round(float(np.mean(losses)), 4),
                    "accuracy": round(float(np.mean(hits)), 4),
                }
            )
            losses, hits = [], []
    model.eval()
    return log
