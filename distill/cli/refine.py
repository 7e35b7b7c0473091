"""`rsdistill refine`: distribution-matching refinement of a set against the real train images (stage 5b)."""

from __future__ import annotations

import argparse

from rsdistill.cli.common import COMMANDS, add_config_flags, add_overwrite_flag, context_from_args


def cmd_refine(args: argparse.Namespace) -> None:
    from rsdistill.synthesis.refine import refine_set

    config, context = context_from_args(args)
    set_dir = refine_set(context, config.refine, args.out, args.set_dir)
    print(f"refined set: {set_dir}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("refine", help=COMMANDS["refine"].help, description=__doc__)
    parser.add_argument("set_dir", help="the set to refine (e.g. a synthesis stage's set/ folder)")
    parser.add_argument("--out", required=True, help="stage folder to write (the set goes to OUT/set)")
    add_overwrite_flag(parser)
    add_config_flags(parser, "seed", "device", "data", "refine")
    parser.set_defaults(func=cmd_refine)
