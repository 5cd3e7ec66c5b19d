"""Training inputs for the toy model: `VideoLM.prepare` run once per sample, then padded batches.

Training sees exactly the tensors evaluation builds (same prepare, same processor); batches are
right-padded, so with causal attention every real token computes what it computes alone, and the
answer is read at each sample's own `last` position.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from multiprocessing import get_context
from typing import Any

import torch

from flowlens import compat
from flowlens.data.sample import Sample


@dataclass
class Encoded:
    """Prepared inputs of a set of samples, aligned by index."""

    ids: list[str]
    tasks: list[str]
    input_ids: list[torch.Tensor]
    pixels: torch.Tensor  # (N, frames, 3, H, W)
    option_ids: list[list[int]]
    answers: torch.Tensor  # (N,) index of the correct option
    concepts: torch.Tensor  # (N,) token id of the first word of the correct option's text
    frame_words: torch.Tensor  # (N,) in-video target word id (see `frame_word_ids`), -1 for none

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, start: int, stop: int) -> Encoded:
        """Samples `start`..`stop`-1 (e.g. one split out of a jointly prepared list)."""
        return Encoded(
            self.ids[start:stop],
            self.tasks[start:stop],
            self.input_ids[start:stop],
            self.pixels[start:stop],
            self.option_ids[start:stop],
            self.answers[start:stop],
            self.concepts[start:stop],
            self.frame_words[start:stop],
        )

    @cached_property
    def targets(self) -> torch.Tensor:
        """Token id of each sample's answer letter (the next token the model must produce); built once."""
        return torch.tensor([ids[a] for ids, a in zip(self.option_ids, self.answers.tolist(), strict=True)])


def frame_word_ids(samples: list[Sample], tokenizer: Any) -> torch.Tensor:
    """Per sample, a word the video alone determines before any question is seen, or -1.

    moving_direction: the direction; event_order: the first object's colour (the question, first or
    last, comes after the video, so only what holds for every question can be a target in it).
    """
    ids = []
    for s in samples:
        task, meta = s.metadata.get("task"), s.metadata
        word = meta.get("direction") if task == "moving_direction" else None
        if task == "event_order" and meta.get("sequence"):
            word = str(meta["sequence"][0]).split()[0]
        ids.append(tokenizer(word, add_special_tokens=False)["input_ids"][0] if word else -1)
    return torch.tensor(ids)


def concept_ids(samples: list[Sample], tokenizer: Any) -> torch.Tensor:
    """Token id of the first word of each sample's correct option ("green", "right", "three", ...)."""
    ids = []
    for s in samples:
        text = s.options[s.letters.index(s.answer_letter)].split()[0]
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"][0])
    return torch.tensor(ids)


def prepare_one(lm: Any, sample: Sample, frames: int) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    """(input_ids, pixel_values_videos, option letter ids, answer index) exactly as `lm.prepare` builds them."""
    inputs, layout = lm.prepare(sample, frames=frames)
    answer = layout.option_letters.index(layout.answer_letter)
    return inputs["input_ids"][0], inputs["pixel_values_videos"][0], list(layout.option_token_ids), answer


_WORKER_LM: Any = None


def _init_worker(arch: Any, template: Any) -> None:
    """Build a processor-only toy `VideoLM` in a worker process (weights are never used by prepare)."""
    global _WORKER_LM
    torch.set_num_threads(1)
    from flowlens.models.base import VideoLM
    from flowlens.models.llava_next_video import LlavaNextVideoAdapter
    from flowlens.zoo.toy_model import toy_components

    config, processor = toy_components(arch)
    model = LlavaNextVideoAdapter.model_class()(config)
    _WORKER_LM = VideoLM(model, processor, LlavaNextVideoAdapter(model, processor), "toy", None)
    _WORKER_LM.template = template


def _prepare_chunk(
    chunk: list[Sample], frames: int
) -> list[tuple[torch.Tensor, torch.Tensor, list[int], int]]:
    return [prepare_one(_WORKER_LM, s, frames) for s in chunk]


def encode(
    samples: list[Sample],
    arch: Any,
    template: Any,
    tokenizer: Any,
    frames: int = 8,
    workers: int = 2,
    progress: bool = True,
) -> Encoded:
    """Prepare every sample with the toy processor and `template`, in `workers` processes, in order."""
    from tqdm.auto import tqdm

    chunks = [samples[i : i + 64] for i in range(0, len(samples), 64)]
    bar = tqdm(total=len(samples), desc="prepare inputs", unit="sample", disable=not progress)
    results: list[tuple[torch.Tensor, torch.Tensor, list[int], int]] = []
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(arch, template)
    ) as pool:
        for done in pool.map(_prepare_chunk, chunks, [frames] * len(chunks)):
            results.extend(done)
            bar.update(len(done))
    bar.close()
    return Encoded(
        ids=[s.id for s in samples],
        tasks=[str(s.metadata.get("task", "-")) for s in samples],
        input_ids=[r[0] for r in results],
        pixels=torch.stack([r[1] for r in results]),
        option_ids=[r[2] for r in results],
        answers=torch.tensor([r[3] for r in results]),
        concepts=concept_ids(samples, tokenizer),
        frame_words=frame_word_ids(samples, tokenizer),
    )


def batch(data: Encoded, index: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded model inputs for `index`, plus `last`: each sample's final real position."""
    seqs = [data.input_ids[i] for i in index.tolist()]
    lengths = torch.tensor([len(s) for s in seqs])
    input_ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = seq
        attention_mask[row, : len(seq)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values_videos": data.pixels[index],
        "last": lengths - 1,
    }


def frame_ends(input_ids: torch.Tensor, video_token_id: int, frames: int) -> torch.Tensor:
    """(B, frames) position of each frame's last video token (each row holds `frames` equal groups)."""
    positions = (input_ids == video_token_id).nonzero()[:, 1]
    return positions.reshape(len(input_ids), frames, -1)[:, :, -1]


def last_logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Vocabulary logits at each sample's `last` position, (B, vocab)."""
    out = model.model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values_videos=inputs["pixel_values_videos"],
    )
    hidden = out.last_hidden_state[torch.arange(len(inputs["last"])), inputs["last"]]
    return compat.output_head(model)(hidden)
