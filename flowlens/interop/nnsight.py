"""nnsight interop (`pip install flowlens[nnsight]`): envoys over the wrapped model, flowlens knockouts inside traces,
nnsight-saved tensors written into flowlens runs. Patterns and caveats: docs/nnsight.md.

Tested with nnsight 0.8.x (`TESTED`); other versions are refused with the installed and tested versions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from flowlens.engine.backend import active_handler, language_attention
from flowlens.engine.masks import CompiledKnockout, EdgeMask
from flowlens.engine.spec import Knockout
from flowlens.errors import FlowlensError
from flowlens.hooks import FRAME_MEAN, parse_hook

if TYPE_CHECKING:
    from flowlens.data.sample import Sample
    from flowlens.models.base import VideoLM
    from flowlens.models.layout import TokenLayout
    from flowlens.store.hdf5 import RunWriter
    from flowlens.store.run import Run

TESTED = ((0, 8), (0, 9))  # [0.8, 0.9): the 0.8 API (0.5-0.7 name things differently)
_SKIP = "ExitTracingException"  # what nnsight raises to defer a `with` body until the model runs


def require() -> Any:
    """The `nnsight` module, if installed in the tested range; else a FlowlensError saying what to do."""
    try:
        import nnsight
    except ImportError:
        raise FlowlensError("nnsight is not installed: pip install 'flowlens[nnsight]'") from None
    version = getattr(nnsight, "__version__", "0")
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if not TESTED[0] <= parts < TESTED[1]:
        raise FlowlensError(
            f"nnsight {version} is outside the range flowlens is tested with (>=0.8,<0.9): "
            "pip install 'nnsight>=0.8,<0.9'"
        )
    return nnsight


def envoy(model: nn.Module) -> Any:
    """An `nnsight.NNsight` envoy over `model` itself (the same modules and weights, nothing copied)."""
    return require().NNsight(model)


def layers_path(lm: VideoLM) -> str:
    """Dotted path of the language decoder's layer list inside `lm.model` (e.g. `model.language_model.layers`)."""
    return _module_path(lm.model, lm.adapter.language_layers())


def _module_path(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise FlowlensError(f"{type(target).__name__} is not a submodule of {type(root).__name__}")


def layers(lm: VideoLM, env: Any) -> Any:
    """The envoy of the language decoder's layers: `layers(lm, env)[5].output` is layer 5's output."""
    return functools.reduce(getattr, layers_path(lm).split("."), env)


# ---------------------------------------------------------------------------- knockouts inside a trace
class _Broadcast:
    """Attention handler: one compiled knockout on every batch row, whatever the batch size."""

    def __init__(self, compiled: CompiledKnockout):
        self.compiled = compiled

    def __call__(self, module, query, key, value, mask, scaling):
        return EdgeMask([self.compiled] * query.shape[0])(module, query, key, value, mask, scaling)


class KnockoutContext:
    """Applies a knockout to the forwards of `lm.model` through the flowlens attention backend.

    Works as a plain context (`with ctx: lm.model(**inputs)`) and inside an nnsight trace in either order:
    nnsight defers its `with` body (and runs the model) after the surrounding `with` statement's contexts
    were left, so a context left by nnsight's deferral stays armed for exactly the next forward.
    """

    def __init__(self, lm: VideoLM, knockout: Knockout, layout: TokenLayout):
        self.lm = lm
        self.compiled = CompiledKnockout.compile(knockout, layout, lm.device)
        self.seq_len = layout.seq_len
        self.forwards = 0
        self._handles: list[Any] = []
        self._stack: contextlib.ExitStack | None = None
        self._one_shot = False

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(language_attention(self.lm.model))
        stack.enter_context(active_handler(_Broadcast(self.compiled), expected_calls=self.lm.n_layers))
        self._stack = stack

    def _after(self, module: nn.Module, args: tuple, output: Any) -> None:
        stack, self._stack = self._stack, None
        self.forwards += 1
        if self._one_shot:
            self._disarm()
        if stack is None:
            return
        if output is None:  # the forward failed: restore quietly, its own error is the one to see
            with contextlib.suppress(FlowlensError):
                stack.close()
            return
        stack.close()  # restores the attention implementation; raises if the backend did not run

    def _arm(self) -> None:
        model = self.lm.model
        self._handles = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, always_call=True),
        ]

    def _disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> KnockoutContext:
        self._arm()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: Any) -> None:
        if kind is not None and kind.__name__ == _SKIP:
            self._one_shot = True  # nnsight runs the body (and the model) once this statement's contexts exit
        else:
            self._disarm()


def knockout_context(lm: VideoLM, knockout: Knockout, layout: TokenLayout) -> KnockoutContext:
    """A context applying `knockout` (compiled against `layout`) to the model's forwards; see `KnockoutContext`."""
    return KnockoutContext(lm, knockout, layout)


# ---------------------------------------------------------------------------- saved tensors into runs
def activation_rows(value: Any, layout: TokenLayout, groups: list[str]) -> dict[str, np.ndarray]:
    """A saved (1, T, D) or (T, D) activation cut to each group's rows (`frame_mean`: mean of each frame's features)."""
    tensor = torch.as_tensor(value).detach().float().cpu()
    if tensor.dim() == 3:
        if tensor.shape[0] != 1:
            raise FlowlensError(f"one sample at a time: got a batch of {tensor.shape[0]}")
        tensor = tensor[0]
    if tensor.dim() != 2 or tensor.shape != (layout.seq_len, layout.d_model):
        raise FlowlensError(
            f"expected a ({layout.seq_len}, {layout.d_model}) activation of this layout, got {tuple(tensor.shape)}"
        )
    out = {}
    for group in groups:
        if group == FRAME_MEAN:
            rows = torch.stack([tensor[layout.frame_features(f)].mean(0) for f in range(layout.n_frames)])
        elif group in layout:
            rows = tensor[torch.as_tensor(layout[group])]
        else:
            raise FlowlensError(f"group {group!r} is not in the layout; groups: {', '.join(layout.groups)}")
        out[group] = rows.numpy()
    return out


def write_activations(
    lm: VideoLM,
    sample: Sample,
    saved: dict[str, Any],
    out: str | Path,
    groups: tuple[str, ...] = ("last", "video"),
    frames: int = 8,
    dtype: str = "float32",
    **control: Any,
) -> Run:
    """A flowlens trace run of `sample` (`out/trace.h5`) whose activations are nnsight-saved tensors.

    `saved`: hook name (`blocks.5.hook_resid_post`) -> the (1, T, D) tensor saved in a trace of
    `lm.prepare(sample, frames)`'s inputs. The trace's own forward supplies the attention flows and the
    answer; `run.activations(hook, group)` then reads the saved rows with their layout index.
    """
    from flowlens.analyses.options import all_settings, results_settings
    from flowlens.analyses.runner import RunControl, run_analysis
    from flowlens.analyses.trace import TraceOptions, trace_sample
    from flowlens.hooks import DTYPES

    for name in saved:
        parse_hook(name)
    specs = [f"{name}@{','.join(groups)}" for name in saved]
    options = TraceOptions(frames=frames, activations=specs, activations_dtype=dtype)
    forward = dataclasses.replace(options, activations=[])  # the rows come from `saved`, not this forward

    def write_one(writer: RunWriter, item: Sample) -> None:
        result = trace_sample(lm, item, forward)
        result.activations = {
            name: {
                group: rows.astype(DTYPES[dtype])
                for group, rows in activation_rows(value, result.layout, list(groups)).items()
            }
            for name, value in saved.items()
        }
        writer.write_sample(result)

    settings = {**all_settings(options), "activations_source": "nnsight"}
    identity = {**results_settings(options), "activations_source": "nnsight"}
    return run_analysis(lm, [sample], "trace", settings, identity, write_one, RunControl(out, **control))
