"""Fixtures shared by the evaluation tests: a tiny fake dataset, sets written from it, tiny protocols."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from rsdistill.data.dataset import SceneDataset
from rsdistill.data.imageset import write_image_set
from rsdistill.data.sources import load_dataset
from rsdistill.evaluate.protocol import Protocol

MakeFolder = Callable[..., Path]  # the make_imagefolder fixture of conftest.py
RESOLUTION = 16
TINY = Protocol(resolution=RESOLUTION, steps=4, batch_size=8, precision="fp32")


def fake_dataset(make_imagefolder: MakeFolder, per_class: int = 10, test_per_class: int = 4) -> SceneDataset:
    root = make_imagefolder({"forest": per_class, "lake": per_class, "town": per_class}, size=24,
                            test_per_class=test_per_class)
    return load_dataset(f"imagefolder:{root}")


def set_from_train(dataset: SceneDataset, out: Path, per_class: int, seed: int = 0,
                   records: bool = False) -> Path:
    """A set of `per_class` real train images per class (a random coreset), in the common format."""
    train = dataset.images("train", RESOLUTION)
    rng = np.random.default_rng(seed)
    index = np.concatenate([rng.choice(np.flatnonzero(train.labels == c), per_class, replace=False)
                            for c in range(len(dataset.classes))])
    extra = [{"method": "random", "source_key": train.keys[i]} for i in index] if records else None
    return write_image_set(out, np.asarray(train.images[index]), train.labels[index], dataset.classes, records=extra)
