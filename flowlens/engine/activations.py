"""Capture of user-chosen activations (see `flowlens.hooks` for the names), reduced to the chosen positions as they run.

Only the rows of the chosen groups leave the device, one layer at a time; layers x T x d_model never
exists. Where the values come from: `hook_resid_pre` is a decoder layer's input, `hook_resid_post` its
output, `hook_attn_out` / `hook_mlp_out` the outputs of its attention and MLP modules, and
`hook_resid_mid` = resid_pre + attn_out (the residual between the two sub-blocks). Qwen3-VL adds
DeepStack visual features to the hidden state *after* some early layers, at visual positions: there
`hook_resid_post` of layer l (the layer's output, before the addition) differs from `hook_resid_pre` of
layer l + 1 (after it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from flowlens.errors import FlowlensError
from flowlens.hooks import DTYPES, FRAME_MEAN, hook_name, parse_hook, resolve
from flowlens.models.layout import TokenLayout


class ActivationCapture:
    """Forward hooks that keep, per selected hook, the rows of the selected groups (batch size 1)."""

    def __init__(self, layout: TokenLayout, specs: list[str] | tuple[str, ...], dtype: str = "float16"):
        if dtype not in DTYPES:
            raise FlowlensError(f"activation dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        self.layout = layout
        self.dtype = DTYPES[dtype]
        self.wanted = resolve(specs, layout)
        self.values: dict[str, dict[str, np.ndarray]] = {}
        self._pre: dict[int, torch.Tensor] = {}
        self._index: dict[str, torch.Tensor] = {}
        self._frames: torch.Tensor | None = None

    @property
    def layers(self) -> set[int]:
        return {parse_hook(name)[0] for name in self.wanted}

    # ------------------------------------------------------------------ recording
    def _keep(self, name: str, hidden: torch.Tensor) -> None:
        """Reduce one (T, D) activation to every group wanted at `name`; only those rows go to the CPU."""
        groups = self.wanted.get(name)
        if not groups or hidden.shape[0] != self.layout.seq_len:
            return  # not wanted, or not the traced prefill (a decode step)
        out = self.values.setdefault(name, {})
        for group in groups:
            if group == FRAME_MEAN:
                rows = self._frame_means(hidden)
            else:
                index = self._index.get(group)
                if index is None or index.device != hidden.device:
                    index = self._index[group] = torch.as_tensor(self.layout[group], device=hidden.device)
                rows = hidden.index_select(0, index)
            out[group] = rows.detach().float().cpu().numpy().astype(self.dtype)

    def _frame_means(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._frames is None or self._frames.device != hidden.device:
            weights = torch.zeros(self.layout.n_frames, self.layout.seq_len)
            for f in range(self.layout.n_frames):
                positions = torch.as_tensor(self.layout.frame_features(f))
                weights[f, positions] = 1.0 / max(1, positions.numel())
            self._frames = weights.to(hidden.device)
        return self._frames @ hidden.float()

    def _layer_hooks(self, index: int):
        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = (args[0] if args else kwargs["hidden_states"])[0]
            self._pre[index] = hidden
            self._keep(hook_name(index, "hook_resid_pre"), hidden)

        def post(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            hidden = (output[0] if isinstance(output, tuple) else output)[0]
            self._keep(hook_name(index, "hook_resid_post"), hidden)
            self._pre.pop(index, None)

        def attn(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            out = (output[0] if isinstance(output, tuple) else output)[0]
            self._keep(hook_name(index, "hook_attn_out"), out)
            if hook_name(index, "hook_resid_mid") in self.wanted and index in self._pre:
                self._keep(hook_name(index, "hook_resid_mid"), self._pre[index] + out)

        def mlp(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
            self._keep(
                hook_name(index, "hook_mlp_out"), (output[0] if isinstance(output, tuple) else output)[0]
            )

        return pre, post, attn, mlp

    @contextlib.contextmanager
    def attached(self, layers: nn.ModuleList, parts) -> Iterator[None]:
        """Hook every wanted layer; `parts(layer)` gives its (attention, MLP) modules."""
        handles = []
        for index in sorted(self.layers):
            layer = layers[index]
            pre, post, attn, mlp = self._layer_hooks(index)
            attention, feed_forward = parts(layer)
            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layer.register_forward_hook(post))
            handles.append(attention.register_forward_hook(attn))
            handles.append(feed_forward.register_forward_hook(mlp))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._pre.clear()

    def result(self) -> dict[str, dict[str, np.ndarray]]:
        """hook name -> group -> (rows, d_model) array; every wanted (hook, group) must have been seen."""
        missing = [
            f"{n}@{g}" for n, groups in self.wanted.items() for g in groups if g not in self.values.get(n, {})
        ]
        if missing:
            raise RuntimeError(f"no activations captured for {', '.join(missing[:5])}")
        return self.values
