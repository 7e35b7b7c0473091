"""What every `rsdistill` sub-command shares: the command table and the flags that bind to config fields."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

from rsdistill.data.dataset import SceneDataset
from rsdistill.data.sources import load_dataset


class Command(NamedTuple):
    """A sub-command: the module that defines it (through `register(subparsers)`) and its one-line help."""

    module: str
    help: str


# Only the module of the command being run is imported: `rsdistill --help`, `data` and `config` start without
# torch, and a command pays only for the libraries it uses.
COMMANDS: dict[str, Command] = {
    "xbd": Command("rsdistill.cli.xbd", "xBD building-damage data: classes, split, bad input"),
    "prototypes": Command("rsdistill.cli.prototypes", "per-class k-means prototypes (stage 2)"),
    "coreset": Command("rsdistill.cli.prototypes", "coreset baseline (random, herding, kcenter, kmeans)"),
    "caption": Command("rsdistill.cli.caption", "caption the train split and aggregate prompts (stage 3)"),
    "generator": Command("rsdistill.cli.generator", "build a diffusion bundle or its latent classifier"),
    "finetune": Command("rsdistill.cli.generator", "train a bundle's UNet (LoRA or full) on the train split"),
    "generate": Command("rsdistill.cli.synthesis", "generate the distilled set (stage 5)"),
    "refine": Command("rsdistill.cli.refine", "refine a set by distribution matching (stage 5b)"),
    "evaluate": Command("rsdistill.cli.evaluate", "score sets by downstream training, with baselines and metrics"),
    "run": Command("rsdistill.cli.run", "run every stage from one config (skips done stages, resumes)"),
}


def add_data_arguments(parser: argparse.ArgumentParser, dataset_required: bool = True) -> None:
    """Flags every data-reading command shares."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", required=dataset_required, help="eurosat, ucmerced, resisc45, aid, "
                       "imagefolder:<path>, hf:<id or folder>, xbd:<path>")
    group.add_argument("--data-root", "--data_root", dest="data_root", help="folder holding the named datasets "
                       "(default: $RSDISTILL_DATA, then ~/.cache/rsdistill/datasets)")
    group.add_argument("--resolution", type=int, default=64, help="square image size (default 64)")
    group.add_argument("--cache-dir", "--cache_dir", dest="cache_dir", help="decoded-image cache folder")
    group.add_argument("--on-bad-image", "--on_bad_image", dest="on_bad_image", choices=("stop", "skip"),
                       default="stop", help="what to do with an unreadable image (default: stop and name it)")
    group.add_argument("--split-seed", "--split_seed", dest="split_seed", type=int, default=0)
    group.add_argument("--split-file", "--split_file", dest="split_file",
                       help="where a generated split is read or written (roots without test.txt)")


def add_config_arguments(
    group: argparse._ArgumentGroup,
    config_class: type,
    help: dict[str, str],
    choices: dict[str, Sequence[str]] | None = None,
) -> None:
    """One flag per field of the dataclass `config_class` (``--name`` and ``--name-with-dashes``), with its
    defaults; a bool field gets ``--name`` / ``--no-name``."""
    defaults = config_class()
    for field in dataclasses.fields(config_class):
        flags = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            group.add_argument(*flags, dest=field.name, action=argparse.BooleanOptionalAction, default=default,
                               help=help[field.name])
            continue
        group.add_argument(*flags, dest=field.name, type=type(default), default=default,
                           choices=(choices or {}).get(field.name), help=f"{help[field.name]} (default {default})")


def config_from_args(config_class: type, args: argparse.Namespace) -> Any:
    """The dataclass `config_class` built from the flags `add_config_arguments` added."""
    return config_class(**{field.name: getattr(args, field.name) for field in dataclasses.fields(config_class)})


def dataset_from_args(args: argparse.Namespace) -> SceneDataset:
    return load_dataset(args.dataset, root=args.data_root, split_file=args.split_file, split_seed=args.split_seed)
