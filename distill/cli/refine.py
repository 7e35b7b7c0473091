"""`rsdistill refine`: distribution-matching refinement of a set against the real train images (stage 5b)."""

from __future__ import annotations

import argparse

from rsdistill.cli.common import COMMANDS, add_config_arguments, add_data_arguments, config_from_args, dataset_from_args
from rsdistill.core.artifacts import overwrite_stages
from rsdistill.core.config import RefineConfig

HELP = {
    "iterations": "matching iterations (each with a new random network, real batch and augmentation)",
    "width": "channels of the random ConvNets",
    "depth": "blocks of the random ConvNets",
    "real_per_class": "real train images per class in each iteration",
    "learning_rate": "SGD step on the normalised pixels at 10 images per class (scaled by IPC / 10)",
    "momentum": "SGD momentum",
    "checkpoint_every": "iterations between checkpoints (an interrupted run resumes from the last)",
    "compile": "run the networks through torch.compile",
    "teacher_steps": "train a teacher ConvNet on the real images for this many steps first (0: no teacher)",
    "teacher_width": "channels of the teacher ConvNet",
    "teacher_weight": "weight of the teacher's cross-entropy on the refined images",
    "mixed_precision": "no or bf16: autocast for the matching networks (images, steps and loss stay fp32)",
}


def cmd_refine(args: argparse.Namespace) -> None:
    from rsdistill.synthesis.refine import refine_set

    config = config_from_args(RefineConfig, args)
    with overwrite_stages(args.overwrite):
        set_dir = refine_set(args.set_dir, dataset_from_args(args), config, args.out, seed=args.seed,
                             resolution=args.resolution, cache_dir=args.cache_dir, device=args.device)
    print(f"refined set: {set_dir}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("refine", help=COMMANDS["refine"].help,
                                   description=__doc__)
    parser.add_argument("set_dir", help="the set to refine (e.g. a synthesis stage's set/ folder)")
    parser.add_argument("--out", required=True, help="stage folder to write (the set goes to OUT/set)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds a finished stage made "
                        "with other settings (a folder holding files rsdistill did not write is never deleted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    add_config_arguments(parser.add_argument_group("refinement"), RefineConfig, HELP)
    add_data_arguments(parser)
    parser.set_defaults(func=cmd_refine)
