"""The tuned lens (Belrose et al. 2023) -- beyond the paper: a learnt affine translator per layer before the head.

For every layer l < L-1 a translator T_l(h) = h + A_l·h + b_l (A_l: d_model x d_model, b_l: d_model,
fp32, A_l = 0 and b_l = 0 at the start) is fitted on calibration rows of `blocks.{l}.hook_resid_post` so
that head(final_norm(T_l(h))) matches the model's own output distribution at the same position:

- `kl` (Belrose et al.): Adam on KL(p_final || p_tuned), mini-batches of `BATCH` rows, seeded.
- `lstsq`: ridge regression of the final layer's raw residual on [h, 1] (closed form; cheap).

The last layer needs no translator (its state with the final norm *is* the output). Translators are
stored with the run (`run_arrays/tuned_lens_weight` (L-1, D, D) = I + A, `tuned_lens_bias` (L-1, D)) and
compared with the plain lens on held-out samples: KL(p_final || p_lens) at `last`, per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from flowlens.engine.lens import LensHead, lens_states
from flowlens.errors import FlowlensError, UsageError
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run, open_run

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM

METHODS = ("kl", "lstsq")
BATCH = 256
RIDGE = 1e-3  # ridge penalty of `lstsq`, relative to the mean squared row norm of the inputs
WEIGHT, BIAS = "tuned_lens_weight", "tuned_lens_bias"
TUNED_TABLE, TUNED_ROWS = "tuned_lens", "tuned_kl"  # the run table, and the per-sample rows it averages
KL_COLUMNS = ("kl_none", "kl_final", "kl_tuned")


@dataclass
class TunedLens:
    """Translators of layers 0..L-2: `weight[l]` (D, D) and `bias[l]` (D,), applied as h·weightᵀ + bias."""

    weight: np.ndarray
    bias: np.ndarray
    n_rows: int = 0  # calibration rows it was fitted on

    def translate(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        if layer >= len(self.weight):
            return h  # the last layer: the final norm and head as they are
        w = torch.as_tensor(self.weight[layer], device=h.device, dtype=torch.float32)
        b = torch.as_tensor(self.bias[layer], device=h.device, dtype=torch.float32)
        return h @ w.T + b


def parse_fit_on(text: str | None) -> tuple[str, Any]:
    """`--fit-on`: ("first", N) for the first N samples of the run, or ("dataset", (name, split)) for
    `NAME` or `NAME@SPLIT` (e.g. `synthetic@val[:64]`)."""
    if text is None or not str(text).strip():
        raise FlowlensError(
            "--tuned needs --fit-on: N (the first N samples of the run) or a dataset, e.g. synthetic@val[:64]"
        )
    text = str(text).strip()
    if text.isdigit():
        if int(text) < 1:
            raise FlowlensError(f"--fit-on {text}: give at least one calibration sample")
        return "first", int(text)
    name, at, split = text.rpartition("@")
    return "dataset", (name, split) if at and "/" not in split else (text, None)


@torch.no_grad()
def forward_rows(
    lm: VideoLM, samples: list[Any], frames: int, n_tokens: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """((L, rows, D) fp32 `hook_resid_post` of every layer, (rows,) True where the row is `last`): each
    sample's `last` and up to `n_tokens` other positions (drawn with a generator seeded by `seed` and the
    sample's place in the list)."""
    rows: list[np.ndarray] = []
    at_last: list[np.ndarray] = []
    for i, sample in enumerate(samples):
        inputs, layout = lm.prepare(sample, frames=frames)
        others = np.setdiff1d(np.arange(layout.seq_len), layout["last"])
        chosen = np.random.default_rng([seed, i]).choice(
            others, size=min(n_tokens, others.size), replace=False
        )
        positions = np.sort(np.concatenate([chosen, layout["last"]]))
        rows.append(_layer_outputs(lm, inputs, torch.as_tensor(positions, device=lm.device)))
        at_last.append(np.isin(positions, layout["last"]))
    return np.concatenate(rows, axis=1), np.concatenate(at_last)


def _layer_outputs(lm: VideoLM, inputs: Any, positions: torch.Tensor) -> np.ndarray:
    """(L, len(positions), D) fp32 outputs of every decoder layer at `positions` in one forward."""
    layers = lm.adapter.language_layers()
    seen: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def record(module: Any, args: Any, output: Any) -> None:
            hidden = (output[0] if isinstance(output, tuple) else output)[0]
            seen[index] = hidden.index_select(0, positions).float().cpu()

        return record

    handles = [layer.register_forward_hook(hook(index)) for index, layer in enumerate(layers)]
    try:
        lm.model(**inputs, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([seen[j] for j in range(len(layers))]).numpy()


def fit_tuned_lens(
    head: LensHead,
    rows: np.ndarray,
    method: str = "kl",
    steps: int = 300,
    lr: float = 1e-3,
    seed: int = 0,
    at_last: np.ndarray | None = None,
) -> TunedLens:
    """Translators for layers 0..L-2 from (L, N, D) raw `hook_resid_post` rows (the last layer's give the target).

    `at_last` marks the rows taken at `last`: with `kl`, half of every mini-batch is drawn from them and half
    from the other rows (the lens is read at `last`; see docs/lens.md); without, rows are drawn uniformly.
    """
    if method not in METHODS:
        raise FlowlensError(f"unknown tuned-lens fit {method!r}; use one of {', '.join(METHODS)}")
    x = torch.as_tensor(rows, dtype=torch.float32, device=head.device)
    n_layers, n, d = x.shape
    final = x[-1]
    weights, biases = [], []
    if method == "lstsq":
        for layer in range(n_layers - 1):
            a = torch.cat([x[layer], torch.ones(n, 1, device=head.device)], dim=1).double()
            ridge = RIDGE * float((a[:, :d] ** 2).sum(1).mean()) * torch.eye(d + 1, device=head.device)
            ridge[d, d] = 0.0
            m = torch.linalg.solve(a.T @ a + ridge.double(), a.T @ final.double()).float()
            weights.append(m[:d].T.cpu().numpy())
            biases.append(m[d].cpu().numpy())
        return TunedLens(np.stack(weights), np.stack(biases), n)
    with torch.no_grad():
        target = head.logits(head.norm(final), "output").log_softmax(-1)
    generator = torch.Generator().manual_seed(seed)
    draw = _batches(n, at_last, generator)
    for layer in range(n_layers - 1):
        delta = torch.zeros(d, d, device=head.device, requires_grad=True)
        bias = torch.zeros(d, device=head.device, requires_grad=True)
        optimiser = torch.optim.Adam([delta, bias], lr=lr)
        for _ in range(steps):
            batch = draw().to(head.device)
            with torch.enable_grad():
                h = x[layer, batch]
                logp = _logits_grad(head, head.norm(h + h @ delta.T + bias)).log_softmax(-1)
                loss = (target[batch].exp() * (target[batch] - logp)).sum(-1).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        weights.append((torch.eye(d, device=head.device) + delta.detach()).cpu().numpy())
        biases.append(bias.detach().cpu().numpy())
    return TunedLens(np.stack(weights), np.stack(biases), n)


def _batches(n: int, at_last: np.ndarray | None, generator: torch.Generator):
    """A function drawing one mini-batch of row indices (with replacement): half at `last`, half elsewhere."""
    marked = np.zeros(n, bool) if at_last is None else np.asarray(at_last, bool)
    if marked.all() or not marked.any():
        return lambda: torch.randint(n, (min(BATCH, n),), generator=generator)
    last, other = torch.as_tensor(np.flatnonzero(marked)), torch.as_tensor(np.flatnonzero(~marked))
    half = BATCH // 2

    def draw() -> torch.Tensor:
        return torch.cat(
            [last[torch.randint(len(last), (half,), generator=generator)],
             other[torch.randint(len(other), (BATCH - half,), generator=generator)]]
        )  # fmt: skip

    return draw


def _logits_grad(head: LensHead, x: torch.Tensor) -> torch.Tensor:
    """Head logits with gradients flowing to `x` (the head itself stays fixed)."""
    weight, bias = head.matrix("output")
    return torch.nn.functional.linear(x, weight, bias)


@torch.no_grad()
def kl_columns(
    head: LensHead,
    activations: dict[str, dict[str, np.ndarray]],
    n_layers: int,
    states: str,
    tuned: TunedLens,
) -> dict[str, np.ndarray]:
    """KL(p_final || p_lens) at `last` per layer for the plain lens (norm none, norm final) and the tuned lens."""
    chosen = lens_states(n_layers, states, "answer")
    raw = torch.stack(
        [torch.as_tensor(np.asarray(activations[s.hook]["last"], np.float32)[0]) for s in chosen]
    ).to(head.device)
    target = head.logits(head.norm(raw[-1]), "output").log_softmax(-1)

    def kl(x: torch.Tensor) -> np.ndarray:
        logp = head.logits(x, "output").log_softmax(-1)
        return (target.exp() * (target - logp)).sum(-1).clamp_min(0).cpu().numpy()

    none = torch.stack([head.norm(r) if s.final_normed else r for s, r in zip(chosen, raw, strict=True)])
    translated = torch.stack([tuned.translate(layer, raw[layer]) for layer in range(len(chosen))])
    return {
        "layer": np.arange(len(chosen), dtype=np.int16),
        "kl_none": kl(none).astype(np.float64),
        "kl_final": kl(head.norm(raw)).astype(np.float64),
        "kl_tuned": kl(head.norm(translated)).astype(np.float64),
    }


# ---------------------------------------------------------------------------- in a lens run
def prepare_tuned(
    lm: VideoLM,
    head: LensHead,
    options: Any,
    previous: Path | None,
    ids: list[str],
    samples: Any = None,
    last_rows: dict[str, dict[str, np.ndarray]] | None = None,
) -> tuple[TunedLens | None, set[str]]:
    """(translators, held-out sample ids) of a lens run with `options.tuned`: those stored in `previous` (a
    resumed run), else fitted on `--fit-on`: the first N of `samples` (a forward each) or of the stored
    `last_rows` (a run folder), or a dataset (a forward each)."""
    if not options.tuned:
        return None, set(ids)
    kind, value = parse_fit_on(options.fit_on)
    held_out = set(ids[value:]) if kind == "first" else set(ids)
    if kind == "first" and not held_out:
        raise UsageError(f"--fit-on {value}: the run has {len(ids)} samples, none would be held out")
    if previous is not None:
        with open_run(previous) as run:
            if WEIGHT in run.run_arrays:
                table = run.table(TUNED_TABLE) if TUNED_TABLE in run.run_tables else None
                n_rows = int(table["fit_rows"].iloc[0]) if table is not None and len(table) else 0
                return TunedLens(run.run_array(WEIGHT), run.run_array(BIAS), n_rows), held_out
    if kind == "first" and last_rows is not None:
        hooks = [f"blocks.{i}.hook_resid_post" for i in range(lm.n_layers)]
        rows = np.stack([np.concatenate([last_rows[h][s] for s in ids[:value]]) for h in hooks])
        at_last = np.ones(rows.shape[1], bool)
    else:
        if kind == "first":
            calibration = list(samples)[:value]
        else:
            import flowlens.data

            name, split = value
            calibration = list(flowlens.data.load(name, split=split))
        rows, at_last = forward_rows(lm, calibration, options.frames, options.fit_tokens, options.tuned_seed)
    fitted = fit_tuned_lens(
        head, rows, options.tuned_fit, options.tuned_steps, options.tuned_lr, options.tuned_seed, at_last
    )
    return fitted, held_out


def store_tuned(run: Run, tuned: TunedLens) -> Run:
    """Write the translators and the held-out summary (`tuned_lens`) into a finished run; return it reopened."""
    if TUNED_ROWS not in run.row_tables:
        return run
    path, config, info = run.path, run.config, run.model_info
    summary = tuned_summary(run.table(TUNED_ROWS)).assign(fit_rows=tuned.n_rows)
    run.close()
    with RunWriter(path, config, info, resume=True) as writer:
        writer.write_run_array(WEIGHT, tuned.weight.astype(np.float32))
        writer.write_run_array(BIAS, tuned.bias.astype(np.float32))
        writer.write_run_table(TUNED_TABLE, {c: summary[c].to_numpy() for c in summary.columns})
    return open_run(path)


def tuned_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean KL(p_final || p_lens) per layer over the held-out samples: plain (both norms) and tuned."""
    held = rows[rows["held_out"].astype(bool)]
    out = held.groupby("layer", sort=True).agg(
        n=("sample", "nunique"),
        kl_plain_none=("kl_none", "mean"),
        kl_plain_final=("kl_final", "mean"),
        kl_tuned=("kl_tuned", "mean"),
    )
    return out.reset_index().astype({"layer": np.int64, "n": np.int64})
