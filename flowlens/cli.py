"""flowlens: trace information flow in video LLMs (the command line: parses, calls the library, prints).

Every analysis registered in `flowlens.analyses.registry` becomes a subcommand with the model, dataset
and run flags below plus one flag per field of its options dataclass. Exit codes (one scheme for every
command): 0 all good, 1 some samples failed, 2 usage error (found before any work), 3 no sample
succeeded or nothing to do, 4 internal error (a bug, a dependency that broke a mechanism, a full disk).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from flowlens.errors import (
    EXIT_INTERNAL,
    EXIT_NOTHING,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    DiskFullError,
    FlowlensError,
    LaunchStoppedError,
    NothingToDoError,
    UsageError,
)

EXIT_CODES = {
    EXIT_OK: "every sample succeeded",
    EXIT_SOME_FAILED: "some samples failed (their reasons are in the run file); the others are written",
    EXIT_USAGE: "usage error: bad arguments or input, found before any work",
    EXIT_NOTHING: "nothing done: no sample selected, or no sample succeeded",
    EXIT_INTERNAL: "internal error: a bug, a dependency that broke a mechanism flowlens relies on, or a full disk",
}


def _quiet_transformers() -> None:
    """Hide transformers' load-time progress bars and warnings in CLI output."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ------------------------------------------------------------------ shared flags
def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        help="Hugging Face id, local folder, tiny:<family>, or toy (or a run folder, for analyses that read one)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N, mps, or auto (cuda when present; default cpu)"
    )
    parser.add_argument(
        "--device-map",
        default=None,
        help="spread one model over devices with accelerate: auto, balanced, or a JSON mapping "
        "('{\"model.language_model.layers.0\": 0, ...}' or a .json file); instead of --device",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        help="float32 | bfloat16 | float16 (default: float32 on CPU, bfloat16 on GPU)",
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


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        default=None,
        help="synthetic, a benchmark (tvbench, mvbench, tempcompass, nextqa, videomme, tomato), "
        "hf:<repo>[:<config>], or a .jsonl/.csv/.json file (see docs/datasets.md); required unless the "
        "analysis runs on an existing run folder",
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
        "test[:50] or test[10:20] select rows as in `datasets` (after --task, before --limit)",
    )
    parser.add_argument("--limit", type=int, default=None, help="use the first N samples (applied last)")
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


def _add_run_options(parser: argparse.ArgumentParser, analysis: str) -> None:
    """--out/--resume/--overwrite/--json of the commands that write a run file."""
    parser.add_argument("--out", default=None, help=f"output folder (default: artifacts/{analysis}-<time>)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out, skipping finished samples"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of text")


# ------------------------------------------------------------------ loading
def resolve_device(device: str | None) -> str | None:
    """`auto` -> cuda when present, else cpu; a CUDA/MPS device that is not there is a usage error."""
    import torch

    if device is None:
        return None
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, auto)"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this machine has no CUDA device (use cpu or auto)")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available on this machine")
    return device


def _load(args: argparse.Namespace) -> Any:
    import flowlens
    from flowlens import distributed

    device_map = parse_device_map(getattr(args, "device_map", None))
    if device_map is not None and args.device is not None:
        raise UsageError("give --device or --device-map, not both: a device map places every module itself")
    if device_map is not None and distributed.world().parallel:
        raise UsageError(
            "--device-map under a multi-process launch is not supported: launch one process per model "
            "copy (e.g. torchrun --nproc-per-node 1 per node) or drop --device-map"
        )
    offload = None
    if isinstance(device_map, dict) and "disk" in map(str, device_map.values()):
        offload = tempfile.mkdtemp(prefix="flowlens-offload-")
        atexit.register(shutil.rmtree, offload, True)
    return flowlens.load(
        args.model,
        device=None if device_map is not None else resolve_device(distributed.device(args.device)),
        dtype=args.dtype,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        layers=args.layers,
        device_map=device_map,
        offload_folder=offload,
    )


def parse_device_map(value: str | None) -> str | dict[str, Any] | None:
    """`--device-map`: a name accelerate knows (auto, balanced, ...), inline JSON, or a .json file."""
    if value is None:
        return None
    text = value.strip()
    if not text.startswith("{") and text.endswith(".json"):
        try:
            text = Path(text).expanduser().read_text()
        except OSError as exc:
            raise UsageError(f"--device-map {value}: cannot read it ({exc.strerror})") from None
    if not text.startswith("{"):
        return text
    try:
        mapping = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--device-map: not valid JSON ({exc})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, (str, int)) for v in mapping.values()):
        raise UsageError('--device-map: a JSON object of module name -> device ("cpu", 0, "cuda:1", "disk")')
    return mapping


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
    if not samples and not samples.failures:
        raise NothingToDoError(
            f"the selection from {args.dataset} holds no sample (check --split/--task/--limit)"
        )
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
    """What a run records about its dataset (the split's name apart from its slice, for resume checks)."""
    from flowlens.data.benchmarks.common import parse_split

    return {
        "dataset": str(args.dataset),
        "data_dir": args.data_dir,
        "task": args.task,
        "split": args.split,
        "split_name": parse_split(args.split)[0],
        "seed": args.seed,
        "limit": args.limit,
        "columns": args.columns,
        "prompt_preset": template,
        "video_backend": args.video_backend,
    }


def _failure_kinds(reasons: Any) -> dict[str, int]:
    from flowlens.data.failures import count_kinds

    return dict(count_kinds(reasons))


def _exit_code(run: Any) -> int:
    if not run.samples and not run.run_tables:
        return EXIT_NOTHING
    return EXIT_SOME_FAILED if run.failures else EXIT_OK


# ------------------------------------------------------------------ commands
def cmd_analysis(args: argparse.Namespace) -> int:
    """Run one registered analysis over a dataset into a run file and its report."""
    from flowlens import distributed
    from flowlens.analyses.options import from_args
    from flowlens.analyses.runner import RunControl
    from flowlens.store.run import run_files

    analysis = args.analysis
    options = from_args(analysis.Options, args)  # bad values: a usage error before any work
    source = Path(args.model).expanduser()
    from_run = source.is_dir() and bool(run_files(source)) and args.dataset is None  # `flowlens lens RUN_DIR`
    if from_run and getattr(args, "device", None) is not None:  # each rank of a launch on its own GPU
        args.device = resolve_device(distributed.device(args.device))
    extra = analysis.resolve(args, options)
    if from_run:
        control = RunControl(out=args.out or source, resume=args.resume, overwrite=args.overwrite)
        control.check(analysis.run_file)
        run = analysis.from_run(source, options, control, **extra)
        return _finish(analysis, run, args)
    if args.dataset is None:
        raise UsageError(
            f"`flowlens {analysis.name}` needs --dataset (or an existing run folder in place of the model)"
        )
    control = RunControl(out=args.out, resume=args.resume, overwrite=args.overwrite)
    control.check(analysis.run_file)
    resolve_device(args.device)
    samples = _load_samples(args)
    lm = _load(args)
    template = _use_dataset_template(lm, samples, args)
    control.dataset = _dataset_config(args, template)
    main = distributed.world().main  # one voice per launch: rank 0's
    for warning in analysis.check(lm, options, extra):
        if main:
            print(f"warning: {warning}", file=sys.stderr)
    for line in analysis.announce(lm, samples, options):
        if main:
            print(line, file=sys.stderr)
    return _finish(analysis, analysis.run(lm, samples, options, control, **extra), args)


def _finish(analysis: Any, run: Any, args: argparse.Namespace) -> int:
    """Print what a run did (text or --json) and return its exit code (other ranks of a launch print nothing)."""
    from flowlens import distributed

    code = _exit_code(run)
    if not distributed.world().main:
        return code
    report = run.path.with_suffix(".html")
    if args.json:
        print(
            json.dumps(
                {
                    "analysis": analysis.name,
                    "run": str(run.path),
                    "report": str(report) if report.exists() else None,
                    "samples": len(run.samples),
                    "failed": len(run.failures),
                    "failure_kinds": _failure_kinds(run.failures.values()),
                    "exit_code": code,
                    "dataset": run.config.get("dataset", {}),
                    **(analysis.summary_json(run) if run.samples or run.run_tables else {}),
                },
                indent=2,
                default=str,
            )
        )
        return code
    print(f"{analysis.name}: {len(run.samples)} samples into {run.path}; {len(run.failures)} failed")
    if run.samples or run.run_tables:
        for line in analysis.summary(run):
            print(f"  {line}")
    for sample_id, reason in list(run.failures.items())[:5]:
        print(f"  failed {sample_id}: {reason}")
    if len(run.failures) > 5:
        print(f"  ... and {len(run.failures) - 5} more (flowlens export {run.path} --table failures)")
    kinds = _failure_kinds(run.failures.values())
    if kinds:
        print("  failures by kind: " + ", ".join(f"{kind} {n}" for kind, n in kinds.items()))
    if report.exists():
        print(f"  report: {report}")
    if code == EXIT_NOTHING:
        print("flowlens: no sample succeeded", file=sys.stderr)
    return code


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the token layout of one prepared sample and the size of its trace."""
    from flowlens.analyses.options import positive
    from flowlens.data.probe import probe_sample
    from flowlens.data.sample import Sample
    from flowlens.engine.sizing import estimate_trace_size, human_bytes

    positive("frames", args.frames)
    lm = _load(args)
    sample = probe_sample(n_frames=max(16, args.frames))
    if args.video:
        sample = Sample("video", args.video, sample.question, sample.options, sample.answer)
    _, layout = lm.prepare(sample, frames=args.frames)
    size = estimate_trace_size(layout)
    context = getattr(lm.adapter.text_config, "max_position_embeddings", None)
    warnings = []
    if context is not None and layout.seq_len > context:
        warnings.append(
            f"{layout.seq_len} tokens for {args.frames} frames exceed the model's context of {context}"
        )
    report = {
        "model": args.model,
        "architecture": lm.model.config.architectures[0],
        "family": lm.family,
        "frames": args.frames,
        "context": context,
        "warnings": warnings,
        "layout": layout.summary(),
        "trace_bytes_per_sample": size.to_dict(),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    summary = layout.summary()
    print(f"{args.model}  ({report['architecture']}, family {lm.family})")
    print(
        f"  language model: {summary['n_layers']} layers, {summary['n_heads']} heads "
        f"({summary['n_kv_heads']} KV), d_model {summary['d_model']}"
    )
    print(f"  sequence length: {layout.seq_len} tokens for {args.frames} frames (context {context})")
    per_frame = sorted(set(summary["tokens_per_frame"]))
    print(f"  frame groups: {layout.n_frames}, feature tokens per group: {', '.join(map(str, per_frame))}")
    print("  groups:")
    for name, n in summary["groups"].items():
        print(f"    {name:<16} {n:>7}")
    print(
        f"  trace size per sample: {human_bytes(size.total)} "
        f"(full attention maps would be {human_bytes(size.full_attention_fp16)} in fp16)"
    )
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Write one table of a run file as CSV or Parquet (without --table: list the run's tables)."""
    from flowlens.store.export import export_table
    from flowlens.store.run import open_run

    if args.table is None:
        with open_run(args.run) as run:
            print(f"tables of {run.path}: {', '.join(run.tables())}")
        return EXIT_OK
    print(export_table(args.run, args.table, args.format, args.out, overwrite=args.overwrite))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """(Re)build run reports; or compare two runs; or index a folder of runs; optionally export figures."""
    from flowlens.engine.sizing import human_bytes
    from flowlens.report import build

    if args.compare:
        if len(args.runs) != 2:
            raise UsageError("--compare takes exactly two runs (files or folders)")
        out = Path(args.out or "compare.html")
        build.write_compare(args.runs[0], args.runs[1], out)
        print(f"wrote {out} ({human_bytes(out.stat().st_size)}; opens offline)")
        return EXIT_OK
    if args.index:
        for folder in args.runs:
            out = build.write_index(folder, Path(args.out) if args.out and len(args.runs) == 1 else None)
            print(f"wrote {out} ({human_bytes(out.stat().st_size)})")
        return EXIT_OK
    targets = [target for path in args.runs for target in build.report_targets(path)]
    if args.out and len(targets) > 1:
        raise UsageError("--out names one report: give one run file (or omit --out to write beside each run)")
    for target in targets:
        out = build.rebuild(
            target, Path(args.out) if args.out else None, sample_pages=not args.no_sample_pages
        )
        pages = out.parent / f"{out.stem}_samples"
        extra = ""
        if pages.is_dir() and not args.no_sample_pages:
            n = sum(1 for p in pages.glob("*.html"))
            size = sum(p.stat().st_size for p in pages.iterdir())
            extra = f"; {n} sample pages in {pages.name}/ ({human_bytes(size)})"
        print(f"wrote {out} ({human_bytes(out.stat().st_size)}, self-contained, opens offline{extra})")
        if args.figures:
            paths = build.export_figures(target, Path(args.figures))
            print(f"  {len(paths)} figure files in {args.figures}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from flowlens import __version__
    from flowlens.analyses.options import add_arguments
    from flowlens.analyses.registry import analyses

    parser = argparse.ArgumentParser(
        prog="flowlens",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items()),
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

    for name, analysis in analyses().items():
        command = sub.add_parser(name, help=analysis.help, description=analysis.help)
        _add_model_options(command)
        _add_dataset_options(command)
        add_arguments(command, analysis.Options)
        analysis.add_arguments(command)
        _add_run_options(command, name)
        command.set_defaults(func=cmd_analysis, analysis=analysis)

    ex = sub.add_parser(
        "export", help="write a run table as CSV or Parquet (without --table: list the tables)"
    )
    ex.add_argument("run", help="a run file (trace.h5) or its folder")
    ex.add_argument("--table", default=None, help="a table of the run (omit it to list them)")
    ex.add_argument("--format", choices=["csv", "parquet"], default="csv")
    ex.add_argument(
        "--out",
        default=None,
        help="output file, or folder (an existing one, or a path ending in /); default: beside the run file",
    )
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    ex.set_defaults(func=cmd_export)

    rep = sub.add_parser(
        "report",
        help="(re)build the self-contained HTML report of runs; --compare two runs; --index a folder",
        description="(Re)build the self-contained HTML report of run files (beside each: trace.h5 -> trace.html, "
        "with per-sample pages in trace_samples/); or put two runs on shared axes (--compare); or write an "
        "index.html over every run under a folder (--index).",
    )
    rep.add_argument("runs", nargs="+", metavar="RUN", help="run files (trace.h5) or folders holding them")
    rep.add_argument(
        "--out", default=None, help="the report file (one run), comparison (default compare.html) or index"
    )
    rep.add_argument(
        "--compare",
        action="store_true",
        help="compare two runs on shared axes (refused when their definitions differ)",
    )
    rep.add_argument(
        "--index", action="store_true", help="write DIR/index.html over every run under each folder"
    )
    rep.add_argument(
        "--figures",
        default=None,
        metavar="DIR",
        help="also export every figure as PNG and SVG into DIR (kaleido)",
    )
    rep.add_argument("--no-sample-pages", action="store_true", help="skip the per-sample pages")
    rep.set_defaults(func=cmd_report)
    return parser


def _said(exc: BaseException) -> str:
    """The exception's message, with its notes (e.g. which sample a rank was working on) in brackets."""
    return str(exc) + "".join(f" ({note})" for note in getattr(exc, "__notes__", []))


def main(argv: list[str] | None = None) -> int:
    from flowlens import distributed
    from flowlens.compat import CompatError

    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_transformers()
    me = distributed.label()  # `flowlens[rank 1/4]` under a launcher: which rank says it
    try:
        return int(args.func(args))
    except NothingToDoError as exc:
        print(f"{me}: nothing done: {_said(exc)}", file=sys.stderr)
        return EXIT_NOTHING
    except (CompatError, DiskFullError, LaunchStoppedError) as exc:
        print(f"{me}: error: {_said(exc)}", file=sys.stderr)
        return EXIT_INTERNAL
    except FlowlensError as exc:
        print(f"{me}: error: {_said(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{me}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so, with the traceback, and a code of its own
        traceback.print_exc()
        print(f"{me}: internal error: {type(exc).__name__}: {_said(exc)} (please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
