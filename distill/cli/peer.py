"""`rsdistill peer`: a peer distillation method (DM or M3D) from real images, as a set in the common format.

The set starts from a random real coreset, so it holds refined real images: a reference point for the
benchmark, never a privacy-safe set. The refinement settings (`refine.*`, e.g. from a benchmark config) apply;
the method fixes only the matching objective.
"""

from __future__ import annotations

import argparse

from rsdistill.cli.common import COMMANDS, add_config_flags, context_from_args


def cmd_peer(args: argparse.Namespace) -> None:
    from rsdistill.peers import FROM_REAL, write_peer

    config, context = context_from_args(args)
    set_dir = write_peer(context, config.refine, args.out, args.method, args.ipc)
    print(f"{args.method} {FROM_REAL}, {args.ipc} per class: {set_dir}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("peer", help=COMMANDS["peer"].help, description=__doc__)
    parser.add_argument("--method", required=True, choices=["dm", "m3d"], help="the peer method")
    parser.add_argument("--ipc", type=int, required=True, help="images per class")
    parser.add_argument("--out", required=True, help="folder to write (the set goes to OUT/set)")
    add_config_flags(parser, "seed", "device", "data", "refine")
    parser.set_defaults(func=cmd_peer)
