"""`rsdistill xbd info`: what an xBD spec yields, class by class, and what bad input it met."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rsdistill.cli.common import COMMANDS
from rsdistill.data.xbd import load_xbd_dataset
from rsdistill.data.xbd_spec import parse_spec


def cmd_xbd_info(args: argparse.Namespace) -> None:
    spec = args.spec if args.spec.startswith("xbd:") else f"xbd:{args.spec}"
    path, _ = parse_spec(spec)
    split_file = Path(args.split_file) if args.split_file else None
    dataset = load_xbd_dataset(path, spec, split_seed=args.split_seed, split_file=split_file)
    options = dataset.options
    print(f"dataset   {dataset.name}")
    print(f"location  {dataset.location}")
    print(f"mode      {options.mode}; patch {options.patch_size or 'tile size'}px, margin {options.margin}, "
          f"min window {options.min_window}px, pair {options.pair}")
    print(f"split     {dataset.split_origin}")
    for split in ("train", "test"):
        infos = [dataset.metadata[s.key] for s in dataset.samples(split)]
        disasters = sorted({info.disaster for info in infos})
        print(f"{split:<9} {len(infos)} samples, {len({i.tile for i in infos})} tiles, "
              f"{len(disasters)} disaster(s): {', '.join(disasters)}")
    train, test = dataset.class_counts("train"), dataset.class_counts("test")
    width = max(len(name) for name in [*dataset.classes, "class"])
    print(f"\n{'class':<{width}}  {'train':>6}  {'test':>6}")
    for name in dataset.classes:
        print(f"{name:<{width}}  {train[name]:>6}  {test[name]:>6}")
    lines = dataset.report.lines(args.examples)
    print("\nbad input: " + ("none" if not lines else ""))
    for line in lines:
        print(f"  {line}")


def register(subparsers: Any) -> None:
    """Adds `rsdistill xbd info`."""
    xbd = subparsers.add_parser("xbd", help=COMMANDS["xbd"].help)
    actions = xbd.add_subparsers(dest="xbd_command", required=True, metavar="ACTION")
    info = actions.add_parser("info", help="counts per class and split, tiles and events, bad input by kind")
    info.add_argument("spec", help="xbd:<path>[?mode=damage&patch=64&margin=0.25&pair=post&split=tile"
                      "&test=0.2]")
    info.add_argument("--split-seed", "--split_seed", dest="split_seed", type=int, default=0)
    info.add_argument("--split-file", "--split_file", dest="split_file")
    info.add_argument("--examples", type=int, default=3, help="named examples per kind of bad input")
    info.set_defaults(func=cmd_xbd_info)
