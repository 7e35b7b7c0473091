"""`rsdistill run`: the whole pipeline from a YAML config; every setting can be given as a flag or override."""

from __future__ import annotations

import argparse

from rsdistill.cli.common import COMMANDS, add_config_flags, config_from_args
from rsdistill.core.config import SECTIONS, dump_config

# The top-level settings, then every section; a field name that two sections share is a flag of the first
# listed here (e.g. --ipc: prototypes.ipc, --mixed_precision: generator.mixed_precision).
BINDINGS = ("run_dir", "shared_dir", "seed", "device", "data", "prototypes", "generator", "synthesis", "evaluation",
            "refine", "captions")
assert set(SECTIONS) <= set(BINDINGS)


def cmd_run(args: argparse.Namespace) -> None:
    from rsdistill.pipeline import run_pipeline

    config = config_from_args(args)
    if args.show:
        print(dump_config(config), end="")
        return
    run_pipeline(config, evaluate=not args.no_evaluate)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help=COMMANDS["run"].help, description=__doc__)
    parser.add_argument("--show", action="store_true", help="print the effective config and stop")
    parser.add_argument("--no-evaluate", action="store_true", help="stop after writing the distilled set")
    add_config_flags(parser, *BINDINGS)
    parser.set_defaults(func=cmd_run)
