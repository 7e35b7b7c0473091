"""`rsdistill edit --model ID_OR_FOLDER --out DIR`: edited copies of real train images through InstructPix2Pix,
under instructions from the dataset's list or a file (one a line), written as a set with each image's
instruction and source recorded."""

from __future__ import annotations

import argparse

from rsdistill.cli.common import COMMANDS, add_config_flags, add_overwrite_flag, context_from_args


def cmd_edit(args: argparse.Namespace) -> None:
    from rsdistill.synthesis.edit import EditOptions, edit_images, read_instructions

    instructions = tuple(read_instructions(args.instructions)) if args.instructions else ()
    _, context = context_from_args(args)
    options = EditOptions(model=args.model, instructions=instructions, per_class=args.per_class, steps=args.steps,
                          guidance=args.guidance, image_guidance=args.image_guidance, batch_size=args.batch_size)
    print(f"edited set: {edit_images(context, options, args.out)}")


def register(subparsers: argparse._SubParsersAction) -> None:
    from rsdistill.synthesis.edit import EditOptions

    defaults = EditOptions()
    parser = subparsers.add_parser("edit", help=COMMANDS["edit"].help, description=__doc__)
    parser.add_argument("--model", default=defaults.model, help="InstructPix2Pix pipeline: a Hugging Face hub id "
                        f"or a local folder (default {defaults.model})")
    parser.add_argument("--out", required=True, help="the set folder to write")
    parser.add_argument("--instructions", help="a text file with one instruction a line (default: the dataset's "
                        "list, e.g. 'make it winter', 'add haze', 'make it dusk' for scene data)")
    parser.add_argument("--per-class", "--per_class", dest="per_class", type=int, default=defaults.per_class,
                        help=f"train images edited per class (default {defaults.per_class})")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help=f"denoising steps (default {defaults.steps})")
    parser.add_argument("--guidance", type=float, default=defaults.guidance,
                        help=f"text guidance scale (default {defaults.guidance:g})")
    parser.add_argument("--image-guidance", "--image_guidance", dest="image_guidance", type=float,
                        default=defaults.image_guidance,
                        help="image guidance scale, higher keeps more of the source "
                        f"(default {defaults.image_guidance:g})")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=defaults.batch_size,
                        help=f"images per pipeline call (default {defaults.batch_size})")
    add_overwrite_flag(parser, "a set of ours")
    add_config_flags(parser, "seed", "device", "data")
    parser.set_defaults(func=cmd_edit)
