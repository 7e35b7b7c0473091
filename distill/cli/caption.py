"""`rsdistill caption`: captions for the train split and one prompt per prototype (or per class)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rsdistill.captioning.aggregate import RULES
from rsdistill.captioning.stage import CAPTIONERS, load_prompts, run_captions
from rsdistill.cli.common import COMMANDS, add_data_arguments, dataset_from_args
from rsdistill.core.artifacts import overwrite_stages, read_manifest
from rsdistill.core.config import CaptionConfig

DEFAULTS = CaptionConfig()


def cmd_caption(args: argparse.Namespace) -> None:
    dataset = dataset_from_args(args)
    captioner = args.captioner or ("hf" if args.model else DEFAULTS.captioner)
    config = CaptionConfig(
        captioner=captioner,
        model=args.model,
        prompt=DEFAULTS.prompt if args.prompt is None else args.prompt,
        dtype=args.dtype,
        image_resolution=args.image_resolution,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        mention_class=not args.no_class_name,
        prefix=args.prefix,
        text_embedder=args.text_embedder,
        aggregation=args.aggregation,
        min_phrase_share=args.min_phrase_share,
        tokenizer=args.tokenizer,
        max_prompt_tokens=args.max_prompt_tokens,
    )
    start = time.perf_counter()
    with overwrite_stages(args.overwrite):
        folder = run_captions(
            dataset,
            config,
            Path(args.out),
            resolution=args.resolution,
            prototypes=args.prototypes,
            cache_dir=args.cache_dir,
            on_bad_image=args.on_bad_image,
            device=args.device,
        )
    manifest = read_manifest(folder) or {}
    prompts = load_prompts(folder)
    skipped = len(manifest.get("skipped", []))
    print(
        f"{manifest.get('images')} captions ({config.captioner}, {manifest.get('fallbacks')} attribute "
        f"fallbacks, {skipped} unreadable images skipped) and {len(prompts)} prompts ({config.aggregation}, "
        f"{manifest.get('truncated')} cut to {config.max_prompt_tokens} tokens) in {folder} "
        f"[{time.perf_counter() - start:.1f}s; stage wall time {manifest.get('wall_time_s')}s]"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("caption", help=COMMANDS["caption"].help)
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="the captions stage folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds a finished stage made "
                        "with other settings (a folder holding files rsdistill did not write is never deleted)")
    parser.add_argument(
        "--prototypes",
        help="prototypes stage folder: one prompt per prototype (default: one prompt per class)",
    )
    group = parser.add_argument_group("captioner")
    group.add_argument(
        "--captioner",
        choices=CAPTIONERS,
        help="attributes (offline, default) or hf (a transformers vision-language model; implied by --model)",
    )
    group.add_argument("--model", help="hf: hub id or folder of the vision-language model")
    group.add_argument(
        "--prompt",
        help=f"hf: instruction, or first caption words for BLIP/GIT ('' for none; "
        f"default {DEFAULTS.prompt!r})",
    )
    group.add_argument("--dtype", default=DEFAULTS.dtype, choices=("auto", "float32", "float16", "bfloat16"))
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    group.add_argument(
        "--image-resolution",
        "--image_resolution",
        dest="image_resolution",
        type=int,
        help="hf: side of the images shown to the model (default --resolution)",
    )
    group.add_argument(
        "--batch-size", "--batch_size", dest="batch_size", type=int, default=DEFAULTS.batch_size
    )
    group.add_argument(
        "--max-new-tokens",
        "--max_new_tokens",
        dest="max_new_tokens",
        type=int,
        default=DEFAULTS.max_new_tokens,
    )
    group.add_argument(
        "--no-class-name",
        "--no_class_name",
        dest="no_class_name",
        action="store_true",
        help="do not open captions with the class in plain words",
    )
    group.add_argument("--prefix", default=DEFAULTS.prefix, help="opening words of the class phrase")
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--aggregation", choices=RULES, default=DEFAULTS.aggregation)
    prompts.add_argument(
        "--text-embedder",
        "--text_embedder",
        dest="text_embedder",
        default=DEFAULTS.text_embedder,
        help="sentence-transformers id or folder",
    )
    prompts.add_argument(
        "--min-phrase-share",
        "--min_phrase_share",
        dest="min_phrase_share",
        type=float,
        default=DEFAULTS.min_phrase_share,
        help="frequent-phrases: share of members",
    )
    prompts.add_argument(
        "--tokenizer", help="tokenizer of the generator's text encoder (default: the text embedder's)"
    )
    prompts.add_argument(
        "--max-prompt-tokens",
        "--max_prompt_tokens",
        dest="max_prompt_tokens",
        type=int,
        default=DEFAULTS.max_prompt_tokens,
    )
    parser.set_defaults(func=cmd_caption)
