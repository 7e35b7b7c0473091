"""`rsdistill generate`: the distilled set from a diffusion bundle (or a GAN stage folder), prototypes and prompts.

Several GPUs: ``accelerate launch -m rsdistill generate ...`` (each process takes a share of prototypes).
"""

from __future__ import annotations

import argparse

from rsdistill.cli.common import COMMANDS, add_config_flags, add_overwrite_flag, context_from_args


def cmd_generate(args: argparse.Namespace) -> None:
    from rsdistill.synthesis.gan_synthesis import is_gan_folder, synthesize_gan
    from rsdistill.synthesis.synthesize import synthesize

    config, context = context_from_args(args)
    if is_gan_folder(args.generator):
        set_dir = synthesize_gan(context, config.synthesis, config.generator, args.out, args.generator,
                                 args.prototypes, ipc=args.ipc)
    else:
        set_dir = synthesize(context, config.synthesis, args.out, args.generator, args.prototypes, args.prompts,
                             ipc=args.ipc, class_labels_value=config.generator.class_labels_value)
    print(f"distilled set: {set_dir}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help=COMMANDS["generate"].help,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--generator", required=True,
                        help="diffusion bundle folder (or hub id), or a GAN stage folder (shared/<dataset>/gan-*)")
    parser.add_argument("--prototypes", help="prototypes stage folder (needed unless --guidance none)")
    parser.add_argument(
        "--prompts", help="captions stage folder with prompts.json (default: 'a satellite image of <class>')"
    )
    parser.add_argument("--ipc", type=int, help="images per class; a prototypes file with another IPC is refused")
    parser.add_argument("--out", required=True, help="stage folder to write (the set goes to OUT/set)")
    add_overwrite_flag(parser)
    add_config_flags(parser, "seed", "device", "data", "synthesis", "generator.class_labels_value",
                     "generator.gan_prototype_spread", "generator.gan_inversion_steps")
    parser.set_defaults(func=cmd_generate)
