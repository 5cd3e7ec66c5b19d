"""Rank 0's merge of shard files vs an index of external links (the alternative to copying).

Two shards of N toy traces each (one traced sample written N times under new ids) are merged into one
run file with `merge_shards` (`RunWriter.absorb`: copy, flush, rename per sample), and, separately,
indexed: a run file whose `samples/<id>` are HDF5 external links into the shards. HDF5 virtual datasets
stitch same-shaped datasets together; a run file is one group per sample with its own shapes, so the
index form of "do not copy" is links per group. Both are timed, and so is reading one table over all
samples from each.

    python -m benchmarks.merge_speed --samples 500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import h5py


def _write_shards(folder: Path, per_shard: int, shards: int) -> tuple[Path, dict, object, int]:
    """`shards` shard files of `per_shard` copies of one toy trace; returns the run path, config, model, bytes."""
    import flowlens
    from flowlens.analyses.runner import model_info
    from flowlens.cli import main
    from flowlens.distributed import shard_path
    from flowlens.store.hdf5 import RunWriter

    one = folder / "one"
    assert (
        main(["trace", "toy", "--dataset", "synthetic", "--split", "test", "--limit", "1", "--out", str(one)])
        == 0
    )
    with flowlens.open_run(one / "trace.h5") as run:
        trace, config = run.sample(run.samples[0]), run.config
    lm = flowlens.load("toy")
    path = folder / "trace.h5"
    for rank in range(shards):
        with RunWriter(shard_path(path, rank), config, model_info(lm)) as writer:
            for i in range(per_shard):
                writer.write_sample(dataclasses.replace(trace, sample_id=f"r{rank}-{i:05d}"))
    size = sum(shard_path(path, r).stat().st_size for r in range(shards))
    return path, config, lm, size


def _index(path: Path, shard_files: list[Path]) -> None:
    """A run file whose samples are external links into the shards (attributes copied from the first)."""
    from flowlens.store import schema

    with h5py.File(path, "w") as index, h5py.File(shard_files[0], "r") as first:
        for key, value in first.attrs.items():
            index.attrs[key] = value
        samples, failures = index.create_group(schema.SAMPLES), index.create_group(schema.FAILURES)
        for shard in shard_files:
            with h5py.File(shard, "r") as source:
                for name in source[schema.SAMPLES]:
                    samples[name] = h5py.ExternalLink(shard.name, f"{schema.SAMPLES}/{name}")
        del failures


def bench_merge(per_shard: int = 500, shards: int = 2) -> dict:
    """Seconds to merge vs index `shards` x `per_shard` toy traces, and to read `frame_flow` from each."""
    import flowlens
    from flowlens import distributed
    from flowlens.analyses.runner import merge_shards

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path, config, lm, size = _write_shards(folder, per_shard, shards)
        shard_files = distributed.shards(path)
        start = time.perf_counter()
        index = folder / "index.h5"
        _index(index, shard_files)
        index_s = time.perf_counter() - start
        start = time.perf_counter()
        with flowlens.open_run(index) as run:
            rows_index = len(run.table("frame_flow"))
        read_index_s = time.perf_counter() - start

        index.unlink()
        start = time.perf_counter()
        merge_shards(path, config, lm)
        merge_s = time.perf_counter() - start
        start = time.perf_counter()
        with flowlens.open_run(path) as run:
            rows_merged, samples = len(run.table("frame_flow")), len(run.samples)
        read_merged_s = time.perf_counter() - start
    row = {
        "shards": shards,
        "samples": samples,
        "shard_mib": size / 2**20,
        "merge_s": merge_s,
        "merge_ms_per_sample": 1000 * merge_s / samples,
        "merge_mib_per_s": size / 2**20 / merge_s,
        "index_s": index_s,
        "read_frame_flow_merged_s": read_merged_s,
        "read_frame_flow_index_s": read_index_s,
        "rows": rows_merged,
        "same_rows": rows_merged == rows_index,
    }
    print(
        f"{samples} samples in {shards} shards ({row['shard_mib']:.0f} MiB): merge {merge_s:.2f} s "
        f"({row['merge_ms_per_sample']:.1f} ms/sample, {row['merge_mib_per_s']:.0f} MiB/s); "
        f"link index {index_s:.2f} s; read frame_flow merged {read_merged_s:.2f} s, via links {read_index_s:.2f} s"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500, help="samples per shard")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    row = bench_merge(args.samples, args.shards)
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
