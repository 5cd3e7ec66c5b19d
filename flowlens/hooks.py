"""Activation names and selections: TransformerLens hook names x token groups (no torch; store and engine share it).

A spec is `HOOKS@GROUPS`: hook names `blocks.{l}.hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|
hook_mlp_out` with shell globs (`blocks.*.hook_resid_post`, `blocks.1?.hook_attn_out`; several joined by `+`),
and comma-separated layout groups (`last`, `question`, `video`, `frame3`, ...) or `frame_mean` (each frame
group's feature tokens averaged): `blocks.*.hook_resid_post@last,video`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import numpy as np

from flowlens.errors import FlowlensError
from flowlens.models.layout import TokenLayout

HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
FRAME_MEAN = "frame_mean"
DTYPES = {"float16": np.float16, "float32": np.float32}
_NAME = re.compile(r"^blocks\.(\d+)\.(hook_\w+)$")


def hook_name(layer: int, hook: str) -> str:
    return f"blocks.{layer}.{hook}"


def parse_hook(name: str) -> tuple[int, str]:
    """`blocks.3.hook_resid_post` -> (3, "hook_resid_post")."""
    match = _NAME.match(name)
    if not match or match[2] not in HOOKS:
        raise FlowlensError(f"{name!r} is not a hook name; use blocks.<layer>.<{'|'.join(HOOKS)}>")
    return int(match[1]), match[2]


@dataclass(frozen=True)
class ActivationSpec:
    """Which hooks at which token groups: resolved against a model's depth with `hooks(n_layers)`."""

    patterns: tuple[str, ...]
    groups: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> ActivationSpec:
        """`blocks.*.hook_resid_post@last,video` (several hook patterns may be joined by `+`)."""
        if text.count("@") != 1:
            raise FlowlensError(
                f"an activation spec is HOOKS@GROUPS, e.g. blocks.*.hook_resid_post@last,video; got {text!r}"
            )
        hooks, groups = text.split("@")
        patterns = tuple(p.strip() for p in hooks.split("+") if p.strip())
        names = tuple(g.strip() for g in groups.split(",") if g.strip())
        if not patterns or not names:
            raise FlowlensError(f"activation spec {text!r} names no hook or no group")
        for pattern in patterns:
            parts = pattern.split(".")
            if (
                len(parts) != 3
                or parts[0] != "blocks"
                or not any(fnmatch.fnmatchcase(h, parts[2]) for h in HOOKS)
            ):
                raise FlowlensError(
                    f"{pattern!r} matches no hook; hooks are blocks.<layer>.<{'|'.join(HOOKS)}>, globs allowed"
                )
        return cls(patterns, names)

    def hooks(self, n_layers: int) -> list[str]:
        """The hook names this spec selects on a model of `n_layers` layers, in layer then hook order."""
        selected = [
            hook_name(layer, hook)
            for layer in range(n_layers)
            for hook in HOOKS
            if any(fnmatch.fnmatchcase(hook_name(layer, hook), p) for p in self.patterns)
        ]
        if not selected:
            raise FlowlensError(
                f"{'+'.join(self.patterns)} selects no hook of a model with {n_layers} layers (0 to {n_layers - 1})"
            )
        return selected

    def __str__(self) -> str:
        return f"{'+'.join(self.patterns)}@{','.join(self.groups)}"


def resolve(specs: list[str] | tuple[str, ...], layout: TokenLayout) -> dict[str, list[str]]:
    """hook name -> the groups to keep there, from every spec (groups checked against the layout)."""
    out: dict[str, list[str]] = {}
    for text in specs:
        spec = ActivationSpec.parse(text)
        for group in spec.groups:
            if group != FRAME_MEAN and group not in layout:
                raise FlowlensError(
                    f"activation group {group!r} is not in the layout; groups: {', '.join(layout.groups)}"
                )
        for name in spec.hooks(layout.n_layers):
            kept = out.setdefault(name, [])
            kept += [g for g in spec.groups if g not in kept]
    return out


def group_rows(layout: TokenLayout, group: str) -> int:
    """Rows a group contributes: its positions, or one per frame group for `frame_mean`."""
    return layout.n_frames if group == FRAME_MEAN else int(layout[group].size)


def estimate_bytes(specs: list[str] | tuple[str, ...], layout: TokenLayout, dtype: str = "float16") -> int:
    """Bytes one sample's activations take before compression."""
    size = np.dtype(DTYPES[dtype]).itemsize * layout.d_model
    return sum(size * group_rows(layout, g) for groups in resolve(specs, layout).values() for g in groups)
