"""`rsdistill caption`: captions for the train split and one prompt per prototype (or per class)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rsdistill.captioning.stage import load_prompts, run_captions
from rsdistill.cli.common import COMMANDS, add_config_flags, add_overwrite_flag, context_from_args
from rsdistill.core.artifacts import read_manifest


def cmd_caption(args: argparse.Namespace) -> None:
    config, context = context_from_args(args)
    captions = config.captions
    if captions.model and "captions.captioner" not in vars(args):
        captions.captioner = "hf"  # a model given without --captioner means a vision-language model
    start = time.perf_counter()
    folder = run_captions(context, captions, Path(args.out), prototypes=args.prototypes)
    manifest = read_manifest(folder) or {}
    prompts = load_prompts(folder)
    skipped = len(manifest.get("skipped", []))
    print(
        f"{manifest.get('images')} captions ({captions.captioner}, {manifest.get('fallbacks')} attribute "
        f"fallbacks, {skipped} unreadable images skipped) and {len(prompts)} prompts ({captions.aggregation}, "
        f"{manifest.get('truncated')} cut to {captions.max_prompt_tokens} tokens) in {folder} "
        f"[{time.perf_counter() - start:.1f}s; stage wall time {manifest.get('wall_time_s')}s]"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("caption", help=COMMANDS["caption"].help)
    parser.add_argument("--out", required=True, help="the captions stage folder to write")
    add_overwrite_flag(parser)
    parser.add_argument(
        "--prototypes",
        help="prototypes stage folder: one prompt per prototype (default: one prompt per class)",
    )
    add_config_flags(parser, "seed", "device", "data", "captions")
    parser.set_defaults(func=cmd_caption)
