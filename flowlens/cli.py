"""flowlens: trace information flow in video LLMs (the command line: parses, calls the library, prints)."""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("model", help="Hugging Face id, local folder, or tiny:<family>")
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
