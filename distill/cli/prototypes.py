"""`rsdistill prototypes` and `rsdistill coreset`."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from rsdistill.cli.common import COMMANDS, add_data_arguments, dataset_from_args
from rsdistill.core.config import PrototypeConfig
from rsdistill.data.imageset import check_set_destination
from rsdistill.prototypes.coreset import METHODS, write_coreset
from rsdistill.prototypes.representatives import RULES
from rsdistill.prototypes.schema import load_prototypes
from rsdistill.prototypes.stage import run_prototypes

DEFAULTS = PrototypeConfig()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[-60:]


def add_encoder_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    group = parser.add_argument_group("encoder")
    group.add_argument(
        "--encoder",
        default=default,
        help="pixels[:side], vae:<folder>, efficientnet-lite0, "
        f"open_clip:<model>[:<tag or checkpoint>], torchscript:<folder> (default {default})",
    )
    group.add_argument("--pool", type=int, default=DEFAULTS.pool, help="latent grid of the vae encoder")
    group.add_argument(
        "--encoder-size",
        "--encoder_size",
        dest="encoder_size",
        type=int,
        default=None,
        help="resize images to this side before efficientnet-lite0 (default: --resolution)",
    )
    group.add_argument(
        "--batch-size", "--batch_size", dest="batch_size", type=int, default=DEFAULTS.batch_size
    )
    group.add_argument("--device", default="auto")
    group.add_argument("--niter", type=int, default=DEFAULTS.niter, help="k-means iterations")
    group.add_argument("--nredo", type=int, default=DEFAULTS.nredo, help="k-means restarts (best kept)")
    group.add_argument("--seed", type=int, default=0)


def cmd_prototypes(args: argparse.Namespace) -> None:
    dataset = dataset_from_args(args)
    config = PrototypeConfig(
        encoder=args.encoder,
        ipc=args.ipc,
        niter=args.niter,
        nredo=args.nredo,
        rule=args.rule,
        alpha=args.alpha,
        pool=args.pool,
        batch_size=args.batch_size,
        encoder_size=args.encoder_size,
    )
    run_dir = Path(
        args.out or f"outputs/{slug(dataset.name)}-{slug(args.encoder)}-ipc{args.ipc}-seed{args.seed}"
    )
    folder = run_prototypes(
        dataset,
        config,
        run_dir,
        seed=args.seed,
        resolution=args.resolution,
        cache_dir=args.cache_dir,
        device=args.device,
        on_bad_image=args.on_bad_image,
        overwrite=args.overwrite,
    )
    prototypes = load_prototypes(folder)
    per_class = Counter(p.class_name for p in prototypes.prototypes)
    print(
        f"{len(prototypes.prototypes)} prototypes ({len(per_class)} classes, "
        f"{min(per_class.values())}-{max(per_class.values())} per class, rule {prototypes.rule}) in {folder}"
    )


def cmd_coreset(args: argparse.Namespace) -> None:
    dataset = dataset_from_args(args)
    out = Path(
        args.out or f"outputs/coresets/{slug(dataset.name)}-{args.method}-ipc{args.ipc}-seed{args.seed}"
    )
    check_set_destination(out, overwrite=args.overwrite)
    write_coreset(
        dataset,
        args.method,
        args.ipc,
        out,
        encoder=args.encoder,
        seed=args.seed,
        resolution=args.resolution,
        cache_dir=args.cache_dir,
        device=args.device,
        batch_size=args.batch_size,
        niter=args.niter,
        nredo=args.nredo,
        pool=args.pool,
        encoder_size=args.encoder_size,
        on_bad_image=args.on_bad_image,
    )
    encoder = "" if args.method == "random" else f" in {args.encoder} space"
    print(f"{args.method} coreset, {args.ipc} per class{encoder}: {out}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prototypes", help=COMMANDS["prototypes"].help)
    add_data_arguments(parser)
    parser.add_argument("--ipc", type=int, default=DEFAULTS.ipc, help="prototypes (clusters) per class")
    parser.add_argument(
        "--rule",
        choices=RULES,
        default=DEFAULTS.rule,
        help="how a cluster's representative is chosen (default dpd-margin)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=DEFAULTS.alpha,
        help="weight of the own-centroid distance in dpd-margin",
    )
    parser.add_argument(
        "--out",
        help="run directory; the stage is written to DIR/prototypes as `rsdistill run` does "
        "(default outputs/<dataset>-<encoder>-ipc<k>-seed<s>)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DIR/prototypes if it holds prototypes "
                        "made with other settings (a folder holding files rsdistill did not write is never deleted)")
    add_encoder_arguments(parser, default="efficientnet-lite0")
    parser.set_defaults(func=cmd_prototypes)

    parser = subparsers.add_parser("coreset", help=COMMANDS["coreset"].help)
    add_data_arguments(parser)
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--ipc", type=int, required=True, help="images per class")
    parser.add_argument(
        "--out", help="set folder (default outputs/coresets/<dataset>-<method>-ipc<k>-seed<s>)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds an image set "
                        "(a folder holding files its metadata.jsonl does not list is never deleted)")
    add_encoder_arguments(parser, default="efficientnet-lite0")
    parser.set_defaults(func=cmd_coreset)
