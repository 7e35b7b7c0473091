"""Loads an export of `rsdistill export` back with `datasets` and checks that it discloses no real train image.

Reads the export the way its card says (``load_dataset(OUT)``, and the format's own loader), prints its rows,
features and image size, then searches every column value and the bytes of every file of the export for the
key and the file name of every train image of the dataset the set was made from. Exits 1 on any hit.

    RSDISTILL_DATA=../shared/datasets python scripts/check_export.py shared/eurosat-ipc10 --dataset eurosat
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import datasets

from rsdistill.data.sources import load_dataset


def loaders(out: Path, cache: str) -> dict[str, Any]:
    """Every way the export's format is read: the folder itself, and the format's own loader."""
    data = out / "data"
    found: dict[str, Any] = {"load_dataset(OUT)": lambda: datasets.load_dataset(str(out), split="train",
                                                                                 cache_dir=cache)}
    if list(data.glob("*.parquet")) and not list(data.glob("*/*.png")):
        found["load_dataset('parquet', ...)"] = lambda: datasets.load_dataset(
            "parquet", data_files=str(data / "*.parquet"), split="train", cache_dir=cache)
    elif (data / "dataset_info.json").is_file():
        found = {"load_from_disk(OUT/data)": lambda: datasets.load_from_disk(str(data))}
    else:
        found["load_dataset('imagefolder', ...)"] = lambda: datasets.load_dataset(
            "imagefolder", data_dir=str(data), split="train", cache_dir=cache)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", type=Path, help="the folder `rsdistill export` wrote")
    parser.add_argument("--dataset", required=True, help="the dataset the set was made from")
    parser.add_argument("--data_root", default=os.environ.get("RSDISTILL_DATA"))
    parser.add_argument("--split_file", help="the run's split file, when it used one")
    args = parser.parse_args()
    dataset = load_dataset(args.dataset, root=args.data_root, split_file=args.split_file)
    names = {sample.key for sample in dataset.train} | {Path(sample.key).name for sample in dataset.train}
    hits: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as cache:
        for how, load in loaders(args.export, cache).items():
            loaded = load()
            first = loaded[0]
            print(f"{how}: {len(loaded)} rows, columns {loaded.column_names}, label {loaded.features['label']}, "
                  f"image {first['image'].size}, ipc {first['ipc']}")
            values = [str(v) for row in loaded.remove_columns("image") for v in row.values()]
            hits += [(how, name) for value in values for name in names if name in value]
    for path in sorted(p for p in args.export.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits += [(str(path), name) for name in names if name.encode() in data]
    print(f"{len(names)} train keys and file names searched in every column and every file: {len(hits)} found")
    for where, name in hits[:20]:
        print(f"  {name} in {where}")
    sys.exit(1 if hits else 0)


if __name__ == "__main__":
    main()
