"""`rsdistill evaluate SET... --dataset NAME --out REPORT_DIR`: score sets by docs/benchmark.md (or a labelled
variant), next to the baselines, with realism and privacy metrics, in one report.

The report folder is a stage: the same sets scored by the same settings are not scored again, and an
interrupted evaluation resumes from the training runs it finished. Several processes share the runs:
``accelerate launch -m rsdistill evaluate ...`` (docs/scaling.md)."""

from __future__ import annotations

import argparse

from rsdistill.cli.common import COMMANDS, add_config_flags, add_overwrite_flag, context_from_args


def cmd_evaluate(args: argparse.Namespace) -> None:
    from rsdistill.core.distributed import processes
    from rsdistill.evaluate.evaluation import evaluate_sets
    from rsdistill.evaluate.report import markdown

    config, context = context_from_args(args)
    report = evaluate_sets(context, config.evaluation, args.out, args.sets)
    if not processes(context.device).is_main:
        return
    print(markdown(report))
    print(f"wrote {args.out}/report.json and report.md")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help=COMMANDS["evaluate"].help, description=__doc__)
    parser.add_argument("sets", nargs="*", metavar="SET", help="set folders in the common format")
    parser.add_argument("--out", required=True, help="report folder (report.json, report.md, pictures)")
    add_overwrite_flag(parser, "a report made with other settings or sets")
    add_config_flags(parser, "device", "data", "evaluation")
    parser.set_defaults(func=cmd_evaluate)
