"""Multiple-choice prompts as Map the Flow writes them, with the character span of every part.

The spans are what makes the token layout exact: each prompt part is placed at a known character
offset, and the tokenizer's offset mapping turns those offsets into token positions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from flowlens.data.sample import Sample

MVBENCH_SYSTEM = (
    "Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
    "movement of objects, and the action and pose of persons. Based on your observations, select the "
    "best option that accurately addresses the question."
)


@dataclass
class PromptTemplate:
    """How a sample becomes a user message and an assistant prefix (defaults: Map the Flow's MVBench style).

    The user message is `question_prefix + question + options_header + options + instruction`;
    each option is `option_format` joined by `option_separator`. `answer_prefix` opens the assistant
    turn so the next token is the option letter.
    """

    system: str | None = MVBENCH_SYSTEM
    question_prefix: str = "Question: "
    options_header: str = "\nOptions:\n"
    option_format: str = "({letter}) {text}"
    option_separator: str = "\n"
    instruction: str = "\nOnly give the best option."
    answer_prefix: str = "Best option:("

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PromptText:
    """A rendered user message and the [start, end) character span of each part inside it."""

    text: str
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)


def build_user_text(sample: Sample, template: PromptTemplate) -> PromptText:
    """Render the user message of `sample` and record the spans `question`, `question_only`, `option_X`."""
    parts: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    cursor = 0

    def add(piece: str, name: str | None = None) -> None:
        nonlocal cursor
        parts.append(piece)
        if name is not None:
            spans[name] = (cursor, cursor + len(piece))
        cursor += len(piece)

    question = str(sample.question).strip()
    add(template.question_prefix)
    add(question, "question_only")
    if sample.options:
        add(template.options_header)
        for i, (letter, option) in enumerate(zip(sample.letters, sample.options, strict=True)):
            if i:
                add(template.option_separator)
            add(template.option_format.format(letter=letter, text=str(option).strip()), f"option_{letter}")
    spans["question"] = (0, cursor)
    add(template.instruction)
    return PromptText("".join(parts), spans)
