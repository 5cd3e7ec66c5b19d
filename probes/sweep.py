"""`probe_run`: one probe per (target, layer) over a run's stored activations, as the `probes` table."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from flowlens.errors import UsageError
from flowlens.hooks import FRAME_MEAN, ActivationSpec, parse_hook
from probes.control import control_labels
from probes.data import probe_data
from probes.labels import BUILTIN, SAMPLE, Target, metadata_keys, resolve_target
from probes.options import ProbeOptions

if TYPE_CHECKING:
    from flowlens.store.run import Run

COLUMNS = [
    "target",
    "level",
    "layer",
    "hook",
    "group",
    "pool",
    "n_samples",
    "n_classes",
    "n_train",
    "n_test",
    "folds",
    "c",
    "chance",
    "majority",
    "accuracy",
    "control_accuracy",
    "selectivity",
    "converged",
]
_ALWAYS_KEPT = {"last", FRAME_MEAN}  # hook_resid_post rows every trace keeps (resid_last, resid_frame_mean)


def plan(
    options: ProbeOptions, n_layers: int, targets: Sequence[str | Target] | None = None
) -> list[tuple[Target, str, list[str]]]:
    """(target, token group, hook names) of every probe the options ask for."""
    hooks = ActivationSpec.parse(f"{options.hook}@last").hooks(n_layers)
    chosen = [resolve_target(t) for t in (targets if targets is not None else options.target)]
    return [(t, options.group or t.group, hooks) for t in chosen]


def needed_activations(
    options: ProbeOptions, n_layers: int, targets: Sequence[str | Target] | None = None
) -> list[str]:
    """`--activations` specs a trace must store for these probes (none for resid_post at last/frame_mean)."""
    specs: list[str] = []
    for _, group, hooks in plan(options, n_layers, targets):
        kinds = {parse_hook(h)[1] for h in hooks}
        if group in _ALWAYS_KEPT and kinds == {"hook_resid_post"}:
            continue
        spec = f"{options.hook}@{group}"
        if spec not in specs:
            specs.append(spec)
    return specs


def check_run(run: Run, options: ProbeOptions, targets: Sequence[str | Target] | None = None) -> None:
    """Refuse, before any fitting, a run without traced samples or without the activations a target needs."""
    if not run.traced:
        raise UsageError(f"{run.path} holds no traced sample to probe")
    n_layers = run.layout(run.traced[0]).n_layers
    held = set(run.activation_names())
    for target, group, hooks in plan(options, n_layers, targets):
        missing = [h for h in hooks if (h, group) not in held]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise UsageError(
                f"--target {target.name} reads {shown} at {group!r}, which {run.path} does not hold; "
                f"trace with --activations '{options.hook}@{group}' (or run `flowlens probe MODEL "
                f"--dataset ...`, which traces what it needs)"
            )


def probe_run(
    run: Run,
    options: ProbeOptions | None = None,
    targets: Sequence[str | Target] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Probe every target at every selected layer of `run`; one row per (target, hook) in `COLUMNS`.

    `targets` (names or `Target`s, e.g. `Target.of_samples(...)`) replaces `options.target`. Each row:
    held-out accuracy over `options.folds` folds split by sample, the same for the control task on the
    same folds, and selectivity = accuracy - control_accuracy.
    """
    from probes.estimator import LinearProbe, cross_validate, outer_folds

    options = options or ProbeOptions()
    check_run(run, options, targets)
    n_layers = run.layout(run.traced[0]).n_layers
    probes = plan(options, n_layers, targets)
    labels = {t.name: _sample_labels(run, t) for t, _, _ in probes if t.level == SAMPLE}
    probe = LinearProbe(options.c_grid, options.inner_folds, options.max_iter, options.probe_seed)
    jobs = list(dict.fromkeys((hook, group) for _, group, hooks in probes for hook in hooks))
    jobs.sort(key=lambda job: (parse_hook(job[0])[0], job[0], job[1]))
    rows = []
    bar = tqdm(total=sum(len(h) for _, _, h in probes), desc="probe", disable=not progress)
    with _threads(options.threads), bar:
        for hook, group in jobs:
            activations = run.activations(hook, group)
            for target, target_group, hooks in probes:
                if target_group != group or hook not in hooks:
                    continue
                data = probe_data(
                    run,
                    target,
                    activations,
                    options.pool,
                    options.max_tokens,
                    options.probe_seed,
                    labels.get(target.name),
                )
                folds = outer_folds(data.y, data.groups, options.folds, options.probe_seed)
                real = cross_validate(probe, data.X, data.y, data.groups, folds)
                control = control_labels(data.y, data.types, options.probe_seed)
                fake = cross_validate(probe, data.X, control, data.groups, folds)
                accuracy, control_accuracy = real.accuracy(data.y), fake.accuracy(control)
                rows.append(
                    {
                        "target": target.name,
                        "level": target.level,
                        "layer": parse_hook(hook)[0],
                        "hook": hook,
                        "group": group,
                        "pool": data.pool,
                        "n_samples": len(data.samples),
                        "n_classes": len(np.unique(data.y)),
                        "n_train": int(round(np.mean([len(train) for train, _ in folds]))),
                        "n_test": int(sum(len(test) for _, test in folds)),
                        "folds": len(folds),
                        "c": Counter(real.c).most_common(1)[0][0],
                        "chance": 1.0 / len(np.unique(data.y)),
                        "majority": real.majority,
                        "accuracy": accuracy,
                        "control_accuracy": control_accuracy,
                        "selectivity": accuracy - control_accuracy,
                        "converged": bool(real.converged and fake.converged),
                    }
                )
                bar.update()
    table = pd.DataFrame(rows, columns=COLUMNS)
    rank = {t.name: i for i, (t, _, _) in enumerate(probes)}
    table = table.assign(_rank=table["target"].map(rank)).sort_values(
        ["_rank", "layer", "hook"], kind="stable"
    )
    return table.drop(columns="_rank").reset_index(drop=True)


def _sample_labels(run: Run, target: Target) -> dict[str, str]:
    """The target's label of every traced sample that has one; an error listing what exists when none has."""
    found = target.sample_labels(run, run.traced)
    if not found:
        keys = ", ".join(metadata_keys(run, run.traced)) or "none"
        raise UsageError(
            f"no traced sample of {run.path} carries a {target.name!r} label (built-in targets: "
            f"{', '.join(BUILTIN)}; metadata keys here: {keys})"
        )
    return found


@contextlib.contextmanager
def _threads(limit: int | None) -> Iterator[None]:
    if limit is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit):
        yield
