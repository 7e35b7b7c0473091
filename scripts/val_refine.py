"""Chooses refinement settings on a validation split carved from train; the test split is never read.

The held-out share of train (stratified, the same split the latent classifier is validated on) is the test
set here; the real images matched against are the rest of train. Each variant refines the given set, is
trained on by the docs/benchmark.md protocol and tested on the held-out images, next to the unrefined set and a
random coreset drawn from the non-held-out images.

    python scripts/val_refine.py runs/eurosat-ipc10/synthesis/set --dataset eurosat \
        --variant iterations=150 --variant iterations=300,width=64 --seeds 0 --json val.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from rsdistill.core.config import RefineConfig
from rsdistill.data.dataset import ImageArray, SceneDataset, stratified_holdout
from rsdistill.data.sources import load_dataset
from rsdistill.evaluate.context import load_set
from rsdistill.evaluate.scoring import Scorer, fixed, random_draw, train_stats
from rsdistill.synthesis.refine import refine_images


def parse_variant(text: str) -> RefineConfig:
    """`iterations=150,width=64` -> the default RefineConfig with those fields replaced."""
    kinds = {field.name: type(getattr(RefineConfig(), field.name)) for field in fields(RefineConfig)}
    pairs = dict(item.split("=", 1) for item in text.split(",") if item)
    unknown = sorted(set(pairs) - set(kinds))
    if unknown:
        raise SystemExit(f"unknown refine setting(s) {unknown}; known: {sorted(kinds)}")
    return replace(RefineConfig(), **{k: kinds[k](v) if kinds[k] is not bool else v == "true"
                                      for k, v in pairs.items()})


def validation_split(name: str, data_root: str | None, resolution: int,
                     val_fraction: float) -> tuple[SceneDataset, ImageArray, Scorer]:
    """The dataset, the train images kept for matching and a scorer on the held-out share of train."""
    dataset = load_dataset(name, root=data_root)
    train = dataset.images("train", resolution)
    kept, held = stratified_holdout(train.labels, val_fraction, 0)
    mean, std = train_stats(dataset, resolution, None)
    return dataset, train.subset(kept), Scorer(train.subset(held), len(dataset.classes), mean, std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set_dir")
    parser.add_argument("--dataset", default="eurosat")
    parser.add_argument("--data_root", default=os.environ.get("RSDISTILL_DATA"))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--variant", action="append", default=[], help="refine settings, e.g. iterations=150")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no_baselines", action="store_true", help="score only the variants")
    args = parser.parse_args()

    dataset, matched, scorer = validation_split(args.dataset, args.data_root, args.resolution, args.val_fraction)
    image_set = load_set(args.set_dir, dataset, args.resolution)
    rows: list[dict[str, Any]] = []

    def score(name: str, draw: Any, **extra: Any) -> None:
        result = scorer.score(draw, seeds=args.seeds, desc=name).to_dict()
        rows.append({"name": name, "val_accuracy": result, **extra})
        print(json.dumps(rows[-1], default=str), flush=True)

    if not args.no_baselines:
        score("random", random_draw(matched, image_set.ipc))
        score("unrefined", fixed(image_set.images, image_set.labels))
    for text in args.variant:
        config = parse_variant(text)
        start = time.perf_counter()
        images, report = refine_images(image_set.images, image_set.labels, matched,
                                       len(dataset.classes), config, seed=0, progress=True)
        score(text, fixed(images, image_set.labels), refine=report, refine_s=time.perf_counter() - start)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "torch_threads": torch.get_num_threads(),
                                         "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
