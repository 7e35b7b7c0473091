"""The `rsdistill` command line: one sub-command per stage, each defined next to its stage."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

from distill.config import dump_config, load_config
from distill.data import SceneDataset, cache_state, image_sizes, load_dataset, resolve_data_root
from distill.errors import RSDistillError


class Command(NamedTuple):
    """A sub-command: the module that defines it (through `register(subparsers)`) and its one-line help."""

    module: str
    help: str


# Only the module of the command being run is imported: `rsdistill --help`, `data` and `config` start without
# torch, and a command pays only for the libraries it uses.
COMMANDS: dict[str, Command] = {
    "xbd": Command("distill.xbd", "xBD building-damage data: classes, split, bad input"),
    "prototypes": Command("prototypes.cli", "per-class k-means prototypes (stage 2)"),
    "coreset": Command("prototypes.cli", "coreset baseline (random, herding, kcenter, kmeans)"),
    "caption": Command("captioning.cli", "caption the train split and aggregate prompts (stage 3)"),
    "generator": Command("distill.generator_cli", "build a diffusion bundle or its latent classifier"),
    "finetune": Command("distill.generator_cli", "train a bundle's UNet (LoRA or full) on the train split"),
    "generate": Command("distill.synthesis_cli", "generate the distilled set (stage 5)"),
    "refine": Command("distill.refine_cli", "refine a set by distribution matching (stage 5b)"),
    "evaluate": Command("evaluate.cli", "score sets by downstream training, with baselines and metrics"),
    "run": Command("distill.pipeline_cli", "run every stage from one config (skips done stages, resumes)"),
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


def cmd_data_info(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.name, root=args.data_root, split_file=args.split_file, split_seed=args.split_seed)
    train, test = dataset.class_counts("train"), dataset.class_counts("test")
    print(f"dataset   {dataset.name}")
    print(f"location  {dataset.location}")
    print(f"split     {dataset.split_origin}")
    print(f"classes   {len(dataset.classes)}")
    print(f"train     {len(dataset.train)}")
    print(f"test      {len(dataset.test)}")
    width = max(len(name) for name in dataset.classes)
    print(f"\n{'class':<{width}}  {'train':>6}  {'test':>6}")
    for name in dataset.classes:
        print(f"{name:<{width}}  {train[name]:>6}  {test[name]:>6}")
    sizes = image_sizes(dataset, "train", limit=args.size_sample)
    shown = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(5))
    print(f"\nimage sizes (first {sum(sizes.values())} train images): {shown}")
    state = cache_state(dataset, args.resolution, args.cache_dir)
    shown_state = ", ".join(f"{split} {'decoded' if done else 'not decoded'}" for split, done in state.items())
    print(f"cache at {args.resolution}px: {shown_state}")


def cmd_data_download(args: argparse.Namespace) -> None:
    from distill.data import NAMED_DATASETS
    from distill.hf_source import _load, export_imagefolder

    if args.name not in NAMED_DATASETS:
        raise RSDistillError(f"No public copy is known for {args.name!r}; known: {', '.join(NAMED_DATASETS)}.")
    named = NAMED_DATASETS[args.name]
    data_root, _ = resolve_data_root(args.data_root)
    out = data_root / named.folder
    if out.exists():
        raise RSDistillError(f"{out} exists already; remove it to download again.")
    export_imagefolder(_load(named.hub_id), out)
    print(f"wrote {out}")


def cmd_config_show(args: argparse.Namespace) -> None:
    print(dump_config(load_config(args.config, args.overrides)), end="")


def requested_command(argv: Sequence[str]) -> str | None:
    """The sub-command `argv` runs: its first word that names one (None for e.g. ``--help`` alone)."""
    return next((word for word in argv if word in COMMANDS), None)


def build_parser(only: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The `rsdistill` parser. Sub-commands outside `only` (None: all of them) are listed with their help but
    not defined, so their modules are not imported (a module defining one of `only` defines its siblings)."""
    parser = argparse.ArgumentParser(prog="rsdistill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect or fetch datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    info = data_commands.add_parser("info", help="classes, counts per split, image sizes, cache state")
    info.add_argument("name", help="dataset spec, e.g. eurosat or imagefolder:/data/scenes")
    info.add_argument("--data-root", "--data_root", dest="data_root")
    info.add_argument("--resolution", type=int, default=64)
    info.add_argument("--cache-dir", "--cache_dir", dest="cache_dir")
    info.add_argument("--split-seed", "--split_seed", dest="split_seed", type=int, default=0)
    info.add_argument("--split-file", "--split_file", dest="split_file")
    info.add_argument("--size-sample", type=int, default=2000, help="images whose headers are read for sizes")
    info.set_defaults(func=cmd_data_info)
    download = data_commands.add_parser("download", help="fetch a named dataset from its public copy")
    download.add_argument("name")
    download.add_argument("--data-root", "--data_root", dest="data_root")
    download.set_defaults(func=cmd_data_download)

    config = commands.add_parser("config", help="show the effective run config")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser("show", help="print the config after the YAML file and overrides")
    show.add_argument("--config", help="YAML run config")
    show.add_argument("overrides", nargs="*", metavar="section.key=value")
    show.set_defaults(func=cmd_config_show)

    modules = {spec.module for name, spec in COMMANDS.items() if only is None or name in only}
    registered: set[str] = set()
    for name, spec in COMMANDS.items():
        if spec.module not in modules:
            commands.add_parser(name, help=spec.help)
        elif spec.module not in registered:
            importlib.import_module(spec.module).register(commands)
            registered.add(spec.module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = requested_command(argv)
    parser = build_parser([command] if command else [])
    args, unknown = parser.parse_known_args(argv)
    # `section.key=value` overrides may stand anywhere among a command's flags.
    overrides = [text for text in unknown if "=" in text and not text.startswith("-")]
    if len(overrides) < len(unknown) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides = [*(args.overrides or []), *overrides]
    try:
        args.func(args)
    except RSDistillError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
