"""`rsdistill generate`: the distilled set from a diffusion bundle, prototypes and prompts.

Several GPUs: ``accelerate launch -m rsdistill generate ...`` (each process takes a share of prototypes).
"""

from __future__ import annotations

import argparse

from rsdistill.cli.common import COMMANDS, add_config_arguments, add_data_arguments, config_from_args, dataset_from_args
from rsdistill.core.artifacts import overwrite_stages
from rsdistill.core.config import SynthesisConfig
from rsdistill.generator.sampling import GUIDANCE_MODES, SCHEDULERS
from rsdistill.synthesis.near_copy import DEFAULT_SPACE
from rsdistill.synthesis.synthesize import PROTOTYPE_TARGETS, SELECTIONS, synthesize

HELP = {
    "guidance": "prototype (DPD: pull the clean-latent estimate toward the prototype early on), img2img "
    "(D4M: start from the noised prototype) or none (prompt only)",
    "scheduler": "sampling scheduler built from the bundle's scheduler config",
    "num_inference_steps": "denoising steps",
    "guidance_scale": "classifier-free guidance scale (<= 1: no unconditional pass)",
    "prototype_fraction": "share of the steps, from the start, with the prototype pull (guidance prototype)",
    "prototype_strength": "share of the gap from the clean-latent estimate to the prototype closed per step",
    "prototype_target": "the prototype latent: its representative image's, or the mean of its members'",
    "img2img_strength": "share of the schedule run from the noised prototype (guidance img2img)",
    "candidates": "candidates drawn per prototype; the latent classifier keeps the best",
    "selection": "candidate score: target-logit margin or target probability",
    "batch_size": "images per sampling batch",
    "near_copy_space": f"feature space of the nearest-real-image search ({DEFAULT_SPACE} or a prototypes "
    "encoder spec such as efficientnet-lite0)",
    "near_copy_threshold": "distance (1 - cosine) below which an image is flagged as a near copy",
    "reject_near_copies": "pass over near-copy candidates (next-best candidate, else new seeds)",
}
CHOICES = {
    "guidance": GUIDANCE_MODES,
    "scheduler": tuple(SCHEDULERS),
    "selection": SELECTIONS,
    "prototype_target": PROTOTYPE_TARGETS,
}


def add_synthesis_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `SynthesisConfig` field (``--name`` and ``--name-with-dashes``), defaults from it."""
    add_config_arguments(parser.add_argument_group("synthesis"), SynthesisConfig, HELP, CHOICES)


def cmd_generate(args: argparse.Namespace) -> None:
    dataset = dataset_from_args(args)
    with overwrite_stages(args.overwrite):
        set_dir = synthesize(
            args.generator,
            args.prototypes,
            args.prompts,
            dataset,
            config_from_args(SynthesisConfig, args),
            args.out,
            seed=args.seed,
            ipc=args.ipc,
            device=args.device,
            data_resolution=args.resolution,
            cache_dir=args.cache_dir,
            class_labels_value=args.class_labels_value,
        )
    print(f"distilled set: {set_dir}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help=COMMANDS["generate"].help,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--generator", required=True, help="diffusion bundle folder (or hub id)")
    parser.add_argument("--prototypes", help="prototypes stage folder (needed unless --guidance none)")
    parser.add_argument(
        "--prompts", help="captions stage folder with prompts.json (default: 'a satellite image of <class>')"
    )
    parser.add_argument(
        "--ipc", type=int, help="images per class; a prototypes file with another IPC is refused"
    )
    parser.add_argument("--out", required=True, help="stage folder to write (the set goes to OUT/set)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds a finished stage made "
                        "with other settings (a folder holding files rsdistill did not write is never deleted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--class_labels_value",
        "--class-labels-value",
        dest="class_labels_value",
        type=int,
        help="class_labels value for a UNet that requires them (default: the bundle's)",
    )
    add_synthesis_arguments(parser)
    add_data_arguments(parser)
    parser.set_defaults(func=cmd_generate)
