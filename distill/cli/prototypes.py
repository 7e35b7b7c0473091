"""`rsdistill prototypes` and `rsdistill coreset`."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from rsdistill.cli.common import COMMANDS, add_config_flags, add_overwrite_flag, context_from_args
from rsdistill.prototypes.coreset import DEFAULT_ENCODER, METHODS, write_coreset
from rsdistill.prototypes.schema import load_prototypes
from rsdistill.prototypes.stage import run_prototypes


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[-60:]


def cmd_prototypes(args: argparse.Namespace) -> None:
    config, context = context_from_args(args)
    encoder, ipc = config.prototypes.encoder, config.prototypes.ipc
    run_dir = Path(args.out or f"outputs/{slug(context.dataset.name)}-{slug(encoder)}-ipc{ipc}-seed{context.seed}")
    folder = run_prototypes(context, config.prototypes, run_dir / "prototypes")
    prototypes = load_prototypes(folder)
    per_class = Counter(p.class_name for p in prototypes.prototypes)
    print(
        f"{len(prototypes.prototypes)} prototypes ({len(per_class)} classes, "
        f"{min(per_class.values())}-{max(per_class.values())} per class, rule {prototypes.rule}) in {folder}"
    )


def cmd_coreset(args: argparse.Namespace) -> None:
    config, context = context_from_args(args)
    out = Path(
        args.out or f"outputs/coresets/{slug(context.dataset.name)}-{args.method}-ipc{args.ipc}-seed{context.seed}"
    )
    write_coreset(context, config.prototypes, out, args.method, args.ipc, encoder=args.encoder)
    encoder = "" if args.method == "random" else f" in {args.encoder} space"
    print(f"{args.method} coreset, {args.ipc} per class{encoder}: {out}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prototypes", help=COMMANDS["prototypes"].help)
    parser.add_argument(
        "--out",
        help="run directory; the stage is written to DIR/prototypes as `rsdistill run` does "
        "(default outputs/<dataset>-<encoder>-ipc<k>-seed<s>)",
    )
    add_overwrite_flag(parser, "prototypes made with other settings")
    add_config_flags(parser, "seed", "device", "data", "prototypes")
    parser.set_defaults(func=cmd_prototypes)

    parser = subparsers.add_parser("coreset", help=COMMANDS["coreset"].help)
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--ipc", type=int, required=True, help="images per class")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER,
                        help=f"feature space of herding, kcenter and kmeans (default {DEFAULT_ENCODER})")
    parser.add_argument(
        "--out", help="set folder (default outputs/coresets/<dataset>-<method>-ipc<k>-seed<s>)"
    )
    add_overwrite_flag(parser, "an image set")
    add_config_flags(parser, "seed", "device", "data", "prototypes.niter", "prototypes.nredo", "prototypes.pool",
                     "prototypes.batch_size", "prototypes.encoder_size", "prototypes.faiss_device")
    parser.set_defaults(func=cmd_coreset)
