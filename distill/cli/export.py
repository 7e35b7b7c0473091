"""`rsdistill export SET_OR_RUN --out DIR`: a distilled set as a Hugging Face dataset (ClassLabel labels, prompt,
IPC) with its dataset card, nothing in it that names a real train image, after a privacy verdict that it passes
(or --allow-unsafe). SET_OR_RUN is a set folder or a run folder (its refined set, else its synthesized set, and
its report). A run knows its dataset; for a set on its own, give --dataset to measure the verdict."""

from __future__ import annotations

import argparse

from rsdistill.cli.common import COMMANDS, add_config_flags, config_from_args
from rsdistill.export.hfdata import FORMATS
from rsdistill.export.thresholds import Thresholds

# The settings the verdict reads: the dataset, the device, how the attack's classifier trains, the near-copy space.
BINDINGS = ("device", "data", "evaluation.model", "evaluation.steps", "evaluation.precision", "evaluation.compile",
            "evaluation.mia_samples", "synthesis.near_copy_space")


def dataset_given(args: argparse.Namespace) -> bool:
    """Whether the command line names the dataset (a flag, an override or a config file)."""
    return (args.config is not None or "data.dataset" in vars(args)
            or any(word.startswith("data.dataset=") for word in args.overrides))


def cmd_export(args: argparse.Namespace) -> None:
    from rsdistill.data.context import RunContext
    from rsdistill.export.export import ExportOptions, export_set
    from rsdistill.export.source import CONFIG_FILE, resolve_source

    source = resolve_source(args.source)
    if source.run_dir is not None and args.config is None:
        args.config = str(source.run_dir / CONFIG_FILE)
    context = None
    config = config_from_args(args)
    if dataset_given(args):
        context = RunContext.load(config, source.split_file())
    options = ExportOptions(
        format=args.format, license=args.license, source_license=args.source_license,
        allow_unsafe=args.allow_unsafe,
        thresholds=Thresholds(args.near_copy_percentile, args.max_attack_auc),
        push_to_hub=args.push_to_hub, private=args.private, evaluation=config.evaluation,
        near_copy_space=config.synthesis.near_copy_space,
    )
    export_set(context, options, args.out, source)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help=COMMANDS["export"].help, description=__doc__)
    parser.add_argument("source", metavar="SET_OR_RUN", help="a set folder, or a run folder (rsdistill run)")
    parser.add_argument("--out", required=True, help="the export folder (must not exist, or be empty)")
    parser.add_argument("--format", choices=FORMATS, default="imagefolder",
                        help="imagefolder (PNG files + metadata.parquet), parquet, or arrow (save_to_disk, for "
                        "load_from_disk); default imagefolder")
    parser.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", metavar="REPO_ID",
                        help="also upload the export to this Hugging Face dataset repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--license", default="unknown", help="license of the exported set, a Hub license id "
                        "(e.g. cc-by-4.0, mit); default unknown")
    parser.add_argument("--source-license", "--source_license", dest="source_license",
                        help="the source dataset's license as you know it, written on the card")
    parser.add_argument("--allow-unsafe", "--allow_unsafe", dest="allow_unsafe", action="store_true",
                        help="export a set that fails its privacy verdict, or has none (the card says so)")
    defaults = Thresholds()
    parser.add_argument("--near-copy-percentile", "--near_copy_percentile", dest="near_copy_percentile", type=float,
                        default=defaults.near_copy_percentile,
                        help="a set image fails when nearer a train image than this percentile of the test "
                        f"images' distances to theirs (default {defaults.near_copy_percentile:g})")
    parser.add_argument("--max-attack-auc", "--max_attack_auc", dest="max_attack_auc", type=float,
                        default=defaults.max_attack_auc,
                        help=f"highest membership-attack AUC allowed (default {defaults.max_attack_auc:g})")
    add_config_flags(parser, *BINDINGS)
    parser.set_defaults(func=cmd_export)
