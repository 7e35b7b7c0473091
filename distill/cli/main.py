"""The `rsdistill` command line: one sub-command per stage, each defined in its own module of this package."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence

from rsdistill.cli.common import COMMANDS, split_overrides
from rsdistill.core.config import dump_config, load_config
from rsdistill.core.errors import RSDistillError, out_of_space, out_of_space_message
from rsdistill.data.dataset import NAMED_DATASETS, cache_state, image_sizes, resolve_data_root
from rsdistill.data.hf import export_imagefolder, load_hf
from rsdistill.data.sources import load_dataset


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
    if args.name not in NAMED_DATASETS:
        raise RSDistillError(f"No public copy is known for {args.name!r}; known: {', '.join(NAMED_DATASETS)}.")
    named = NAMED_DATASETS[args.name]
    data_root, _ = resolve_data_root(args.data_root)
    out = data_root / named.folder
    if out.exists():
        raise RSDistillError(f"{out} exists already; remove it to download again.")
    export_imagefolder(load_hf(named.hub_id), out)
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
    show.set_defaults(func=cmd_config_show, overrides=[])

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
    argv, overrides = split_overrides(argv)
    command = requested_command(argv)
    parser = build_parser([command] if command else [])
    args = parser.parse_args(argv)
    if overrides:
        if not hasattr(args, "overrides"):
            parser.error(f"`{args.command}` takes no section.key=value settings: {' '.join(overrides)}")
        args.overrides = overrides
    try:
        args.func(args)
    except RSDistillError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume.", file=sys.stderr)
        return 130
    except Exception as error:
        full, path = out_of_space(error)
        if not full:
            raise
        remedy = ("move the output (--out) or RSDISTILL_CACHE to a larger disk, and run the same command again: "
                  "finished stages are kept")
        print(f"error: {out_of_space_message(path or 'its output', remedy)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
