"""flowlens: trace information flow in video LLMs (the command line: parses, calls the library, prints)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from flowlens.errors import FlowlensError


def _quiet_transformers() -> None:
    """Hide transformers' load-time progress bars and warnings in CLI output."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Hugging Face id, local folder, tiny:<family>, or toy")
    parser.add_argument("--device", default=None, help="torch device (default: cpu)")
    parser.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU)"
    )
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the checkpoint's own Python code (only if you trust it)",
    )
    parser.add_argument(
        "--layers", type=int, default=None, help="language-model depth of a tiny:<family> model"
    )


def _load(args: argparse.Namespace) -> Any:
    import flowlens

    return flowlens.load(
        args.model,
        device=args.device,
        dtype=args.dtype,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        layers=args.layers,
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the token layout of one prepared sample and the size of its trace."""
    from flowlens.data.probe import probe_sample
    from flowlens.data.sample import Sample
    from flowlens.engine.sizing import estimate_trace_size, human_bytes

    lm = _load(args)
    sample = probe_sample()
    if args.video:
        sample = Sample("video", args.video, sample.question, sample.options, sample.answer)
    _, layout = lm.prepare(sample, frames=args.frames)
    size = estimate_trace_size(layout)
    report = {
        "model": args.model,
        "architecture": lm.model.config.architectures[0],
        "family": lm.family,
        "frames": args.frames,
        "layout": layout.summary(),
        "trace_bytes_per_sample": size.to_dict(),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    summary = layout.summary()
    print(f"{args.model}  ({report['architecture']}, family {lm.family})")
    print(
        f"  language model: {summary['n_layers']} layers, {summary['n_heads']} heads "
        f"({summary['n_kv_heads']} KV), d_model {summary['d_model']}"
    )
    print(f"  sequence length: {layout.seq_len} tokens for {args.frames} frames")
    per_frame = sorted(set(summary["tokens_per_frame"]))
    print(f"  frame groups: {layout.n_frames}, tokens per group: {', '.join(map(str, per_frame))}")
    print("  groups:")
    for name, n in summary["groups"].items():
        print(f"    {name:<16} {n:>7}")
    print(
        f"  trace size per sample: {human_bytes(size.total)} "
        f"(full attention maps would be {human_bytes(size.full_attention_fp16)} in fp16)"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Multiple-choice accuracy per task from the option-letter probabilities at `last`."""
    from flowlens.analyses.evaluate import evaluate

    samples = _load_samples(args)
    lm = _load(args)
    template = _use_dataset_template(lm, samples, args)
    result = evaluate(
        lm,
        samples,
        frames=args.frames,
        blind=args.blind,
        shuffle_frames=args.shuffle_frames,
        shuffle_seed=args.shuffle_seed,
    )
    report = {"model": args.model, **_dataset_config(args, template), **result.to_dict()}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result.samples.to_csv(args.out, index=False)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    mode = "blind (blank frames)" if args.blind else "shuffled frames" if args.shuffle_frames else "video"
    print(f"{args.model} on {args.dataset}: {len(samples)} samples, {args.frames} frames, {mode}")
    print(f"  {'task':<18} {'n':>5} {'accuracy':>9} {'chance':>7} {'failed':>7}")
    for row in result.summary.itertuples():
        print(f"  {row.task:<18} {row.n:>5} {row.accuracy:>9.3f} {row.chance:>7.3f} {row.failed:>7}")
    for failure in result.failures[:5]:
        where = failure.get("id") or f"line {failure.get('line')}"
        print(f"  failed {where}: {failure['reason']}")
    if len(result.failures) > 5:
        print(f"  ... and {len(result.failures) - 5} more failures (see --json)")
    _print_failure_kinds(f["reason"] for f in result.failures)
    return 0


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        required=True,
        help="synthetic, a benchmark (tvbench, mvbench, tempcompass, nextqa, videomme, tomato), "
        "hf:<repo>[:<config>], or a .jsonl/.csv/.json file (see docs/datasets.md)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="the benchmark's root folder as published (annotations and unpacked videos); "
        "for files and hf: datasets, the folder relative video paths start from",
    )
    parser.add_argument(
        "--task", action="append", default=None, help="keep only this task (repeatable; default: all)"
    )
    parser.add_argument(
        "--split",
        default=None,
        help="split: train | val | test (synthetic, nextqa), any split of an hf: dataset; slices such as "
        "test[:50] work",
    )
    parser.add_argument("--limit", type=int, default=None, help="use the first N samples")
    parser.add_argument(
        "--seed", type=int, default=None, help="generate a fresh synthetic set from this seed"
    )
    parser.add_argument(
        "--columns",
        default=None,
        help="column mapping of a .csv/.jsonl/.json or hf: dataset, e.g. video=clip,question=q,"
        "options=a0+a1+a2,answer=label",
    )
    parser.add_argument(
        "--template",
        default=None,
        help="prompt preset: mvbench, videomme, tempcompass, open-ended (default: the dataset's own)",
    )
    parser.add_argument(
        "--video-backend",
        default=None,
        choices=["pyav", "decord", "torchcodec"],
        help="video decoder (default pyav; decord and torchcodec when installed)",
    )


def _load_samples(args: argparse.Namespace) -> Any:
    """The samples `--dataset` and friends select; notes (skipped tasks) go to stderr."""
    from flowlens.data import load as load_dataset
    from flowlens.data import templates
    from flowlens.data.decoders import check_backend

    if args.video_backend:
        check_backend(args.video_backend)
    if args.template:
        templates.get(args.template)  # an unknown preset fails before the model loads
    data_log = logging.getLogger("flowlens.data")
    if not data_log.handlers:  # notes are printed below, once
        data_log.addHandler(logging.NullHandler())
    samples = load_dataset(
        args.dataset,
        split=args.split,
        seed=args.seed,
        limit=args.limit,
        progress=True,
        data_dir=args.data_dir,
        task=args.task,
        columns=args.columns,
    )
    for note in samples.notes:
        print(f"note: {note}", file=sys.stderr)
    for sample in samples:
        if args.template:
            sample.metadata["template"] = args.template
        if args.video_backend:
            sample.metadata["video_backend"] = args.video_backend
    return samples


def _use_dataset_template(lm: Any, samples: Any, args: argparse.Namespace) -> str | None:
    """Make the dataset's prompt preset (or `--template`) the model's template; return its name."""
    from flowlens.data import templates

    names = {s.metadata.get("template") for s in samples}
    name = args.template or (names.pop() if len(names) == 1 else None)
    if name:
        lm.template = templates.get(name)
    return name


def _dataset_config(args: argparse.Namespace, template: str | None) -> dict[str, Any]:
    """What a run records about its dataset."""
    return {
        "dataset": str(args.dataset),
        "data_dir": args.data_dir,
        "task": args.task,
        "split": args.split,
        "seed": args.seed,
        "limit": args.limit,
        "prompt_preset": template,
    }


def _print_failure_kinds(reasons: Any) -> None:
    """The end-of-run line counting failures by kind (nothing when none failed)."""
    from flowlens.data.failures import summary_line

    line = summary_line(reasons)
    if line:
        print(f"  {line}")


def cmd_trace(args: argparse.Namespace) -> int:
    """Trace a dataset into DIR/trace.h5 and DIR/report.html; the exit code is the number of failed samples."""
    from flowlens.analyses.trace import TraceOptions
    from flowlens.analyses.trace_run import trace
    from flowlens.engine.sizing import estimate_trace_size, human_bytes

    samples = _load_samples(args)
    lm = _load(args)
    template = _use_dataset_template(lm, samples, args)
    options = TraceOptions(frames=args.frames, video_layers=args.video_layers or [])
    if samples:
        try:
            _, layout = lm.prepare(samples[0], frames=args.frames)
            size = estimate_trace_size(layout)
            print(
                f"tracing {len(samples)} samples of {layout.seq_len} tokens (~{human_bytes(size.total)} each "
                f"before compression; full attention maps would be {human_bytes(size.full_attention_fp16)})",
                file=sys.stderr,
            )
        except FlowlensError:
            pass  # the sample fails again inside the run, where its reason is recorded
    extra = _dataset_config(args, template)
    run = trace(
        lm, samples, args.out, options, resume=args.resume, overwrite=args.overwrite, config_extra=extra
    )
    failed = len(run.failures)
    answers = run.table("answers")
    accuracy = float(answers["correct"].mean()) if len(answers) else float("nan")
    print(f"traced {len(run.samples)} samples into {run.path}; accuracy {accuracy:.3f}; {failed} failed")
    for sample_id, reason in list(run.failures.items())[:5]:
        print(f"  failed {sample_id}: {reason}")
    _print_failure_kinds(run.failures.values())
    return min(failed, 125)


def cmd_knockout(args: argparse.Namespace) -> int:
    """Attention-knockout sweep into DIR/knockout.h5 and DIR/report.html; exit code = number of failed samples."""
    from flowlens.analyses.knockout import SweepOptions
    from flowlens.analyses.knockout_run import knockout
    from flowlens.engine.spec import load_block_set
    from flowlens.store.knockout_summary import summarize_knockout

    block_set = load_block_set(args.preset)
    samples = _load_samples(args)
    lm = _load(args)
    options = SweepOptions(
        window=args.window, style=args.style, frames=args.frames, batch_size=args.batch_size
    )
    extra = _dataset_config(args, _use_dataset_template(lm, samples, args))
    run = knockout(
        lm,
        samples,
        block_set,
        args.out,
        options,
        resume=args.resume,
        overwrite=args.overwrite,
        config_extra=extra,
    )
    summary = summarize_knockout(run.table("knockout")) if run.samples else None
    print(f"swept {len(run.samples)} samples into {run.path}; {len(run.failures)} failed")
    if summary is not None:
        scored = summary.dropna(subset=["mean_rel_pred"])
        if scored.empty:
            print("  no sample was answered correctly by the clean model: % changes are averaged over those")
        for curve, rows in scored.groupby("curve", sort=False):
            worst = rows.loc[rows["mean_rel_pred"].idxmin()]
            print(f"  {curve:<28} strongest drop {worst.mean_rel_pred:7.1f}% at layer {int(worst.layer)}")
    for sample_id, reason in list(run.failures.items())[:5]:
        print(f"  failed {sample_id}: {reason}")
    _print_failure_kinds(run.failures.values())
    return min(len(run.failures), 125)


def cmd_pathways(args: argparse.Namespace) -> int:
    """Effective pathways (a rule table, or --auto from a sweep) against the full model and a random control."""
    from flowlens.analyses.knockout import SweepOptions
    from flowlens.analyses.pathways import PathwayOptions, auto_pathways, pathways
    from flowlens.engine.pathways import RuleTable

    if bool(args.rules) == bool(args.auto):
        raise FlowlensError("give exactly one of --rules FILE.yaml or --auto")
    samples = _load_samples(args)
    lm = _load(args)
    options = PathwayOptions(frames=args.frames, seed=args.random_seed, random_control=args.random_control)
    extra = _dataset_config(args, _use_dataset_template(lm, samples, args))
    common = {"resume": args.resume, "overwrite": args.overwrite, "config_extra": extra}
    if args.auto:
        sweep = SweepOptions(window=args.window, frames=args.frames)
        run = auto_pathways(lm, samples, args.out, tuple(args.thresholds), sweep, options, **common)
    else:
        run = pathways(lm, samples, RuleTable.load(args.rules), args.out, options, **common)
    print(f"ran {len(run.samples)} samples into {run.path}; {len(run.failures)} failed")
    if run.samples:
        table = run.table("pathways")
        summary = table.groupby("condition", sort=False).agg(
            accuracy=("correct", "mean"), kept=("kept_fraction", "mean")
        )
        for condition, row in summary.iterrows():
            print(f"  {condition:<16} accuracy {row.accuracy:6.3f}   edges kept {100 * row.kept:5.1f}%")
    for sample_id, reason in list(run.failures.items())[:5]:
        print(f"  failed {sample_id}: {reason}")
    _print_failure_kinds(run.failures.values())
    return min(len(run.failures), 125)


def cmd_export(args: argparse.Namespace) -> int:
    """Write one table of a run file as CSV or Parquet."""
    from flowlens.store.export import export_table

    print(export_table(args.run, args.table, args.format, args.out))
    return 0


def _add_run_options(parser: argparse.ArgumentParser, analysis: str) -> None:
    """--out/--resume/--overwrite of the commands that write a run file."""
    parser.add_argument("--out", default=None, help=f"output folder (default: artifacts/{analysis}-<time>)")
    parser.add_argument(
        "--resume", action="store_true", help="continue a run in --out, skipping finished samples"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")


def build_parser() -> argparse.ArgumentParser:
    from flowlens import __version__

    parser = argparse.ArgumentParser(
        prog="flowlens", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"flowlens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="show a model's token layout and the size of a trace")
    _add_model_options(inspect)
    inspect.add_argument("--frames", type=int, default=8, help="frames sampled from the video (default 8)")
    inspect.add_argument("--video", default=None, help="a video file to lay out (default: a generated clip)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--out", default=None, help="also write the JSON report to this file")
    inspect.set_defaults(func=cmd_inspect)

    ev = sub.add_parser(
        "eval", help="multiple-choice accuracy per task (optionally blind or with shuffled frames)"
    )
    _add_model_options(ev)
    _add_dataset_options(ev)
    ev.add_argument("--frames", type=int, default=8, help="frames sampled from each video (default 8)")
    ev.add_argument(
        "--blind", action="store_true", help="replace the video by blank frames (the no-video floor)"
    )
    ev.add_argument(
        "--shuffle-frames", action="store_true", help="permute the sampled frames (seeded per sample)"
    )
    ev.add_argument("--shuffle-seed", type=int, default=0, help="seed of --shuffle-frames (default 0)")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("--out", default=None, help="also write the per-sample table to this CSV file")
    ev.set_defaults(func=cmd_eval)

    tr = sub.add_parser(
        "trace", help="attention flow between frames and from video to text, into an HDF5 run file"
    )
    _add_model_options(tr)
    _add_dataset_options(tr)
    tr.add_argument("--frames", type=int, default=8, help="frames sampled from each video (default 8)")
    _add_run_options(tr, "trace")
    tr.add_argument(
        "--video-layers",
        type=int,
        nargs="*",
        default=None,
        help="also store every video token's residual at these layers",
    )
    tr.set_defaults(func=cmd_trace)

    ko = sub.add_parser("knockout", help="attention-knockout sweeps (Map the Flow) over layer windows")
    _add_model_options(ko)
    _add_dataset_options(ko)
    ko.add_argument(
        "--preset",
        default="map-the-flow",
        help="a preset (map-the-flow, cross-frame, vql-to-ql, ...) or a YAML file",
    )
    ko.add_argument(
        "--window", type=int, default=9, help="layers per knockout window (default 9, as the paper)"
    )
    ko.add_argument("--style", default="window", choices=["window", "inverse", "top_down", "bottom_up"])
    ko.add_argument("--frames", type=int, default=8, help="frames sampled from each video (default 8)")
    ko.add_argument("--batch-size", type=int, default=32, help="knockout conditions per forward (default 32)")
    _add_run_options(ko, "knockout")
    ko.set_defaults(func=cmd_knockout)

    pw = sub.add_parser("pathways", help="effective pathways: keep attention edges only where they matter")
    _add_model_options(pw)
    _add_dataset_options(pw)
    pw.add_argument("--rules", default=None, help="a YAML rule table (see docs/knockout.md)")
    pw.add_argument(
        "--auto", action="store_true", help="derive rule tables from a knockout sweep of these samples"
    )
    pw.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=[1.0, 2.0, 5.0, 10.0, 20.0],
        help="--auto: keep an edge group where its knockout drops p(prediction) by more than this %%",
    )
    pw.add_argument("--window", type=int, default=9, help="--auto: knockout window of the sweep (default 9)")
    pw.add_argument("--random-seed", type=int, default=0, help="seed of the random-blocking controls")
    pw.add_argument(
        "--random-control",
        choices=["uniform", "per-layer"],
        default="uniform",
        help="which control is reported as `random`: uniform (the paper's: int(r*N(N+1)/2) pairs in every "
        "layer) or per-layer (as many as the pathway blocks in each layer); the other runs too, as "
        "random_<name>",
    )
    pw.add_argument("--frames", type=int, default=8, help="frames sampled from each video (default 8)")
    _add_run_options(pw, "pathways")
    pw.set_defaults(func=cmd_pathways)

    ex = sub.add_parser("export", help="write a run table as CSV or Parquet")
    ex.add_argument("run", help="a run file (trace.h5) or its folder")
    ex.add_argument(
        "--table", required=True, help="frame_flow | segment_flow | flow_summary | answers | failures"
    )
    ex.add_argument("--format", choices=["csv", "parquet"], default="csv")
    ex.add_argument("--out", default=None, help="output file or folder (default: beside the run file)")
    ex.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_transformers()
    try:
        return int(args.func(args))
    except FlowlensError as exc:
        print(f"flowlens: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flowlens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
