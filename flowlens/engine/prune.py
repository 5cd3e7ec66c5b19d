"""Re-running a sample with video tokens pruned from layer K on, in two modes, both started from a `CleanRun`.

**Mask mode.** Pruning token j from layer K on = blocking every attention edge into j in layers >= K: no
query q != j may attend key j. j's own row keeps its causal keys minus the other pruned tokens (and
always itself); what it computes is never read again, because every edge out of it is blocked, so the
choice cannot change any other position. Two implementations of that one function: `run_mask_full`
runs the pruned set as a `CompiledKnockout` (an explicit allowed matrix over layers K..L-1) through the
knockout engine, every row recomputed from the first one the mask changes; `run_mask_compact` (the
default) does not compute the rows nobody reads: the clean keys and values before the first pruned
token, then the kept positions only, each at its original position id. Every position keeps its id.

**Drop mode.** The pruned tokens leave the sequence: the language model is re-entered at layer K with
only the kept positions' residual stream (the clean run's input to layer K), so the hidden states and
keys/values of layers >= K are shorter. Position ids: `original` (each kept token keeps its id, as
FastV's inplace mode and DTD) or `reindex` (the kept tokens are numbered 0..n-1, 1-D rotary models only).
Keep-sets with the same K and length run as one batch. K = L re-enters after the last layer (only the
final norm and head run).

The two modes compute the same function where drop mode keeps the original position ids (see
docs/pruning.md for where they differ).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flowlens import compat
from flowlens.engine.backend import language_attention
from flowlens.engine.head import head_logits_fp32
from flowlens.engine.masks import CompiledKnockout
from flowlens.engine.resume import canary_tolerance
from flowlens.errors import FlowlensError

if TYPE_CHECKING:
    from flowlens.engine.resume import CleanRun
    from flowlens.models.base import VideoLM

# A keep-set re-run: (layer K, sorted positions pruned from K on); drop mode adds the position-id policy.
MaskItem = tuple[int, tuple[int, ...]]
DropItem = tuple[int, tuple[int, ...], str]


@functools.lru_cache(maxsize=8)
def _causal(seq_len: int, device: str) -> torch.Tensor:
    """(T, T) bool lower triangle, built once per length and device (bool `tril_` is slow on CPU)."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril_()


def pruned_allowed(seq_len: int, pruned: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, T) allowed pattern: causal, no query may attend a pruned key except the pruned token itself."""
    allowed = _causal(seq_len, str(device)).clone()
    index = torch.as_tensor(list(pruned), dtype=torch.long, device=device)
    if index.numel():
        allowed[:, index] = False
        allowed[index, index] = True
    return allowed


def prune_knockout(
    seq_len: int, pruned: Sequence[int], layer: int, n_layers: int, device: torch.device | str = "cpu"
) -> CompiledKnockout | None:
    """The knockout that prunes `pruned` from `layer` on; None when it changes nothing (the clean run)."""
    if not len(pruned) or layer >= n_layers:
        return None
    allowed = pruned_allowed(seq_len, pruned, device)
    return CompiledKnockout(allowed, frozenset(range(layer, n_layers)), None, f"prune@{layer}")


def run_mask(
    clean: CleanRun, items: Sequence[MaskItem], batch_size: int = 32, compact: bool | None = None
) -> list[torch.Tensor]:
    """Logits at `last` (vocab,) of each keep-set (K, pruned positions in any order) in mask mode; identical
    keep-sets run once.

    A keep-set that prunes nothing (or prunes after the last layer) is the clean run and is not re-run.
    `compact` (default: wherever the model allows it, see `compact_supported`) computes only the rows whose
    output is read (`run_mask_compact`); otherwise every row runs under the explicit allowed matrix
    (`run_mask_full`). Both compute the same function; they differ by float rounding (~1e-6 in logits).
    """
    keys = [(int(k), tuple(sorted({int(p) for p in pruned}))) for k, pruned in items]
    distinct = list(dict.fromkeys(keys))
    results: dict[MaskItem, torch.Tensor] = {}
    changed = []
    for item in distinct:
        if not item[1] or item[0] >= clean.n_layers:
            results[item] = clean.logits.clone()
        else:
            changed.append(item)
    if compact is None:
        compact = compact_supported(clean)
    runner = run_mask_compact if compact else run_mask_full
    results.update(zip(changed, runner(clean, changed, batch_size), strict=True))
    return [results[key] for key in keys]


def run_mask_full(clean: CleanRun, items: Sequence[MaskItem], batch_size: int = 32) -> list[torch.Tensor]:
    """Mask mode through the knockout engine: every row recomputed under the keep-set's allowed matrix.

    Keep-sets are sorted by (K, first changed row) and batched; a batch starts at its smallest K and first
    changed row (a row whose K is later runs clean layers until then), with one clean canary row.
    """
    t, device = clean.layout.seq_len, clean.logits.device
    compiled = {item: prune_knockout(t, item[1], item[0], clean.n_layers, device) for item in items}
    # the first row a pruned set changes is the one after its first pruned token (earlier rows see no pruned key)
    first = {item: min(item[1]) + 1 for item in items}
    order = sorted(items, key=lambda i: (i[0], first[i]))
    results: dict[MaskItem, torch.Tensor] = {}
    for offset in range(0, len(order), batch_size):
        chunk = order[offset : offset + batch_size]
        start = min(item[0] for item in chunk)
        position = min(first[item] for item in chunk)
        logits = clean.run_from(start, [compiled[item] for item in chunk], position)
        results.update(zip(chunk, logits, strict=True))
    return [results[item] for item in items]


def compact_supported(clean: CleanRun) -> bool:
    """Whether the compact mask mode is exact for this model: not with sliding-window layers (a window
    counts cache slots, and the compact run leaves the pruned tokens' slots out)."""
    return not compat.uses_sliding_window(clean.lm.adapter.text_config)


# a compact batch may pad shorter keep-sets up to its longest one while the padded rows stay within this
# multiple of the real rows (fewer, larger forwards; small models are bound by per-forward overhead)
PAD_BUDGET = 1.5


def run_mask_compact(clean: CleanRun, items: Sequence[MaskItem], batch_size: int = 32) -> list[torch.Tensor]:
    """Mask mode computing only the rows another row reads: the kept positions after the first pruned one.

    From layer K on a pruned token's keys and values are read by no other query and its own row reaches
    no later layer's input elsewhere, so its rows need not be computed at all: a keep-set's run is the
    clean keys and values of the positions before its first pruned token (a KV-cache prefix, layers >= K)
    followed by its kept positions only, each with its original position id. Keep-sets with the same K
    run as one batch from the batch's smallest first pruned position; shorter ones are padded at the end
    with copies of `last` (causal: no real row sees them) while padding stays under `PAD_BUDGET`.
    The first compact batch of a model is checked once against `run_mask_full`.
    """
    t = clean.layout.seq_len
    kept = {item: kept_positions(t, item[1]) for item in items}
    by_layer: dict[int, list[MaskItem]] = defaultdict(list)
    for item in items:
        by_layer[item[0]].append(item)
    results: dict[MaskItem, torch.Tensor] = {}
    for layer, members in sorted(by_layer.items()):
        for chunk in _compact_batches(members, kept, batch_size):
            position = min(item[1][0] for item in chunk)
            suffixes = [kept[item][kept[item] >= position] for item in chunk]
            lengths = [len(rows) for rows in suffixes]
            width = max(lengths)
            padded = np.stack(
                [np.pad(rows, (0, width - len(rows)), constant_values=t - 1) for rows in suffixes]
            )
            logits = forward_rows(
                clean, layer, torch.as_tensor(padded), torch.as_tensor(lengths) - 1, position
            )
            results.update(zip(chunk, logits, strict=True))
    if items:
        _check_compact_once(clean, items[0], results[items[0]])
    return [results[item] for item in items]


def _compact_batches(
    members: list[MaskItem], kept: dict[MaskItem, np.ndarray], batch_size: int
) -> Iterator[list[MaskItem]]:
    """Keep-sets of one K in batches, longest first; a batch closes when it is full or padding would exceed
    `PAD_BUDGET` (lengths counted from the K's first pruned position, an upper bound of the batch's own)."""
    start = min(item[1][0] for item in members)
    length = {item: int((kept[item] >= start).sum()) for item in members}
    batch: list[MaskItem] = []
    for item in sorted(members, key=lambda i: (-length[i], i[1][0])):
        real = sum(length[i] for i in batch) + length[item]
        if batch and (len(batch) == batch_size or length[batch[0]] * (len(batch) + 1) > PAD_BUDGET * real):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


@torch.no_grad()
def forward_rows(
    clean: CleanRun,
    layer: int,
    rows: torch.Tensor,
    last: torch.Tensor,
    position: int = 0,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits (B, vocab) at row `last[b]` of each batch element: layers >= `layer` run on positions `rows`
    (B, n; non-decreasing, all >= `position`) after the clean keys and values of positions < `position`.

    `position_ids`: the ids the rows run with (default: their recorded ids, as mask mode and drop mode's
    `original` need). Compact mask mode passes a prefix; drop mode re-enters with none.
    """
    t, device = clean.layout.seq_len, clean.logits.device
    rows = rows.to(device)
    batch, n = rows.shape
    if position_ids is None:
        position_ids = compat.position_ids_at(compat.recorded_position_ids(clean.call, t, device), rows)
    kwargs = compat.shortened_call(clean.call, rows, position_ids, layer)
    kwargs["inputs_embeds"] = clean.residual_input(layer)[0][rows]
    cache = None
    if position > 0:
        recorded = clean.call.get("attention_mask")
        prefix = (
            recorded[:, :position]
            if isinstance(recorded, torch.Tensor) and recorded.dim() == 2
            else torch.ones(1, position, dtype=kwargs["attention_mask"].dtype, device=device)
        )
        kwargs["attention_mask"] = torch.cat([prefix.expand(batch, -1), kwargs["attention_mask"]], dim=1)
        cache = compat.prefix_cache(clean.keys, clean.values, position, batch, first_layer=layer)
        kwargs[clean.cache_keyword] = cache
    kwargs["use_cache"] = cache is not None
    with language_attention(clean.lm.model), compat.decoder_layers_from(clean.language_model, layer):
        hidden = clean.language_model(**kwargs).last_hidden_state
    if cache is not None and compat.cache_length(cache, layer) != position + n:
        raise compat.CompatError(
            "KV-cache hand-off (compact mask mode)",
            f"after a forward of {n} rows on a {position}-position prefix the cache holds "
            f"{compat.cache_length(cache, layer)} positions: the language model ignored the cache",
        )
    final = hidden[torch.arange(batch, device=device), last.to(device)]
    return head_logits_fp32(clean.lm.adapter.output_head(), final)


_COMPACT_CHECKED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def _check_compact_once(clean: CleanRun, item: MaskItem, logits: torch.Tensor) -> None:
    """Runtime canary, once per loaded model: a compact keep-set must equal the full-row mask run.

    The compact run leans on transformers numbering cache slots by `cache_position` (not by the position
    ids, which skip the pruned tokens); a release that changed that would silently let rows attend
    later ones. The check costs one full-row run of one keep-set.
    """
    model = clean.lm.model
    if model in _COMPACT_CHECKED:
        return
    (reference,) = run_mask_full(clean, [item], batch_size=1)
    error = float((logits - reference).abs().max())
    tolerance = canary_tolerance(clean.lm.dtype, reference)
    if not error <= tolerance:
        raise compat.CompatError(
            "compact mask mode (canary)",
            f"a keep-set run on its kept rows differs from the same keep-set run under the full mask by "
            f"{error:.3g} in logits (tolerance {tolerance:.3g}): pruning numbers would be wrong; "
            "pass compact=False",
        )
    _COMPACT_CHECKED.add(model)


def kept_positions(seq_len: int, pruned: Sequence[int]) -> np.ndarray:
    """Sorted positions that remain when `pruned` leave a sequence of `seq_len`."""
    keep = np.ones(seq_len, dtype=bool)
    keep[np.asarray(list(pruned), dtype=np.int64)] = False
    return np.flatnonzero(keep)


def drop_position_ids(
    clean_call: dict[str, Any], keep: torch.Tensor, seq_len: int, policy: str
) -> torch.Tensor:
    """Position ids of the kept rows `keep` (B, n): their recorded ids (`original`) or 0..n-1 (`reindex`)."""
    ids = compat.recorded_position_ids(clean_call, seq_len, keep.device)
    if policy == "original":
        return compat.position_ids_at(ids, keep)
    if policy != "reindex":
        raise FlowlensError(f"position_ids must be original or reindex, got {policy!r}")
    if compat.is_mrope(ids):
        raise FlowlensError(
            "position_ids: reindex renumbers 1-D rotary positions; this model's positions are multi-axis "
            "(M-RoPE): use original"
        )
    return torch.arange(keep.shape[1], device=keep.device).expand_as(keep)


@torch.no_grad()
def drop_forward(clean: CleanRun, layer: int, keep: torch.Tensor, policy: str) -> torch.Tensor:
    """Logits at `last` (B, vocab) re-entering the decoder at `layer` with only the positions `keep` (B, n)."""
    t = clean.layout.seq_len
    keep = keep.to(clean.logits.device)
    if not bool((keep[:, -1] == t - 1).all()):
        raise FlowlensError("drop mode must keep the last position (it predicts the answer)")
    last = torch.full((keep.shape[0],), keep.shape[1] - 1)
    return forward_rows(clean, layer, keep, last, 0, drop_position_ids(clean.call, keep, t, policy))


def run_drop(clean: CleanRun, items: Sequence[DropItem], batch_size: int = 32) -> list[torch.Tensor]:
    """Logits at `last` of each keep-set in drop mode, batched by (K, kept length, position-id policy)."""
    t = clean.layout.seq_len
    distinct = list(
        dict.fromkeys((int(k), tuple(int(p) for p in pruned), str(pol)) for k, pruned, pol in items)
    )
    groups: dict[tuple[int, int, str], list[DropItem]] = defaultdict(list)
    for item in distinct:
        groups[(item[0], t - len(item[1]), item[2])].append(item)
    results: dict[DropItem, torch.Tensor] = {}
    for (layer, _, policy), members in sorted(groups.items()):
        for offset in range(0, len(members), batch_size):
            chunk = members[offset : offset + batch_size]
            keep = torch.as_tensor(np.stack([kept_positions(t, item[1]) for item in chunk]), dtype=torch.long)
            for item, row in zip(chunk, drop_forward(clean, layer, keep, policy), strict=True):
                results[item] = row
    return [results[(int(k), tuple(int(p) for p in pruned), str(pol))] for k, pruned, pol in items]


# ------------------------------------------------------------------ measured prefill (wall time, peak memory)
class _Stop(Exception):
    """Raised by a hook to end a forward once the residual stream entering layer K is recorded."""


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak memory above the start of the block: CUDA allocator peak, or sampled resident set size on CPU."""
    out: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
        out["peak_bytes"] = float(torch.cuda.max_memory_allocated(device) - base)
        return
    import resource

    page = resource.getpagesize()

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    _release_free_heap()  # else memory a previous call freed but kept hides (or inflates) this call's peak
    base, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            done.wait(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        done.set()
        thread.join()
        out["peak_bytes"] = float(max(0, max(peak[0], rss()) - base))


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc `malloc_trim`), so resident-set growth measures a call's own
    peak; a no-op where libc has no `malloc_trim`."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)


def _timed(function: Callable[[], Any], device: torch.device, repeats: int) -> dict[str, float]:
    """Median wall time over `repeats` (after one warm-up) and the peak memory of one more call."""
    function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    with _peak_memory(device) as memory:
        function()
    return {"seconds": float(np.median(times)), "peak_bytes": memory["peak_bytes"]}


@torch.no_grad()
def pruned_prefill(lm: VideoLM, inputs: Any, layer: int, pruned: Sequence[int], policy: str) -> torch.Tensor:
    """One real pruned prefill from the model inputs: vision tower and layers < K on every token, then the
    layers >= K on the kept tokens only; logits at `last` (1, vocab) from the model's own head and dtype."""
    language = lm.adapter.language_model()
    layers = lm.adapter.language_layers()
    grab: dict[str, Any] = {}

    def record_call(module: Any, args: tuple, kwargs: dict) -> None:
        grab["call"] = compat.replayable_call(kwargs)

    def stop(module: Any, args: tuple, kwargs: dict | None = None) -> None:
        grab["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach()
        raise _Stop

    entry = compat.final_norm(language) if layer >= len(layers) else layers[layer]
    handles = [language.register_forward_pre_hook(record_call, with_kwargs=True)]
    handles.append(entry.register_forward_pre_hook(stop, with_kwargs=True))
    try:
        lm.model(**inputs, use_cache=False, logits_to_keep=1)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    hidden, call = grab["hidden"], grab["call"]
    t = hidden.shape[1]
    keep = torch.as_tensor(kept_positions(t, pruned), dtype=torch.long, device=hidden.device)[None]
    kwargs = compat.shortened_call(call, keep, drop_position_ids(call, keep, t, policy), layer)
    kwargs["inputs_embeds"] = hidden[0][keep]
    kwargs["use_cache"] = False
    with compat.decoder_layers_from(language, layer):
        out = language(**kwargs).last_hidden_state
    return lm.adapter.output_head()(out[:, -1])


def measure_prefill(
    lm: VideoLM, inputs: Any, layer: int, pruned: Sequence[int], policy: str = "original", repeats: int = 3
) -> dict[str, float]:
    """Wall time (median of `repeats`, after a warm-up) and peak memory of the pruned prefill and the unpruned
    one, batch 1, no KV cache kept: `prefill_s`, `prefill_s_unpruned`, `peak_bytes`, `peak_bytes_unpruned`."""
    device = lm.device

    def unpruned() -> Any:
        with torch.no_grad():
            return lm.model(**inputs, use_cache=False, logits_to_keep=1)

    pruned_run = _timed(lambda: pruned_prefill(lm, inputs, layer, pruned, policy), device, repeats)
    plain = _timed(unpruned, device, repeats)
    return {
        "prefill_s": pruned_run["seconds"],
        "prefill_s_unpruned": plain["seconds"],
        "peak_bytes": pruned_run["peak_bytes"],
        "peak_bytes_unpruned": plain["peak_bytes"],
    }
