"""`VideoAdapter` (what differs per architecture) and `VideoLM` (the wrapped model users hold).

An adapter knows only where the language layers are, how to call the family's processor, and how
the processor lays out video tokens (frame groups and spatial cells). Everything else -- the
prompt, and mapping prompt parts to token positions -- is shared and exact:

1. The chat template is rendered once with a marker as the user text; splitting on it gives the
   template text before and after the user message, so every prompt part has a known character span.
2. The processor tokenizes the text and expands the video placeholder into video tokens.
3. The tokenizer alone tokenizes the same text with offsets (placeholder not expanded). The two id
   sequences must be equal outside the placeholder; that check is what makes positions exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from flowlens import compat
from flowlens.data.sample import Sample
from flowlens.data.video import Frames, read_frames
from flowlens.errors import LayoutError
from flowlens.models.layout import TokenLayout, frame_group_name
from flowlens.models.prompt import PromptTemplate, build_user_text

USER_MARKER = "\u2063FLOWLENS_USER_TEXT\u2063"


@dataclass
class FrameGroupCells:
    """One frame group as the processor lays it out: the spatial cell of each of its tokens, in order."""

    rows: np.ndarray
    cols: np.ndarray
    sources: list[int]
    grid: tuple[int, int]

    @classmethod
    def full_grid(cls, rows: int, cols: int, sources: list[int]) -> FrameGroupCells:
        """A row-major `rows` x `cols` grid of tokens (the common case)."""
        r, c = np.divmod(np.arange(rows * cols), cols)
        return cls(r, c, sources, (rows, cols))

    def __len__(self) -> int:
        return int(self.rows.size)


@dataclass
class VideoTokenPlan:
    """What an adapter derives from the processor outputs: feature token ids and frame groups in order.

    `trailing_separators` counts feature-token positions after the last group that carry no spatial
    cell (LLaVA-OneVision's newline token); they are assigned to the last frame group with row = col = -1.
    """

    feature_token_ids: set[int]
    frame_groups: list[FrameGroupCells]
    trailing_separators: int = 0
    notes: list[str] = field(default_factory=list)


class Prepared(NamedTuple):
    """Model inputs (a `BatchFeature` of tensors) and the exact `TokenLayout` of the sequence."""

    inputs: Any
    layout: TokenLayout


class VideoAdapter:
    """Per-architecture knowledge. Subclasses set the class attributes and override the hooks below."""

    architectures: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = ""
    model_class_name: ClassVar[str] = ""
    tiny_default_layers: ClassVar[int] = 4

    def __init__(self, model: nn.Module, processor: Any):
        self.model = model
        self.processor = processor

    # -- model structure -------------------------------------------------------
    @classmethod
    def model_class(cls) -> type:
        import transformers

        return getattr(transformers, cls.model_class_name)

    @classmethod
    def tiny_components(cls, n_layers: int) -> tuple[Any, Any]:
        """(config, processor) of a tiny random-weight model of this family, for tests and benchmarks."""
        raise NotImplementedError(f"{cls.__name__} has no tiny model")

    @property
    def text_config(self) -> Any:
        return self.model.config.get_text_config()

    def language_model(self) -> nn.Module:
        """The decoder stack (embeddings excluded from its call, final norm included)."""
        return compat.decoder(self.model)

    def language_layers(self) -> nn.ModuleList:
        """The decoder layers of the language model (the ones flowlens traces and intervenes on)."""
        return self.language_model().layers

    def block_parts(self, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
        """A decoder layer's attention and MLP modules (their outputs are `hook_attn_out` / `hook_mlp_out`)."""
        return layer.self_attn, layer.mlp

    def output_head(self) -> nn.Module:
        """The unembedding applied to the language model's final (normed) hidden state."""
        return compat.output_head(self.model)

    def final_norm(self) -> nn.Module:
        """The norm the decoder applies after its last layer (`language_model().norm` in every family here)."""
        return self.language_model().norm

    # -- inputs ----------------------------------------------------------------
    def placeholder_token_id(self) -> int:
        """Id of the single token the chat template puts where the video goes."""
        return int(self.processor.video_token_id)

    def conversation(self, user_text: str, system: str | None) -> list[dict[str, Any]]:
        """Chat messages: optional system prompt, then a user turn with the video before the text."""
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user_text}]})
        return messages

    def processor_kwargs(self, frames: Frames) -> dict[str, Any]:
        """Extra keyword arguments for the processor call (e.g. video metadata for timestamps)."""
        return {}

    def video_plan(self, inputs: Any, frames: Frames) -> VideoTokenPlan:
        """Frame groups and spatial cells, from processor outputs and config arithmetic."""
        raise NotImplementedError

    def sample_frames(self, sample: Sample, n: int) -> Frames:
        return read_frames(sample, n)


class VideoLM:
    """A Hugging Face video LLM with its processor and adapter: the object every analysis takes."""

    def __init__(
        self, model: nn.Module, processor: Any, adapter: VideoAdapter, name: str, revision: str | None
    ):
        self.model = model
        self.processor = processor
        self.adapter = adapter
        self.name = name
        self.revision = revision
        self.template = PromptTemplate()

    def __repr__(self) -> str:
        cfg = self.adapter.text_config
        return (
            f"VideoLM({self.name!r}, family={self.family}, layers={cfg.num_hidden_layers}, "
            f"heads={cfg.num_attention_heads}, device={self.device}, dtype={self.dtype})"
        )

    # -- properties -------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_layers(self) -> int:
        return int(self.adapter.text_config.num_hidden_layers)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    # -- inputs -----------------------------------------------------------------
    def prepare(
        self,
        sample: Sample,
        frames: int = 8,
        template: PromptTemplate | None = None,
        transform: Callable[[Frames], Frames] | None = None,
    ) -> Prepared:
        """Model inputs for `sample` with `frames` sampled frames, and their exact `TokenLayout`.

        The prompt is `template`, else the preset named by the sample's `metadata["template"]` (set by
        benchmark loaders), else this model's `template`. `transform` changes the sampled frames before the
        processor sees them (e.g. a patching corruption).
        """
        template = template or self.template_for(sample)
        sample.validate(require_options=False)
        sampled = self.adapter.sample_frames(sample, frames)
        if transform is not None:
            sampled = transform(sampled)
        user = build_user_text(sample, template)
        before, after = self._render_around_user(template.system)
        text = before + user.text + after + template.answer_prefix
        inputs = self.processor(
            text=[text],
            videos=[sampled.frames],
            return_tensors="pt",
            **self.adapter.processor_kwargs(sampled),
        )
        layout = LayoutBuilder(self, sample, text, len(before), user.spans, inputs, sampled).build()
        return Prepared(inputs.to(self.device), layout)

    def template_for(self, sample: Sample) -> PromptTemplate:
        """The preset named in the sample's metadata (a benchmark's prompt), else this model's template."""
        name = (sample.metadata or {}).get("template")
        if not name:
            return self.template
        from flowlens.data import templates

        return templates.get(name)

    def _render_around_user(self, system: str | None) -> tuple[str, str]:
        """Chat-template text before and after the user message, found with a marker."""
        rendered = self.processor.apply_chat_template(
            self.adapter.conversation(USER_MARKER, system), add_generation_prompt=True, tokenize=False
        )
        if isinstance(rendered, list):
            rendered = rendered[0]
        if rendered.count(USER_MARKER) != 1:
            raise LayoutError("the chat template must render the user text exactly once and unchanged")
        before, after = rendered.split(USER_MARKER)
        return before, after

    def trace(self, samples: Any, out: Any = None, **kwargs: Any) -> Any:
        """Trace `samples` (attention flows, residual summaries, answers) into `out/trace.h5`; return the `Run`.

        `kwargs`: `flowlens.analyses.trace.TraceOptions` fields (`frames`, `video_layers`) and `RunControl`
        fields (`resume`, `overwrite`, `report`, `progress`).
        """
        from flowlens.analyses.trace import TraceOptions
        from flowlens.analyses.trace_run import trace

        options, control = _split_options(TraceOptions, kwargs)
        return trace(self, samples, out, options, **control)

    def knockout(
        self,
        samples: Any,
        spec_or_preset: Any = "map-the-flow",
        window: int = 9,
        out: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Attention-knockout sweep (every curve of a preset or `BlockSet`, every layer window); return the `Run`.

        `kwargs`: `flowlens.analyses.knockout.SweepOptions` fields (`style`, `centres`, `frames`,
        `batch_size`) and `RunControl` fields (`resume`, `overwrite`, `report`, `progress`).
        """
        from flowlens.analyses.knockout import SweepOptions
        from flowlens.analyses.knockout_run import knockout

        options, control = _split_options(SweepOptions, {"window": window, **kwargs})
        for warning in options.check(self.n_layers):
            warnings.warn(warning, stacklevel=2)
        return knockout(self, samples, spec_or_preset, out, options, **control)

    def pathways(
        self, samples: Any, rules: Any = None, out: Any = None, auto: bool = False, **kwargs: Any
    ) -> Any:
        """Effective pathways: a `RuleTable` (or YAML path), or `auto=True` to derive rule tables from a sweep.

        `kwargs`: `flowlens.analyses.pathways.PathwayOptions` fields (`frames`, `random_seed`,
        `random_control`) and `RunControl` fields; return the `Run`.
        """
        from flowlens.analyses.pathways import PathwayOptions, auto_pathways, pathways
        from flowlens.engine.pathways import RuleTable

        if auto == (rules is not None):
            raise ValueError("give exactly one of `rules` or `auto=True`")
        options, control = _split_options(PathwayOptions, kwargs)
        if auto:
            return auto_pathways(self, samples, out, options=options, **control)
        table = rules if isinstance(rules, RuleTable) else RuleTable.load(rules)
        return pathways(self, samples, table, out, options, **control)

    def patch(self, samples: Any, out: Any = None, **kwargs: Any) -> Any:
        """Activation patching between clean and corrupted videos (`flowlens patch`); return the `Run`.

        `kwargs`: `flowlens.analyses.patch.PatchOptions` fields (`corruption`, `hooks`, `groups`,
        `patch_layers`, `heads`, `directions`, `frames`, `batch_size`) and `RunControl` fields.
        """
        from flowlens.analyses.patch import PatchOptions, patch

        options, control = _split_options(PatchOptions, kwargs)
        return patch(self, samples, out, options, **control)

    # -- nnsight interop (flowlens[nnsight]) ------------------------------------------
    def nnsight(self) -> Any:
        """An `nnsight.NNsight` envoy over this model (the same weights); see docs/nnsight.md."""
        from flowlens.interop.nnsight import envoy

        return envoy(self.model)

    def nnsight_layers(self, env: Any) -> Any:
        """The envoy of the language decoder's layers in `env` (`lm.nnsight()`), whatever the family's path."""
        from flowlens.interop.nnsight import layers

        return layers(self, env)

    def knockout_context(self, knockout: Any, layout: TokenLayout) -> Any:
        """A context applying a `Knockout` to this model's forwards, also inside an nnsight trace."""
        from flowlens.interop.nnsight import knockout_context

        return knockout_context(self, knockout, layout)

    @torch.no_grad()
    def forward(self, inputs: Any, **kwargs: Any) -> Any:
        """One forward pass on prepared inputs (no gradients)."""
        return self.model(**inputs, **kwargs)


def _split_options(options_class: type, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(options dataclass from the keys it has, the remaining keyword arguments for the run control)."""
    from dataclasses import fields

    names = {f.name for f in fields(options_class)}
    options = options_class(**{k: v for k, v in kwargs.items() if k in names})
    return options, {k: v for k, v in kwargs.items() if k not in names}


class LayoutBuilder:
    """Turns processor outputs plus prompt character spans into a validated `TokenLayout`."""

    def __init__(
        self,
        lm: VideoLM,
        sample: Sample,
        text: str,
        user_offset: int,
        user_spans: dict[str, tuple[int, int]],
        inputs: Any,
        frames: Frames,
    ):
        self.lm = lm
        self.sample = sample
        self.text = text
        self.user_offset = user_offset
        self.user_spans = user_spans
        self.inputs = inputs
        self.frames = frames
        self.tokenizer = lm.processor.tokenizer
        self.add_special_tokens = True

    def build(self) -> TokenLayout:
        proc_ids = self.inputs["input_ids"][0].tolist()
        plain_ids, offsets = self._plain_tokens(proc_ids)
        placeholder = self._placeholder_index(plain_ids)
        prefix_len, suffix_len = _common_ends(plain_ids, proc_ids, placeholder)
        shift = len(proc_ids) - len(plain_ids)
        span_start, span_end = prefix_len, len(proc_ids) - suffix_len

        groups: dict[str, list[int]] = {name: [] for name in self.user_spans}
        plan = self.lm.adapter.video_plan(self.inputs, self.frames)
        video = self._video_positions(proc_ids, plan, span_start, span_end)
        cells = self._assign_cells(plan, video)

        # Text tokens outside the expanded region: map through the alignment, then by character span.
        text_positions: list[int] = []
        for i, (start, end) in enumerate(offsets):
            if prefix_len <= i < len(plain_ids) - suffix_len:
                continue
            pos = i if i < prefix_len else i + shift
            text_positions.append(pos)
            part_names = self._parts_of(start, end)
            for name in part_names:
                groups[name].append(pos)

        seq_len = len(proc_ids)
        video_lo, video_hi = int(video[0]), int(video[-1]) + 1
        region = set(range(min(span_start, video_lo), max(span_end, video_hi)))
        video_set = set(video.tolist())
        markup = sorted(region - video_set)
        question = sorted(groups.get("question", []))
        if question and question[0] < max(region):
            raise LayoutError("the question must come after the video in the prompt")
        last = seq_len - 1
        outside = sorted(p for p in range(seq_len) if p not in region)
        prefix = [p for p in outside if p < video_lo]
        q_lo = question[0] if question else last
        q_hi = question[-1] if question else last - 1
        pre_question = [p for p in outside if video_hi <= p < q_lo and p != last]
        post_question = [p for p in outside if q_hi < p < last]
        frame_markup = _markup_by_frame(markup, cells)

        out: dict[str, np.ndarray] = {}
        out["prefix"] = np.asarray(prefix, dtype=np.int64)
        out["video"] = np.asarray(sorted(region), dtype=np.int64)
        out["video_features"] = video
        for f, group in enumerate(cells):
            out[frame_group_name(f)] = np.union1d(group, frame_markup[f]).astype(np.int64)
        for f, own in enumerate(frame_markup):
            if own.size:
                out[f"{frame_group_name(f)}_markup"] = own
        out["video_markup"] = np.asarray(markup, dtype=np.int64)
        out["pre_question"] = np.asarray(pre_question, dtype=np.int64)
        for name in ["question", "question_only"] + [n for n in groups if n.startswith("option_")]:
            out[name] = np.asarray(sorted(groups.get(name, [])), dtype=np.int64)
        letters = self.sample.letters
        answer = self.sample.answer_letter
        if answer is not None:
            out["true_option"] = out[f"option_{answer}"]
            false = [out[f"option_{x}"] for x in letters if x != answer]
            out["false_options"] = np.sort(np.concatenate(false)) if false else np.zeros(0, np.int64)
        out["post_question"] = np.asarray(post_question, dtype=np.int64)
        out["last"] = np.asarray([last], dtype=np.int64)

        partition = ["prefix", *[frame_group_name(f) for f in range(len(cells))]]
        partition += ["pre_question", "question", "post_question", "last"]
        cfg = self.lm.adapter.text_config
        layout = TokenLayout(
            groups=out,
            partition=partition,
            video_cells=self._cell_table(plan),
            frame_sources=[g.sources for g in plan.frame_groups],
            frame_grid=[g.grid for g in plan.frame_groups],
            seq_len=seq_len,
            n_layers=int(cfg.num_hidden_layers),
            n_heads=int(cfg.num_attention_heads),
            n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
            d_model=int(cfg.hidden_size),
            option_letters=letters,
            option_token_ids=self._letter_token_ids(plain_ids, letters),
            answer_letter=answer,
            tokens=self.tokenizer.convert_ids_to_tokens(proc_ids),
            family=self.lm.family,
        )
        layout.validate()
        return layout

    # -- helpers ------------------------------------------------------------------
    def _plain_tokens(self, proc_ids: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """Tokenize the unexpanded text with offsets, with or without special tokens as the processor did."""
        for add_special in (True, False):
            enc = self.tokenizer(self.text, return_offsets_mapping=True, add_special_tokens=add_special)
            if enc["input_ids"][:1] == proc_ids[:1]:
                self.add_special_tokens = add_special
                return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        raise LayoutError("the tokenizer and the processor disagree on the first token")

    def _placeholder_index(self, plain_ids: list[int]) -> int:
        placeholder = self.lm.adapter.placeholder_token_id()
        hits = [i for i, t in enumerate(plain_ids) if t == placeholder]
        if len(hits) != 1:
            raise LayoutError(f"expected one video placeholder token in the prompt, found {len(hits)}")
        return hits[0]

    def _parts_of(self, start: int, end: int) -> list[str]:
        """User-message parts (question, option_A, ...) the token overlaps by at least one character.

        Byte-level BPE merges a part's last character with what follows (`?\n`, `.\n`, `)\n`); such a
        token belongs to the part. A token overlapping two parts belongs to both (documented tie rule).
        """
        if end <= start:
            return []
        lo, hi = start - self.user_offset, end - self.user_offset
        return [name for name, (a, b) in self.user_spans.items() if lo < b and a < hi]

    def _video_positions(self, proc_ids: list[int], plan: VideoTokenPlan, start: int, end: int) -> np.ndarray:
        ids = np.asarray(proc_ids)
        positions = np.flatnonzero(np.isin(ids, list(plan.feature_token_ids)))
        if positions.size == 0:
            raise LayoutError("no video feature tokens in the processor output")
        if positions[0] < start or positions[-1] >= end:
            raise LayoutError("video feature tokens lie outside the expanded placeholder")
        return positions.astype(np.int64)

    def _assign_cells(self, plan: VideoTokenPlan, video: np.ndarray) -> list[np.ndarray]:
        """Split video positions into frame groups, in order, by the plan's group sizes."""
        sizes = [len(g) for g in plan.frame_groups]
        expected = sum(sizes) + plan.trailing_separators
        if expected != video.size:
            raise LayoutError(
                f"processor produced {video.size} video tokens but the config arithmetic gives {expected} "
                f"({' + '.join(map(str, sizes))} + {plan.trailing_separators} separators)"
            )
        bounds = np.cumsum([0, *sizes])
        groups = [video[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]
        if plan.trailing_separators:
            groups[-1] = np.concatenate([groups[-1], video[bounds[-1] :]])
        return groups

    @staticmethod
    def _cell_table(plan: VideoTokenPlan) -> np.ndarray:
        rows = []
        for f, spec in enumerate(plan.frame_groups):
            rows.append(np.stack([np.full(len(spec), f), spec.rows, spec.cols], axis=1))
        if plan.trailing_separators:
            last = len(plan.frame_groups) - 1
            rows.append(np.tile([last, -1, -1], (plan.trailing_separators, 1)))
        return np.concatenate(rows).astype(np.int64)

    def _letter_token_ids(self, plain_ids: list[int], letters: list[str]) -> list[int]:
        """Id of each option letter as the next token after the prompt (exact when it tokenizes alone)."""
        ids = []
        for letter in letters:
            enc = self.tokenizer(self.text + letter, add_special_tokens=self.add_special_tokens)["input_ids"]
            if len(enc) == len(plain_ids) + 1 and enc[:-1] == plain_ids:
                ids.append(int(enc[-1]))
            else:
                ids.append(int(self.tokenizer(letter, add_special_tokens=False)["input_ids"][-1]))
        return ids


def _markup_by_frame(markup: list[int], frames: list[np.ndarray]) -> list[np.ndarray]:
    """Each frame group's markup: the non-feature tokens inside the video that introduce it (those after the
    previous group's last feature token); markup after the last group's features closes it and joins it."""
    ends = np.asarray([int(group[-1]) for group in frames])
    positions = np.asarray(markup, dtype=np.int64)
    owner = np.minimum(np.searchsorted(ends, positions), len(frames) - 1)  # first group ending after p
    return [positions[owner == f] for f in range(len(frames))]


def _common_ends(plain: list[int], proc: list[int], placeholder: int) -> tuple[int, int]:
    """Lengths of the common prefix and suffix of two id sequences, bounded by the placeholder index.

    Verifies that `proc` is `plain` with the placeholder region replaced, which is what makes the
    mapping of text positions exact.
    """
    prefix = 0
    while prefix < placeholder and plain[prefix] == proc[prefix]:
        prefix += 1
    suffix = 0
    max_suffix = len(plain) - placeholder - 1
    while suffix < max_suffix and plain[-1 - suffix] == proc[-1 - suffix]:
        suffix += 1
    if prefix != placeholder or suffix != max_suffix:
        raise LayoutError(
            "the processor changed the prompt outside the video placeholder "
            f"(matched {prefix}/{placeholder} tokens before it and {suffix}/{max_suffix} after)"
        )
    return prefix, suffix
