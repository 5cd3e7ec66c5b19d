"""Tiny tokenizers for random-weight test models and the toy model (no download).

- `build_word_tokenizer`: word-level (every word, digit and punctuation mark one token), for the
  SentencePiece families (LLaVA-NeXT-Video's Vicuna) and the toy model.
- `build_byte_level_tokenizer`: a real byte-level BPE with Qwen2's pre-tokenizer, for the families whose
  language model is Qwen2-based (LLaVA-OneVision, Qwen2/2.5/3-VL, VideoLLaMA3, InternVL). Its merges
  (`BPE_FILE`, shipped, built by `python -m flowlens.models.tiny_tokenizer`) join punctuation and the
  newline after it (`?\n`, `.\n`, `)\n`), as the real tokenizers do, so layout tests see those tokens.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

UNK, PAD, BOS, EOS = "<unk>", "<pad>", "<s>", "</s>"

# Words of the prompt templates and the synthetic dataset; anything else maps to <unk>.
# fmt: off
BASE_WORDS = [
    "question", "options", "only", "give", "the", "best", "option", "carefully", "watch", "video",
    "and", "pay", "attention", "to", "cause", "sequence", "of", "events", "detail", "movement",
    "objects", "action", "pose", "persons", "based", "on", "your", "observations", "select", "that",
    "accurately", "addresses", "user", "assistant", "system", "frame", "seconds", "time", "what",
    "which", "how", "many", "is", "are", "was", "were", "the", "a", "an", "in", "at", "from", "left",
    "right", "up", "down", "top", "bottom", "first", "second", "third", "last", "before", "after",
    "moving", "direction", "object", "count", "order", "appeared", "appear", "color", "colour", "shape",
    "scene", "transition", "changed", "change", "from", "to", "red", "green", "blue", "yellow", "white",
    "black", "purple", "orange", "gray", "grey", "cyan", "magenta", "circle", "square", "triangle",
    "star", "ball", "box", "background", "static", "does", "do", "did", "moves", "move", "none", "one",
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "zero", "there", "it",
    "this", "video", "clip", "shows", "show", "happens", "happen", "end", "start", "beginning", "begin",
    "during", "through", "toward", "towards", "away",
]
# fmt: on


def build_word_tokenizer(
    special_tokens: list[str],
    chat_template: str,
    extra_words: list[str] | None = None,
    named_tokens: dict[str, str] | None = None,
    add_bos: bool = False,
) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: every word, digit and punctuation mark is one token; `special_tokens` atomic.

    `named_tokens` sets attributes processors look up (e.g. {"video_token": "<video>"}).
    """
    vocab_list = [PAD, UNK, BOS, EOS, *special_tokens]
    words = list(string.ascii_uppercase) + list(string.ascii_lowercase) + list(string.digits)
    base = BASE_WORDS + (extra_words or [])
    words += [
        "\n",
        *list(string.punctuation),
        *base,
        *(w.capitalize() for w in base),
        *(w.upper() for w in base),
    ]
    for word in words:
        if word not in vocab_list:
            vocab_list.append(word)
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = None
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\n"), behavior="isolated"),
        ]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    core.add_special_tokens(special_tokens)
    if add_bos:
        from tokenizers import processors

        core.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens=named_tokens or {},
    )
    tokenizer.chat_template = chat_template
    return tokenizer


# ------------------------------------------------------------------ byte-level BPE (Qwen2 pre-tokenizer)
BPE_FILE = Path(__file__).with_name("tiny_bpe.json")
# Qwen2's pre-tokenizer split (tokenizer.json of Qwen/Qwen2-7B): letters, single digits, punctuation runs
# with the newlines that follow them, newline runs, spaces.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
BPE_VOCAB_SIZE = 1200


def _byte_level_core() -> Tokenizer:
    """An untrained byte-level BPE with Qwen2's normalizer, pre-tokenizer and decoder."""
    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    return core


def bpe_corpus() -> list[str]:
    """Text the shipped merges are learned from: the prompt templates, the synthetic set's words, numbers."""
    from flowlens.models.prompt import MVBENCH_SYSTEM

    words = BASE_WORDS + [w.capitalize() for w in BASE_WORDS]
    lines = [MVBENCH_SYSTEM, "You are a helpful assistant.", "Best option:(", "Only give the best option."]
    for i, word in enumerate(words):
        a, b, c = words[(i * 7) % len(words)], words[(i * 11) % len(words)], words[(i * 13) % len(words)]
        lines.append(f"Question: Which {word} {a} {b}?\nOptions:\n(A) {c} {word}.\n(B) {a} ({b})\n(C) {c}")
        lines.append(f"Time {i % 10}.{i % 7}s:{word}, Frame{i % 9 + 1}: <{i % 60}.{i % 10} seconds>")
    lines += [" ".join(str(n) for n in range(k, k + 50)) for k in range(0, 1000, 50)]
    return lines * 3


def build_bpe_file(path: Path = BPE_FILE) -> Path:
    """Learn the byte-level merges from `bpe_corpus` and write the model (vocabulary and merges) to `path`."""
    core = _byte_level_core()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(bpe_corpus(), trainer=trainer)
    model = json.loads(core.to_str())["model"]
    path.write_text(
        json.dumps({"vocab": model["vocab"], "merges": model["merges"]}, ensure_ascii=False) + "\n"
    )
    return path


def build_byte_level_tokenizer(
    special_tokens: list[str],
    chat_template: str,
    named_tokens: dict[str, str] | None = None,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen2's pre-tokenizer and the shipped merges; `special_tokens` atomic, appended."""
    data = json.loads(BPE_FILE.read_text())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in data["merges"]]
    core = _byte_level_core()
    core.model = models.BPE(vocab=data["vocab"], merges=merges)
    core.add_special_tokens(special_tokens)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=eos_token,
        pad_token=pad_token,
        extra_special_tokens=named_tokens or {},
    )
    tokenizer.chat_template = chat_template
    return tokenizer


if __name__ == "__main__":
    print(f"wrote {build_bpe_file()}")
