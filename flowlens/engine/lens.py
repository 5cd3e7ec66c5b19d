"""The logit lens' arithmetic: which residual states it reads and how it projects them onto the vocabulary (fp32).

States are indexed 0..L-1 (L = language layers). Two indexings (`states`):

- `paper` (Map the Flow): the *answer* lens reads transformers' `hidden_states[1:]` at `last` (§4): the
  output of layer l for l = 0..L-2 and, at L-1, the final norm's output; the *video-token* lens (§5) reads
  the *input* of layer i for i = 0..L-2 (i = 0: the embeddings / projector output) and, at L-1, the final
  norm's output. State L-1 is already normalised; the others are raw residuals.
- `resid_post`: the output of layer l (`blocks.{l}.hook_resid_post`) for every l = 0..L-1, all raw (the
  final norm applied only when asked, so state L-1 with the final norm is the model's own output).

A lens projects a state h (optionally through the final norm first; a state that is already the final
norm's output is never normalised twice) with `output` (the unembedding: softmax(h·W_Uᵀ + b)) or `input`
(the input-embedding matrix: softmax(h·E_inᵀ), the paper's video-token lens). Everything is fp32.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from flowlens.errors import FlowlensError
from flowlens.hooks import hook_name

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

STATE_MODES = ("paper", "resid_post")
PROJECTIONS = ("input", "output")
NORMS = ("none", "final")
LOGIT_CHUNK_BYTES = 256 << 20  # rows of a logits block: at most this many bytes of fp32 logits at a time


@dataclass(frozen=True)
class State:
    """State `index` of a lens: the hook it comes from and whether the final norm was already applied."""

    index: int
    hook: str
    final_normed: bool

    @property
    def label(self) -> str:
        return f"final_norm({self.hook})" if self.final_normed else self.hook


def lens_states(n_layers: int, mode: str, lens: str) -> list[State]:
    """The L states of the `answer` or `video` lens under `mode` (see the module docstring)."""
    if mode not in STATE_MODES:
        raise FlowlensError(f"unknown state indexing {mode!r}; use one of {', '.join(STATE_MODES)}")
    last = n_layers - 1
    if mode == "resid_post":
        return [State(i, hook_name(i, "hook_resid_post"), False) for i in range(n_layers)]
    kind = "hook_resid_post" if lens == "answer" else "hook_resid_pre"
    states = [State(i, hook_name(i, kind), False) for i in range(last)]
    return [*states, State(last, hook_name(last, "hook_resid_post"), True)]


def needed_hooks(n_layers: int, mode: str, lens: str) -> list[str]:
    """Hook names whose rows the lens reads (the final norm is applied by flowlens, not stored)."""
    return [state.hook for state in lens_states(n_layers, mode, lens)]


class LensHead:
    """fp32 copies of what a lens projects with (the output head, the input embeddings, the final norm)."""

    def __init__(self, lm: VideoLM):
        self.device = lm.device
        self._lm = lm
        self._matrices: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.norm = copy.deepcopy(lm.adapter.final_norm()).float().to(self.device).requires_grad_(False)

    def matrix(self, projection: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight (vocab, D), bias or None) in fp32 for `output` (the head) or `input` (the embeddings)."""
        if projection not in PROJECTIONS:
            raise FlowlensError(f"unknown projection {projection!r}; use one of {', '.join(PROJECTIONS)}")
        if projection not in self._matrices:
            if projection == "output":
                head = self._lm.adapter.output_head()
                bias = getattr(head, "bias", None)
                weight = head.weight
            else:
                weight, bias = self._lm.model.get_input_embeddings().weight, None
            self._matrices[projection] = (
                weight.detach().to(self.device, torch.float32),
                None if bias is None else bias.detach().to(self.device, torch.float32),
            )
        return self._matrices[projection]

    def vocab_size(self, projection: str) -> int:
        return int(self.matrix(projection)[0].shape[0])

    @torch.no_grad()
    def prepared(self, states: list[State], values: torch.Tensor, norm: str) -> torch.Tensor:
        """(S, rows, D) fp32 lens inputs from the hooks' raw rows: the final norm applied to the states that
        are the final norm's output (`final_normed`), and to every other state when `norm` is `final`."""
        if norm not in NORMS:
            raise FlowlensError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
        x = values.to(self.device, torch.float32)
        todo = [norm == "final" or s.final_normed for s in states]
        if not any(todo):
            return x
        mask = torch.as_tensor(todo, device=self.device)[:, None, None]
        return torch.where(mask, self.norm(x), x)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, projection: str) -> torch.Tensor:
        """fp32 logits (..., vocab) of prepared states."""
        weight, bias = self.matrix(projection)
        return nn.functional.linear(x.to(self.device, torch.float32), weight, bias)

    @torch.no_grad()
    def top_k(self, x: torch.Tensor, projection: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (rows, k) int64, log-probabilities (rows, k)) of the k most probable tokens of each row of x."""
        vocab = self.vocab_size(projection)
        k = min(k, vocab)
        rows = x.reshape(-1, x.shape[-1])
        chunk = max(1, LOGIT_CHUNK_BYTES // (4 * vocab))
        ids, logps = [], []
        for start in range(0, rows.shape[0], chunk):
            logits = self.logits(rows[start : start + chunk], projection)
            top = logits.topk(k, dim=-1)
            ids.append(top.indices.cpu())
            logps.append((top.values - logits.logsumexp(-1, keepdim=True)).cpu())
        if not ids:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return torch.cat(ids).numpy(), torch.cat(logps).numpy()


def stacked(activations: dict[str, dict[str, np.ndarray]], states: list[State], group: str) -> torch.Tensor:
    """(S, rows, D) fp32 tensor of every state's rows at `group` from {hook: {group: (rows, D)}}."""
    missing = [s.hook for s in states if group not in activations.get(s.hook, {})]
    if missing:
        raise FlowlensError(f"no {group!r} rows of {', '.join(missing)}")
    return torch.from_numpy(np.stack([np.asarray(activations[s.hook][group], np.float32) for s in states]))
