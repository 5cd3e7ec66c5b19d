"""Activation patching with plain forward hooks, batched: one batch row per patched cell.

A cell is `group@blocks.{l}.{hook}` (per-head `hook_z` adds `.h{head}`): in the target run, the activation
at `hook` of layer `l`, at the group's positions, is replaced by the source run's value there. Where the
values live: `hook_resid_pre` is a decoder layer's input, `hook_resid_post` its output, `hook_attn_out` /
`hook_mlp_out` the outputs of its attention and MLP modules, and `hook_z` the input of the attention's
output projection (`o_proj`), heads concatenated, so head h is columns [h * d_head, (h + 1) * d_head).
Many cells run as one batch, each row with its own edits, resuming the target's recorded run at the first
patched layer (`flowlens.engine.resume.CleanRun`: the language model's own forward on the recorded layer
input, batch-expanded); every batch carries one unpatched canary row that must reproduce the target's logits.
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from flowlens.engine.resume import CleanRun
from flowlens.errors import FlowlensError

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM
    from flowlens.models.layout import TokenLayout

PATCH_HOOKS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_z")
ALL = "all"  # every position of the sequence
_CELL = re.compile(r"^([\w-]+)@blocks\.(\d+)\.(hook_\w+?)(?:\.h(\d+))?$")


@dataclass(frozen=True)
class PatchCell:
    """Patch `group`'s positions at `hook` of `layer` (and only `head` of `hook_z`)."""

    group: str
    layer: int
    hook: str
    head: int | None = None

    @classmethod
    def parse(cls, text: str) -> PatchCell:
        """`frame3@blocks.5.hook_resid_post`, `last@blocks.2.hook_z.h1` -> PatchCell."""
        match = _CELL.match(text.strip())
        if not match or match[3] not in PATCH_HOOKS:
            raise FlowlensError(
                f"patch cell {text!r}: use GROUP@blocks.L.HOOK with HOOK one of {', '.join(PATCH_HOOKS)} "
                "(hook_z: add .hH for one head)"
            )
        head = None if match[4] is None else int(match[4])
        if head is not None and match[3] != "hook_z":
            raise FlowlensError(f"patch cell {text!r}: only hook_z is per head")
        return cls(match[1], int(match[2]), match[3], head)

    def __str__(self) -> str:
        head = "" if self.head is None else f".h{self.head}"
        return f"{self.group}@blocks.{self.layer}.{self.hook}{head}"


def positions(layout: TokenLayout, group: str) -> np.ndarray:
    """The positions a group patches (`all`: every position)."""
    if group == ALL:
        return np.arange(layout.seq_len)
    if group not in layout:
        raise FlowlensError(
            f"patch group {group!r} is not in the layout; groups: all, {', '.join(layout.groups)}"
        )
    return np.asarray(layout[group])


# ---------------------------------------------------------------------------- hook sites
def site(lm: VideoLM, layer: int, hook: str) -> tuple[nn.Module, bool]:
    """(module, is a pre-hook) whose input (pre) or output (post) is `hook` of `layer`."""
    layers = lm.adapter.language_layers()
    if not 0 <= layer < len(layers):
        raise FlowlensError(
            f"patch layer {layer}: the model has {len(layers)} layers (0 to {len(layers) - 1})"
        )
    attention, mlp = lm.adapter.block_parts(layers[layer])
    if hook == "hook_resid_pre":
        return layers[layer], True
    if hook == "hook_resid_post":
        return layers[layer], False
    if hook == "hook_attn_out":
        return attention, False
    if hook == "hook_mlp_out":
        return mlp, False
    if hook == "hook_z":
        projection = getattr(attention, "o_proj", None)
        if not isinstance(projection, nn.Module):
            raise FlowlensError(f"{type(attention).__name__} has no o_proj: hook_z is not available here")
        return projection, True
    raise FlowlensError(f"patch hook {hook!r}: use one of {', '.join(PATCH_HOOKS)}")


def head_dim(lm: VideoLM) -> int:
    """Width of one head in `hook_z` (the attention's `head_dim`)."""
    attention, _ = lm.adapter.block_parts(lm.adapter.language_layers()[0])
    cfg = lm.adapter.text_config
    return int(getattr(attention, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


@contextlib.contextmanager
def _hooked(module: nn.Module, pre: bool, edit) -> Iterator[None]:
    """Run `edit(tensor) -> tensor | None` on the module's input (pre) or output (post) activation."""
    if pre:

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            value = args[0] if args else kwargs["hidden_states"]
            new = edit(value)
            if new is None:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    else:

        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            value = output[0] if isinstance(output, tuple) else output
            new = edit(value)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def recording(lm: VideoLM, sites: set[tuple[int, str]]) -> Iterator[dict[tuple[int, str], torch.Tensor]]:
    """Inside the block, a batch-1 forward fills {(layer, hook): (T, width) activation} for every site."""
    values: dict[tuple[int, str], torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        for layer, hook in sorted(sites):
            module, pre = site(lm, layer, hook)

            def keep(value: torch.Tensor, key=(layer, hook)) -> None:
                values[key] = value[0].detach().clone()

            stack.enter_context(_hooked(module, pre, keep))
        yield values


@torch.no_grad()
def source_run(
    lm: VideoLM, inputs: Any, layout: TokenLayout, sites: set[tuple[int, str]]
) -> tuple[CleanRun, dict]:
    """One recorded forward on `inputs`: the `CleanRun` patched runs resume from, and the activations at `sites`."""
    with recording(lm, sites) as values:
        run = CleanRun(lm, inputs, layout)
    missing = sites - set(values)
    if missing:
        raise FlowlensError(f"no activation recorded at {sorted(missing)[:3]}: the hooks did not run")
    return run, values


# ---------------------------------------------------------------------------- batched patched runs
@torch.no_grad()
def run_patched(
    target: CleanRun,
    rows: list[list[PatchCell]],
    source: dict[tuple[int, str], torch.Tensor],
) -> torch.Tensor:
    """fp32 logits (len(rows), vocab) at `last`: row r is the target run with every cell of `rows[r]` patched
    from `source` (a row may hold several cells, or none).

    All rows run as one batch that resumes the target's recorded run at the first patched layer and position
    (everything before is identical to the target's), plus an unpatched canary row that must reproduce its logits.
    """
    lm, layout = target.lm, target.layout
    d_head = head_dim(lm) if any(c.hook == "hook_z" for row in rows for c in row) else 0
    edits: dict[tuple[int, str], list[tuple[int, torch.Tensor, slice]]] = defaultdict(list)
    device = target.logits.device
    first = layout.seq_len - 1
    for r, row in enumerate(rows, start=1):  # row 0: the canary
        for cell in row:
            if (cell.layer, cell.hook) not in source:
                raise FlowlensError(f"no source activation recorded for {cell}")
            where = positions(layout, cell.group)
            if where.size:
                first = min(first, int(where.min()))
            index = torch.as_tensor(where, device=device, dtype=torch.long)
            columns = (
                slice(None) if cell.head is None else slice(cell.head * d_head, (cell.head + 1) * d_head)
            )
            edits[(cell.layer, cell.hook)].append((r, index, columns))
    batch = len(rows) + 1
    start = min((layer for layer, _ in edits), default=target.n_layers - 1)
    # Positions before `first` compute exactly as in the target run (causal attention): the batch recomputes
    # positions >= first only, attending the target's cached keys and values before it.
    with contextlib.ExitStack() as stack:
        for (layer, hook), todo in edits.items():
            module, pre = site(lm, layer, hook)
            values = source[(layer, hook)]

            def edit(value: torch.Tensor, todo=todo, values=values) -> torch.Tensor:
                offset = values.shape[0] - value.shape[1]  # the batch starts at position `first`
                if value.shape[0] != batch or offset != first:
                    raise FlowlensError(
                        f"patching expected a ({batch}, {values.shape[0] - first}, ...) activation, got {tuple(value.shape)}"
                    )
                value = value.clone()
                for r, index, columns in todo:
                    value[r, index - offset, columns] = values[index, columns].to(value.dtype)
                return value

            stack.enter_context(_hooked(module, pre, edit))
        logits = target.run_from(start, [None] * batch, first)
    return logits[1:]


def sweep(
    target: CleanRun,
    cells: list[PatchCell],
    source: dict[tuple[int, str], torch.Tensor],
    batch_size: int = 32,
) -> torch.Tensor:
    """fp32 logits (len(cells), vocab): one cell per batch row, at most `batch_size` rows per forward.

    Each batch holds cells of one layer (it resumes the target run there, at the first patched position);
    rows come back in `cells` order.
    """
    by_layer: dict[int, list[int]] = defaultdict(list)
    for i, cell in enumerate(cells):
        by_layer[cell.layer].append(i)
    out: list[torch.Tensor | None] = [None] * len(cells)
    for layer in sorted(by_layer):
        order = by_layer[layer]
        for offset in range(0, len(order), batch_size):
            chunk = order[offset : offset + batch_size]
            logits = run_patched(target, [[cells[i]] for i in chunk], source)
            for i, row in zip(chunk, logits, strict=True):
                out[i] = row
    if not cells:
        return target.logits.new_zeros(0, target.logits.shape[-1])
    return torch.stack(out)  # type: ignore[arg-type]
