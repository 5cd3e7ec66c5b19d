"""Activation patching between videos (`flowlens patch`): which group x layer x hook carries the answer.

Per sample: the clean input, a corrupted one (the same question on perturbed frames, `--corruption`; same
token layout), one recording forward each, then batched patched runs: denoising patches clean activations
into the corrupted run, noising corrupted activations into the clean run. Each cell is one batch row (see
`flowlens.engine.patching`). Rows go to the row table `patching`; metric definitions: docs/patching.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flowlens.analyses.options import all_settings, check_layers, option, positive, results_settings
from flowlens.analyses.readout import answer_readout
from flowlens.analyses.registry import Analysis, register_analysis
from flowlens.analyses.runner import RunControl, run_analysis
from flowlens.analyses.trace import check_context
from flowlens.data.sample import Sample
from flowlens.engine.corruption import Corruption
from flowlens.engine.patching import PATCH_HOOKS, PatchCell, source_run, sweep
from flowlens.errors import FlowlensError, SampleError
from flowlens.models.layout import is_frame_group
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM
    from flowlens.models.layout import TokenLayout

NAME = "patch"
TABLE = "patching"
DIRECTIONS = ("denoise", "noise")
FRAMES = "frames"  # expands to every frame group of the layout


@dataclass
class PatchOptions:
    """What a patching sweep patches and how it corrupts; defaults: reversed frames, residual stream, both directions."""

    corruption: str = option(
        "reverse",
        "corrupted video: reverse, shuffle[:SEED], replace:F=S, mask:F, noise:SIGMA[:SEED] or video:PATH",
    )
    frames: int = option(8, "frames sampled from each video")
    hooks: list[str] = option(
        ["hook_resid_post"], "hooks to patch (hook_z: one cell per head)", choices=PATCH_HOOKS
    )
    groups: list[str] = option(
        [FRAMES, "video", "question", "last"],
        "token groups to patch (`frames`: every frame group; `all`: every position)",
        metavar="GROUP",
    )
    patch_layers: list[int] | None = option(
        None, "layers to patch (0-based; default: every layer)", metavar="LAYER"
    )
    heads: list[int] | None = option(None, "hook_z heads (default: every head)", metavar="HEAD")
    directions: list[str] = option(
        list(DIRECTIONS), "denoise (clean -> corrupted), noise (corrupted -> clean)", choices=DIRECTIONS
    )
    batch_size: int = option(
        32, "patched cells per forward (plus one unpatched canary row)", affects_results=False
    )

    def __post_init__(self) -> None:
        positive("frames", self.frames)
        positive("batch_size", self.batch_size)
        self.corruption = str(Corruption.parse(self.corruption))
        for name, values, choices in [
            ("hooks", self.hooks, PATCH_HOOKS),
            ("directions", self.directions, DIRECTIONS),
        ]:
            bad = [v for v in values if v not in choices]
            if bad or not values:
                raise FlowlensError(f"--{name} {' '.join(bad) or '(none)'}: use {', '.join(choices)}")
        if not self.groups:
            raise FlowlensError("--groups: name at least one token group")
        if self.patch_layers is not None:
            self.patch_layers = sorted({int(x) for x in self.patch_layers})
        if self.heads is not None:
            self.heads = sorted({int(x) for x in self.heads})

    def check(self, n_layers: int, n_heads: int) -> None:
        check_layers("patch_layers", self.patch_layers, n_layers)
        bad = [h for h in self.heads or [] if not 0 <= h < n_heads]
        if bad:
            raise FlowlensError(f"--heads {bad}: the model has {n_heads} heads (0 to {n_heads - 1})")

    def cells(self, layout: TokenLayout) -> list[PatchCell]:
        """Every cell of the sweep on this layout, in hook, layer, head, group order."""
        groups: list[str] = []
        for group in self.groups:
            groups += [g for g in (layout.frame_groups if group == FRAMES else [group]) if g not in groups]
        layers = self.patch_layers if self.patch_layers is not None else range(layout.n_layers)
        heads = self.heads if self.heads is not None else range(layout.n_heads)
        out = []
        for hook in self.hooks:
            for layer in layers:
                for head in heads if hook == "hook_z" else [None]:
                    out += [PatchCell(g, int(layer), hook, head) for g in groups]
        return out


# ---------------------------------------------------------------------------- metric
def logit_diff(logits: torch.Tensor, answer: int, corrupted: int) -> torch.Tensor:
    """logit(answer) - logit(corrupted answer), per row of (..., vocab) logits."""
    return logits[..., answer] - logits[..., corrupted]


def normalised(diff: torch.Tensor, clean: float, corrupted: float) -> torch.Tensor:
    """(LD - LD_corrupted) / (LD_clean - LD_corrupted): 0 = the corrupted run's answer, 1 = the clean run's.

    NaN where the corruption leaves the logit difference unchanged (nothing to restore; means skip it).
    """
    if clean == corrupted:
        return torch.full_like(diff, float("nan"))
    return (diff - corrupted) / (clean - corrupted)


def corrupted_answer(logits: torch.Tensor, layout: TokenLayout) -> int:
    """Index of the option the corrupted run prefers; the best other option when it still prefers the answer."""
    letters, ids = layout.option_letters, layout.option_token_ids
    gt = letters.index(layout.answer_letter)
    values = logits[ids].clone()
    values[gt] = -torch.inf
    best = int(values.argmax())
    preferred = int(logits[ids].argmax())
    return preferred if preferred != gt else best


@dataclass
class SamplePatching:
    layout: TokenLayout
    clean_logits: torch.Tensor
    corrupted_logits: torch.Tensor
    rows: dict[str, list[Any]]


@torch.no_grad()
def patch_sample(lm: VideoLM, sample: Sample, options: PatchOptions) -> SamplePatching:
    """Clean and corrupted runs of one sample and every cell in every direction, as rows (docs/patching.md)."""
    sample.validate(require_options=True)
    if sample.answer is None:
        raise SampleError("patching needs the correct answer (the sample has none)")
    corruption = Corruption.parse(options.corruption)
    clean_inputs, layout = lm.prepare(sample, frames=options.frames)
    corrupt_inputs, corrupt_layout = lm.prepare(sample, frames=options.frames, transform=corruption.apply)
    check_context(lm, layout)
    if corrupt_layout.to_dict() != layout.to_dict():
        raise SampleError(
            f"the corrupted video ({corruption}) gives a different token layout ({corrupt_layout.seq_len} "
            f"tokens vs {layout.seq_len}); patching needs the same positions"
        )
    cells = options.cells(layout)
    sites = {(c.layer, c.hook) for c in cells}
    clean_run, clean_values = source_run(lm, clean_inputs, layout, sites)
    corrupt_run, corrupt_values = source_run(lm, corrupt_inputs, layout, sites)
    clean_logits, corrupt_logits = clean_run.logits, corrupt_run.logits
    answer = layout.option_token_ids[layout.option_letters.index(layout.answer_letter)]
    wrong_index = corrupted_answer(corrupt_logits, layout)
    wrong = layout.option_token_ids[wrong_index]
    ld_clean = float(logit_diff(clean_logits, answer, wrong))
    ld_corrupt = float(logit_diff(corrupt_logits, answer, wrong))
    rows: dict[str, list[Any]] = {k: [] for k in _COLUMNS}
    runs = {"denoise": (corrupt_run, clean_values), "noise": (clean_run, corrupt_values)}
    for direction in options.directions:
        target, source = runs[direction]
        logits = sweep(target, cells, source, options.batch_size)
        diff = logit_diff(logits, answer, wrong)
        probs = torch.softmax(logits, -1)
        norm = normalised(diff, ld_clean, ld_corrupt)
        for i, cell in enumerate(cells):
            rows["direction"].append(direction)
            rows["cell"].append(str(cell))
            rows["hook"].append(cell.hook)
            rows["layer"].append(cell.layer)
            rows["head"].append(-1 if cell.head is None else cell.head)
            rows["group"].append(cell.group)
            rows["logit_diff"].append(float(diff[i]))
            rows["logit_diff_norm"].append(float(norm[i]))
            rows["p_answer"].append(float(probs[i, answer]))
            rows["p_corrupted_answer"].append(float(probs[i, wrong]))
    n = len(rows["cell"])
    p_clean, p_corrupt = torch.softmax(clean_logits, -1), torch.softmax(corrupt_logits, -1)
    rows["clean_logit_diff"] = [ld_clean] * n
    rows["corrupted_logit_diff"] = [ld_corrupt] * n
    rows["p_answer_clean"] = [float(p_clean[answer])] * n
    rows["p_answer_corrupted"] = [float(p_corrupt[answer])] * n
    rows["corrupted_answer"] = [layout.option_letters[wrong_index]] * n
    return SamplePatching(layout, clean_logits, corrupt_logits, rows)


_COLUMNS = ("direction", "cell", "hook", "layer", "head", "group", "logit_diff", "logit_diff_norm")
_COLUMNS += ("p_answer", "p_corrupted_answer")


# ---------------------------------------------------------------------------- run
def patch(
    lm: VideoLM,
    samples: Iterable[Sample],
    out: str | Path | None = None,
    options: PatchOptions | None = None,
    **control: Any,
) -> Run:
    """The patching sweep over `samples` into `out/patch.h5`; return the opened `Run`."""
    options = options or PatchOptions()
    options.check(lm.n_layers, int(lm.adapter.text_config.num_attention_heads))
    control_ = RunControl(out, **control)
    items = samples if hasattr(samples, "failures") else list(samples)

    def write_one(writer: RunWriter, sample: Sample) -> None:
        result = patch_sample(lm, sample, options)
        readout = answer_readout(result.clean_logits, result.layout, lm.tokenizer)
        corruption = Corruption.parse(options.corruption)
        metadata = {**_plain(sample.metadata), "corruption": corruption.to_data()}
        metadata["corruption"]["permutation"] = corruption.permutation(options.frames).tolist()
        writer.write_rows(str(sample.id), result.layout, readout, TABLE, result.rows, metadata=metadata)

    spec = {"corruption_spec": Corruption.parse(options.corruption).to_data()}
    settings, identity = {**all_settings(options), **spec}, {**results_settings(options), **spec}
    return run_analysis(lm, items, NAME, settings, identity, write_one, control_)


def _plain(metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))
    }


def mean_effects(run: Run, direction: str = "denoise", hook: str = "hook_resid_post") -> Any:
    """Mean `logit_diff_norm` over samples as a layer x group table (head-resolved cells averaged over heads)."""
    table = run.table(TABLE)
    table = table[(table["direction"] == direction) & (table["hook"] == hook)]
    if table.empty:
        return None
    pivot = table.pivot_table(index="layer", columns="group", values="logit_diff_norm", aggfunc="mean")
    order = sorted(
        pivot.columns, key=lambda g: (not is_frame_group(g), int(g[5:]) if is_frame_group(g) else 0, g)
    )
    return pivot[order]


@register_analysis
class PatchAnalysis(Analysis):
    name = NAME
    help = (
        "activation patching between clean and corrupted videos (group x layer x hook, denoising and noising)"
    )
    Options = PatchOptions

    def check(self, lm: VideoLM, options: PatchOptions, extra: dict[str, Any]) -> list[str]:
        options.check(lm.n_layers, int(lm.adapter.text_config.num_attention_heads))
        return []

    def announce(self, lm: VideoLM, samples: Any, options: PatchOptions) -> list[str]:
        return [
            f"patch: corruption {options.corruption}, hooks {' '.join(options.hooks)}, "
            f"directions {' '.join(options.directions)} over {len(samples)} samples"
        ]

    def run(self, lm: VideoLM, samples: Any, options: PatchOptions, control: RunControl, **extra: Any) -> Run:
        return patch(lm, samples, control.out, options, **control.kwargs())

    def summary(self, run: Run) -> list[str]:
        """Per direction and hook, the cell that restores (denoising) or breaks (noising) the answer most."""
        lines = []
        settings = run.config.get("settings", {})
        for direction in settings.get("directions", []):
            for hook in settings.get("hooks", []):
                effects = mean_effects(run, direction, hook)
                if effects is None:
                    continue
                values = effects.to_numpy()
                if np.isnan(values).all():
                    lines.append(f"{direction} {hook}: the corruption changed no sample's logit difference")
                    continue
                pick = np.nanargmax if direction == "denoise" else np.nanargmin
                layer, group = np.unravel_index(pick(values), values.shape)
                what = "restores most" if direction == "denoise" else "breaks most"
                lines.append(
                    f"{direction} {hook}: {effects.columns[group]}@layer {effects.index[layer]} {what} "
                    f"(mean normalised logit difference {values[layer, group]:.3f})"
                )
        return lines


def _register_views() -> None:
    from flowlens.report.sections import register_section

    def build(run: Run):
        from flowlens.report.patch import patch_section

        return patch_section(run)

    register_section("patch", build, order=70)


_register_views()
