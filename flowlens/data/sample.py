"""`Sample`: one video question with its options and answer, as every dataset loader returns it."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowlens.errors import SampleError

OPTION_LETTERS = string.ascii_uppercase


@dataclass
class Sample:
    """A video question. `video` is a file path or a (T, H, W, 3) uint8 frame array.

    `options` are the answer texts in display order (lettered A, B, ...); `answer` is the correct
    option's letter, or its text, or None for unlabelled data.
    """

    id: str
    video: str | Path | np.ndarray
    question: str
    options: list[str] = field(default_factory=list)
    answer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def letters(self) -> list[str]:
        """Option letters in display order: A, B, C, ..."""
        if len(self.options) > len(OPTION_LETTERS):
            raise SampleError(f"sample {self.id}: {len(self.options)} options, at most 26 are supported")
        return list(OPTION_LETTERS[: len(self.options)])

    @property
    def answer_letter(self) -> str | None:
        """The correct option's letter, whether `answer` was given as a letter or as the option text."""
        if self.answer is None:
            return None
        answer = str(self.answer).strip()
        letters = self.letters
        if answer in letters:
            return answer
        if len(answer) == 3 and answer[0] == "(" and answer[2] == ")" and answer[1] in letters:
            return answer[1]
        for letter, option in zip(letters, self.options, strict=True):
            if option.strip() == answer:
                return letter
        raise SampleError(
            f"sample {self.id}: answer {self.answer!r} is not one of the options "
            f"({', '.join(f'{x}={o!r}' for x, o in zip(letters, self.options, strict=True))})"
        )

    def validate(self, require_options: bool = True) -> None:
        """Raise `SampleError` with a reason when the sample cannot be prepared."""
        if not str(self.id):
            raise SampleError("a sample id must not be empty")
        texts = {"id": self.id, "question": self.question, "answer": self.answer}
        texts.update({f"option {i + 1}": o for i, o in enumerate(self.options)})
        for name, text in texts.items():
            if isinstance(text, str) and not is_unicode(text):
                raise SampleError(f"sample {self.id!r}: the {name} is not valid Unicode (a lone surrogate)")
        if not str(self.question).strip():
            raise SampleError(f"sample {self.id}: empty question")
        if require_options and not self.options:
            raise SampleError(
                f"sample {self.id}: question has no options (multiple choice needs at least one)"
            )
        if any(not str(o).strip() for o in self.options):
            raise SampleError(f"sample {self.id}: an option is empty")
        self.answer_letter  # noqa: B018 - raises when the answer is not an option


def is_unicode(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (holds no lone surrogate, as JSON's `\\ud800` escapes can produce)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
