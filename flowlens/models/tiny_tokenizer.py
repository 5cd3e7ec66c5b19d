"""A tiny word-level tokenizer for random-weight test models and the toy model (no download)."""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
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
