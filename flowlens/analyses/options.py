"""Options of an analysis as one dataclass: the CLI flags, the run file's settings and resume checks derive from it.

Declare each field with `option(default, "help")`. A field that cannot change a number (a batch size,
a progress flag) says `affects_results=False`: it is left out of the settings a resumed run must match.
Everything else is compared on resume -- there is no hand-kept list of keys. A field added after runs
were written says `added_later=True`: left at its default it stays out of those settings, so runs written
before it existed (which computed exactly what its default computes) still resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from flowlens.errors import FlowlensError

NO_CLI = "no_cli"


def option(
    default: Any,
    help: str,
    *,
    affects_results: bool = True,
    choices: tuple[Any, ...] | None = None,
    cli: bool = True,
    metavar: str | None = None,
    added_later: bool = False,
) -> Any:
    """A dataclass field with what the CLI and the resume check need to know about it."""
    metadata = {"help": help, "affects_results": affects_results, "choices": choices, "cli": cli}
    metadata["metavar"] = metavar
    metadata["added_later"] = added_later
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def results_settings(options: Any) -> dict[str, Any]:
    """The fields of `options` that change a number (what a resumed run must match), as plain data.

    A field marked `added_later` is left out while it has its default value (see the module docstring).
    """
    return {
        f.name: _plain(getattr(options, f.name))
        for f in dataclasses.fields(options)
        if f.metadata.get("affects_results", True)
        and not (f.metadata.get("added_later") and getattr(options, f.name) == _default(f))
    }


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def all_settings(options: Any) -> dict[str, Any]:
    """Every field of `options`, as plain data (what the run file records)."""
    return {f.name: _plain(getattr(options, f.name)) for f in dataclasses.fields(options)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, options_class: type) -> None:
    """One CLI flag per field of `options_class` (type, default and help from the field)."""
    hints = typing.get_type_hints(options_class)
    for f in dataclasses.fields(options_class):
        if not f.metadata.get("cli", True):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind, many = _base_type(hints[f.name])
        help_text = f"{f.metadata.get('help', '')} (default: {_shown(default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if many:
            kwargs["nargs"] = "*"
        if f.metadata.get("choices"):
            kwargs["choices"] = list(f.metadata["choices"])
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(flag(f.name), type=kind, **kwargs)


def from_args(options_class: type, args: argparse.Namespace) -> Any:
    """The options the parsed flags give (defaults for flags not given); invalid values raise FlowlensError."""
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(options_class) if hasattr(args, f.name)
    }
    return options_class(**given)


def _base_type(hint: Any) -> tuple[type, bool]:
    """(element type, is a list) of a field annotation such as `int`, `list[int]`, `list[int] | None`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(hint)[0], True
    return hint, False


def _shown(default: Any) -> str:
    if default is None:
        return "none"
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default)) or "none"
    return str(default)


def positive(name: str, value: int | float | None) -> None:
    """Refuse a count or size that must be > 0 (`--frames 0`, `--window -1`) with one line."""
    if value is not None and not value > 0:
        raise FlowlensError(f"{flag(name)} must be positive, got {value}")


def check_layers(name: str, layers: list[int] | None, n_layers: int) -> None:
    """Refuse layer indices outside a model of `n_layers` layers, with the numbers."""
    bad = [x for x in layers or [] if not 0 <= int(x) < n_layers]
    if bad:
        raise FlowlensError(
            f"{flag(name)} {', '.join(map(str, bad))}: the model has {n_layers} layers (0 to {n_layers - 1})"
        )
