"""Logit lens (`flowlens lens`): answer emergence at `last` and the video-token lens (Map the Flow §4, §5).

`flowlens lens MODEL --dataset D` runs one forward per sample and keeps the residual states it needs in
fp32 in memory; `flowlens lens RUN_DIR` reads the states a trace stored (`--activations ...`) and runs no
forward (it loads the run's model for its head, embeddings and final norm). Both write `lens.h5` with the
row tables `answer_lens` and `video_lens` per sample (see `lens_tables`), the derived tables
`lens_keywords` and `lens_keyword_hits`, and with `--tuned` the tuned lens' translators and its run table
`tuned_lens`. Definitions and options: docs/lens.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flowlens.analyses import lens_tables as lt
from flowlens.analyses.lens_keywords import load_keywords, resolve_keywords
from flowlens.analyses.options import all_settings, option, positive, results_settings
from flowlens.analyses.readout import answer_readout, final_hidden, head_logits_fp32
from flowlens.analyses.registry import Analysis, register_analysis
from flowlens.analyses.runner import RunControl, run_analysis, run_over_samples
from flowlens.analyses.trace import check_context
from flowlens.analyses.tuned_lens import (
    METHODS,
    TUNED_ROWS,
    TunedLens,
    kl_columns,
    parse_fit_on,
    prepare_tuned,
    store_tuned,
)
from flowlens.data.sample import Sample
from flowlens.engine.activations import ActivationCapture
from flowlens.engine.lens import NORMS, PROJECTIONS, STATE_MODES, LensHead
from flowlens.errors import FlowlensError, UsageError
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

NAME = "lens"


@dataclass
class LensOptions:
    """What the lens computes; every default is Map the Flow's definition (docs/lens.md keeps the table)."""

    frames: int = option(8, "frames sampled from each video (a run folder keeps its trace's frames)")
    states: str = option(
        "paper",
        "which residual states: paper (answer lens: outputs of layers 0..L-2, video lens: inputs of layers "
        "0..L-2; both: the final norm's output at L-1) or resid_post (every layer's output, raw)",
        choices=STATE_MODES,
    )
    projection: str = option(
        "input",
        "video-token lens projection: input (the paper: input-embedding matrix) or output (the output head)",
        choices=PROJECTIONS,
    )
    video_norm: str = option(
        "none", "video-token lens: apply the final norm first (final) or not (none, the paper)", choices=NORMS
    )
    video_lens: bool = option(True, "run the video-token lens too (--no-video-lens: the answer lens alone)")
    top_k: int = option(10, "top tokens kept per video token and state")
    keywords: str | None = option(
        None,
        "YAML file {spatial: [...], temporal: [...]} replacing the paper's keyword lists",
        affects_results=False,  # the resolved lists are part of the run's identity
        metavar="FILE",
    )
    bin_size: int = option(5, "keyword statistics: states per bin")
    bin_overlap: int = option(
        0,
        "keyword statistics: states each bin borrows from the next (the released code's inclusive slice: 1)",
    )
    min_count: int = option(100, "keyword statistics: drop keywords with fewer top-1 hits in all")
    tuned: bool = option(False, "also fit and compare a tuned lens (Belrose et al. 2023; beyond the paper)")
    fit_on: str | None = option(
        None,
        "tuned-lens calibration: N (the first N samples of the run; the rest are held out) or a dataset, "
        "NAME[@SPLIT] (e.g. synthetic@val[:64]; every run sample is held out)",
        metavar="N|DATASET[@SPLIT]",
    )
    tuned_fit: str = option(
        "kl", "tuned-lens fit: kl (Adam on KL to the output) or lstsq (ridge)", choices=METHODS
    )
    tuned_steps: int = option(300, "tuned lens: Adam steps per layer (kl)")
    tuned_lr: float = option(1e-3, "tuned lens: Adam learning rate (kl)")
    tuned_seed: int = option(0, "tuned lens: seed of the mini-batches and calibration positions")
    fit_tokens: int = option(
        64, "tuned lens: positions per calibration sample besides `last` (with a forward)"
    )

    def __post_init__(self) -> None:
        for name in ("frames", "top_k", "bin_size", "tuned_steps", "tuned_lr"):
            positive(name, getattr(self, name))
        for name, value, choices in [
            ("states", self.states, STATE_MODES),
            ("projection", self.projection, PROJECTIONS),
            ("video_norm", self.video_norm, NORMS),
            ("tuned_fit", self.tuned_fit, METHODS),
        ]:
            if value not in choices:
                raise FlowlensError(f"--{name.replace('_', '-')} {value!r}: use one of {', '.join(choices)}")
        if self.bin_overlap < 0 or self.min_count < 0 or self.fit_tokens < 0:
            raise FlowlensError("--bin-overlap, --min-count and --fit-tokens must not be negative")
        if self.tuned:
            parse_fit_on(self.fit_on)
        elif self.fit_on is not None:
            raise UsageError("--fit-on is the tuned lens' calibration set: add --tuned")


# ---------------------------------------------------------------------------- one sample, with a forward
@torch.no_grad()
def forward_states(lm: VideoLM, sample: Sample, options: LensOptions) -> tuple[Any, Any, dict]:
    """(layout, answer read-out, {hook: {group: fp32 rows}}) of one forward on `sample`."""
    sample.validate(require_options=True)
    inputs, layout = lm.prepare(sample, frames=options.frames)
    check_context(lm, layout)
    capture = ActivationCapture(
        layout, lt.capture_specs(lm.n_layers, options.states, options.video_lens), "float32"
    )
    with capture.attached(lm.adapter.language_layers(), lm.adapter.block_parts), final_hidden(lm) as grab:
        lm.model(**inputs, logits_to_keep=1)
    logits = head_logits_fp32(lm.adapter.output_head(), grab["last"])[0]
    return layout, answer_readout(logits, layout, lm.tokenizer), capture.result()


def sample_tables(
    head: LensHead,
    activations: dict[str, dict[str, np.ndarray]],
    layout: Any,
    options: LensOptions,
    text: lt.TokenText,
    tuned: TunedLens | None = None,
    held_out: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """The lens row tables of one sample from its states (the same function in both modes)."""
    tables = {"answer_lens": lt.answer_lens_columns(head, activations, layout, options.states, text)}
    if options.video_lens:
        tables["video_lens"] = lt.video_lens_columns(
            head,
            activations,
            layout,
            options.states,
            options.projection,
            options.video_norm,
            options.top_k,
            text,
        )
    if tuned is not None:
        columns = kl_columns(head, activations, layout.n_layers, options.states, tuned)
        tables[TUNED_ROWS] = {**columns, "held_out": np.full(len(columns["layer"]), held_out)}
    return tables


# ---------------------------------------------------------------------------- runs
def lens(
    lm: VideoLM,
    samples: Iterable[Sample],
    out: str | Path | None = None,
    options: LensOptions | None = None,
    **control: Any,
) -> Run:
    """The lens over `samples` with a forward each, into `out/lens.h5`; return the opened `Run`."""
    options = options or LensOptions()
    control_ = RunControl(out, **control)
    head, text, spec = LensHead(lm), lt.TokenText(lm.tokenizer), _spec(lm, options)
    items = samples if hasattr(samples, "failures") else list(samples)
    ids = [str(s.id) for s in items]
    tuned, held_out = prepare_tuned(lm, head, options, _previous(control_), ids, samples=items)

    def write_one(writer: RunWriter, sample: Sample) -> None:
        layout, readout, states = forward_states(lm, sample, options)
        tables = sample_tables(head, states, layout, options, text, tuned, str(sample.id) in held_out)
        writer.write_rows(str(sample.id), layout, readout, tables, metadata=dict(sample.metadata))

    settings, identity = {**all_settings(options), **spec}, {**results_settings(options), **spec}
    run = run_analysis(
        lm, items, NAME, settings, identity, write_one, dataclasses.replace(control_, report=False)
    )
    return _finish(run, tuned, control_.report)


@dataclass
class _Stored:
    """A traced sample of the source run, as the run loop sees it."""

    id: str
    metadata: dict[str, Any]
    video: Any = None


def lens_from_run(
    source: str | Path,
    out: str | Path | None = None,
    options: LensOptions | None = None,
    lm: VideoLM | None = None,
    device: str | None = None,
    dtype: str | None = None,
    **control: Any,
) -> Run:
    """The lens over a trace run's stored activations (no forward), into `out/lens.h5` (default: beside it).

    `lm`: the run's model, already loaded (else it is loaded from the run's config, for the head,
    embeddings and final norm only).
    """
    options = options or LensOptions()
    src = lt.source_run(Path(source), skip=f"{NAME}.h5")
    try:
        return _from_source(src, out, options, lm, device, dtype, control)
    finally:
        src.close()


def _from_source(
    src: Run,
    out: str | Path | None,
    options: LensOptions,
    lm: VideoLM | None,
    device: str | None,
    dtype: str | None,
    control: dict[str, Any],
) -> Run:
    control_ = RunControl(out if out is not None else src.path.parent, **control)
    control_.check(f"{NAME}.h5")
    traced = src.traced
    if not traced:
        raise FlowlensError(f"{src.path} holds no traced sample to read states from")
    frames = src.config.get("settings", {}).get("frames", options.frames)
    options = dataclasses.replace(options, frames=int(frames))
    lm = lm or lt.load_run_model(src, device, dtype)
    n_layers = src.layout(traced[0]).n_layers
    if lm.n_layers != n_layers:
        raise FlowlensError(
            f"{src.config.get('model')} has {lm.n_layers} layers, the run's layouts {n_layers}"
        )
    groups = lt.stored_groups(src, n_layers, options.states, options.video_lens)
    head, text, spec = LensHead(lm), lt.TokenText(lm.tokenizer), _spec(lm, options)
    last_rows = lt.read_last_rows(src, groups, traced)
    stored = [_Stored(s, src.metadata(s)) for s in traced]
    tuned, held_out = prepare_tuned(lm, head, options, _previous(control_), traced, last_rows=last_rows)

    def write_one(writer: RunWriter, sample: _Stored) -> None:
        layout = src.layout(sample.id)
        states = lt.read_states(src, sample.id, groups, last_rows)
        tables = sample_tables(head, states, layout, options, text, tuned, sample.id in held_out)
        writer.write_rows(sample.id, layout, src.answer(sample.id), tables, metadata=sample.metadata)

    settings, identity = {**all_settings(options), **spec}, {**results_settings(options), **spec}
    model = {k: src.config.get(k) for k in ("model", "revision", "dtype", "template")}
    origin = {
        "run": str(src.path),
        "analysis": src.config.get("analysis"),
        "dtypes": lt.source_dtypes(src, groups, traced[0]),
    }
    config = {
        "analysis": NAME,
        **model,
        "settings": settings,
        "dataset": src.config.get("dataset", {}),
        "source": origin,
        "identity": {
            "analysis": NAME,
            **model,
            "settings": identity,
            "dataset": src.config.get("identity", {}).get("dataset", {}),
            "source": "stored activations",
        },
    }
    path = Path(control_.out) / f"{NAME}.h5"
    run = run_over_samples(
        lm, stored, path, config, write_one, control_.resume, control_.overwrite, False, control_.progress
    )
    return _finish(run, tuned, control_.report)


def _previous(control: RunControl) -> Path | None:
    """The run file a resumed run continues (its tuned-lens translators are reused)."""
    path = Path(control.out) / f"{NAME}.h5" if control.out is not None else None
    return path if control.resume and path is not None and path.is_file() else None


def _spec(lm: VideoLM, options: LensOptions) -> dict[str, Any]:
    """What the options resolve to against this model: the keyword lists' first sub-tokens."""
    return {"keyword_tokens": resolve_keywords(lm.tokenizer, load_keywords(options.keywords))}


def _finish(run: Run, tuned: TunedLens | None, report: bool) -> Run:
    """Store the tuned lens (translators, held-out KL summary) with the run, then write the report."""
    if tuned is not None:
        run = store_tuned(run, tuned)
    if report:
        from flowlens.report.html import write_report

        write_report(run, run.path.with_suffix(".html"))
    return run


# ---------------------------------------------------------------------------- registration
@register_analysis
class LensAnalysis(Analysis):
    name = NAME
    help = "logit lens: answer emergence at `last` and the video-token lens (Map the Flow Fig. 4, 9)"
    Options = LensOptions

    def resolve(self, args: argparse.Namespace, options: LensOptions) -> dict[str, Any]:
        load_keywords(options.keywords)  # a bad keyword file fails before the model loads
        return {"device": getattr(args, "device", None), "dtype": getattr(args, "dtype", None)}

    def announce(self, lm: VideoLM, samples: Any, options: LensOptions) -> list[str]:
        what = "answer lens" + (
            f" and video-token lens ({options.projection} projection)" if options.video_lens else ""
        )
        return [f"lens: {what} over {len(samples)} samples, states {options.states}, one forward each"]

    def run(self, lm: VideoLM, samples: Any, options: LensOptions, control: RunControl, **extra: Any) -> Run:
        return lens(lm, samples, control.out, options, **control.kwargs())

    def from_run(self, source: Path, options: LensOptions, control: RunControl, **extra: Any) -> Run:
        return lens_from_run(
            source, control.out, options, None, extra.get("device"), extra.get("dtype"), **control.kwargs()
        )

    def summary(self, run: Run) -> list[str]:
        from flowlens.report.lens import summary_lines

        return summary_lines(run)

    def summary_json(self, run: Run) -> dict[str, Any]:
        from flowlens.report.lens import summary_json

        return summary_json(run)


def _register_views() -> None:
    from flowlens.analyses.lens_keywords import lens_keyword_hits, lens_keywords
    from flowlens.report.sections import register_section
    from flowlens.store.tables import register_table

    register_table("lens_keywords", "video_lens", lens_keywords)
    register_table("lens_keyword_hits", "video_lens", lens_keyword_hits)

    def section(name: str):
        def build(run: Run):
            from flowlens.report import lens as report

            return getattr(report, name)(run)

        return build

    for order, name in enumerate(["answer_section", "video_section", "keyword_section", "tuned_section"]):
        register_section(f"lens-{name}", section(name), order=60 + order)


_register_views()
