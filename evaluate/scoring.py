"""Scoring a training set by the protocol: several seeded runs, top-1 on the whole real test split."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.runtime import resolve_device
from rsdistill.data.dataset import ImageArray, SceneDataset, cache_folder
from rsdistill.evaluate.protocol import Normalizer, Protocol, Trainer, to_uint8_tensor

# A training set for one run: uint8 (N, H, W, 3) images and int64 labels.
Draw = Callable[[int], tuple[np.ndarray, np.ndarray]]


@dataclass
class Run:
    """One seeded training run: its test accuracy (percent), the set's size, its seconds and its model."""

    seed: int
    accuracy: float
    n_train: int
    train_s: float
    test_s: float
    compile_s: float
    model: nn.Module | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        """What a report keeps of the run (the model aside)."""
        return {key: getattr(self, key) for key in ("seed", "accuracy", "n_train", "train_s", "test_s", "compile_s")}


@dataclass
class Score:
    """Accuracy of one training set over seeded runs (percent, population std)."""

    mean: float
    std: float
    runs: list[float]
    seeds: list[int]
    n_train: int
    protocol: dict[str, Any]
    protocol_label: str
    train_s: list[float]
    test_s: list[float]
    compile_s: float
    wall_s: float
    first_model: nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        keys = ("mean", "std", "runs", "seeds", "n_train", "protocol", "protocol_label", "train_s", "test_s",
                "compile_s", "wall_s")
        return {key: getattr(self, key) for key in keys}


def train_stats(
    dataset: SceneDataset, resolution: int, cache_dir: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the real train split in [0, 1] units, cached beside the decoded images.

    Same values as :func:`rsdistill.data.dataset.normalization_stats`, accumulated in float64 a chunk at a time so
    large splits do not need a float64 copy of every pixel.
    """
    path = cache_folder(dataset, cache_dir) / f"train-{resolution}px-stats.json"
    if path.is_file():
        stats = json.loads(path.read_text())
        return np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
    images = dataset.images("train", resolution, cache_dir=cache_dir).images
    total = np.zeros(3)
    squares = np.zeros(3)
    for start in range(0, len(images), 1024):
        chunk = np.asarray(images[start : start + 1024]).reshape(-1, 3).astype(np.float64) / 255.0
        total += chunk.sum(axis=0)
        squares += (chunk**2).sum(axis=0)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    write_text_atomic(path, json.dumps({"mean": mean.tolist(), "std": std.tolist()}))
    return mean.astype(np.float32), std.astype(np.float32)


class Scorer:
    """Scores training sets of one dataset by one protocol.

    The real test split and the normalisation live on the device once; the compiled training step is
    shared by every run.

    Args:
        test: The real test split at the protocol's resolution.
        num_classes: Number of classes.
        mean, std: The real train split's per-channel statistics (in [0, 1] units).
        protocol: How to train (docs/benchmark.md by default).
        device: ``auto``, ``cpu``, ``cuda``...
        compile: Use `torch.compile` for the training step.
        teacher: Full-data model for ``labels="soft"``.
    """

    def __init__(
        self,
        test: ImageArray,
        num_classes: int,
        mean: np.ndarray,
        std: np.ndarray,
        protocol: Protocol | None = None,
        device: str | torch.device = "auto",
        compile: bool = True,
        teacher: nn.Module | None = None,
    ) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.normalizer = Normalizer.from_stats(mean, std, self.device)
        self.trainer = Trainer(protocol or Protocol(), self.normalizer, self.device, compile=compile)
        self.protocol = self.trainer.protocol
        self.num_classes = num_classes
        self.test_images = to_uint8_tensor(np.asarray(test.images), self.device)
        self.test_labels = torch.as_tensor(np.asarray(test.labels), device=self.device)
        self.teacher = teacher
        self._compiled: set[int] = set()

    @classmethod
    def for_dataset(
        cls,
        dataset: SceneDataset,
        protocol: Protocol | None = None,
        cache_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> Scorer:
        """A scorer with the dataset's real test split and real train statistics at the protocol's resolution."""
        protocol = protocol or Protocol()
        mean, std = train_stats(dataset, protocol.resolution, cache_dir)
        test = dataset.images("test", protocol.resolution, cache_dir=cache_dir)
        return cls(test, len(dataset.classes), mean, std, protocol, **kwargs)

    def with_protocol(self, protocol: Protocol, teacher: nn.Module | None = None) -> Scorer:
        """A scorer for another protocol sharing this one's test split and normalisation on the device."""
        other = copy.copy(self)
        other.trainer = Trainer(protocol, self.normalizer, self.device, compile=self.trainer.compile)
        other.protocol = other.trainer.protocol
        other.teacher = teacher
        other._compiled = set()
        return other

    def warmup(self, n_train: int) -> float:
        """Compiles the training step for a set of `n_train` images, and the test forward, on random pixels
        with a throwaway model (nothing real is trained on); returns the seconds it took."""
        batch = min(self.protocol.batch_size, n_train)
        if not self.trainer.compile or batch in self._compiled:
            return 0.0
        start = time.perf_counter()
        side = self.protocol.resolution
        noise = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch, 3, side, side), generator=noise, dtype=torch.uint8).to(self.device)
        labels = torch.arange(batch, device=self.device) % self.num_classes
        warm = Trainer(replace(self.protocol, steps=1), self.normalizer, self.device, compile=False,
                       channels_last=self.trainer.channels_last)
        warm.loss_fn, warm.logits_fn = self.trainer.loss_fn, self.trainer.logits_fn
        model = warm.train(images, labels, self.num_classes, seed=0, teacher=self.teacher, desc="compiling")
        if not self._compiled:
            test_batch = min(len(self.test_images), 256)  # Trainer.predict's batch
            self.trainer.predict(model, images[torch.arange(test_batch, device=self.device) % batch])
        self._compiled.add(batch)
        return time.perf_counter() - start

    def train(self, images: np.ndarray, labels: np.ndarray, seed: int, desc: str = "training") -> nn.Module:
        """One classifier trained on uint8 (N, H, W, 3) `images` by the protocol."""
        return self.trainer.train(
            to_uint8_tensor(images, self.device),
            torch.as_tensor(labels, dtype=torch.int64, device=self.device),
            self.num_classes,
            seed,
            teacher=self.teacher,
            desc=desc,
        )

    def test_accuracy(self, model: nn.Module) -> float:
        return self.trainer.accuracy(model, self.test_images, self.test_labels)

    def score(self, draw: Draw, seeds: Sequence[int] = (0, 1, 2), desc: str = "set", keep_first: bool = False) -> Score:
        """Trains one classifier per seed on `draw(seed)` and tests each on the real test split.

        Args:
            draw: Returns the training set for a seed (the same set every time, or a fresh random draw).
            seeds: One run per seed.
            desc: Progress-bar text.
            keep_first: Keep the first run's model on the result (for the membership-inference attack).
        """
        start = time.perf_counter()
        runs = [self.run(draw, seed, f"{desc} run {i + 1}/{len(seeds)}") for i, seed in enumerate(seeds)]
        score = self.summary(runs, seeds, time.perf_counter() - start)
        score.first_model = runs[0].model if keep_first and runs else None
        return score

    def run(self, draw: Draw, seed: int, desc: str = "training") -> Run:
        """One seeded run: a classifier trained on `draw(seed)` and tested on the real test split."""
        images, labels = draw(seed)
        compile_s = self.warmup(len(images))
        t0 = time.perf_counter()
        model = self.train(images, labels, seed, desc=desc)
        t1 = time.perf_counter()
        accuracy = self.test_accuracy(model)
        return Run(seed, accuracy, len(images), t1 - t0, time.perf_counter() - t1, compile_s, model)

    def summary(self, runs: Sequence[Run], seeds: Sequence[int], wall_s: float) -> Score:
        """The score of `runs` (one per seed, in the order of `seeds`), by this scorer's protocol."""
        values = np.asarray([run.accuracy for run in runs])
        return Score(
            mean=float(values.mean()),
            std=float(values.std()),
            runs=[float(run.accuracy) for run in runs],
            seeds=list(seeds),
            n_train=runs[-1].n_train if runs else 0,
            protocol=self.protocol.to_dict(),
            protocol_label=self.protocol.label,
            train_s=[run.train_s for run in runs],
            test_s=[run.test_s for run in runs],
            compile_s=sum(run.compile_s for run in runs),
            wall_s=wall_s,
        )


def fixed(images: np.ndarray, labels: np.ndarray) -> Draw:
    """The same set for every run."""
    return lambda seed: (images, labels)


def random_subset_indices(labels: np.ndarray, per_class: int | dict[int, int], seed: int) -> np.ndarray:
    """`per_class` random indices of every class (an int, or a count per label), sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = per_class if isinstance(per_class, int) else per_class.get(int(label), 0)
        chosen.append(rng.choice(members, size=min(count, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def random_draw(train: ImageArray, per_class: int | dict[int, int]) -> Draw:
    """The `random` baseline: a fresh random subset of the real train split for every run (seeded)."""

    def draw(seed: int) -> tuple[np.ndarray, np.ndarray]:
        index = random_subset_indices(train.labels, per_class, seed)
        return np.asarray(train.images[index]), train.labels[index]

    return draw


def score_arrays(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test: ImageArray,
    num_classes: int,
    mean: np.ndarray,
    std: np.ndarray,
    protocol: Protocol | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    **kwargs: Any,
) -> Score:
    """Scores one fixed training set (uint8 (N, H, W, 3) images at the protocol's resolution).

    Args:
        train_images, train_labels: The set.
        test: The real test split at the same resolution.
        num_classes: Number of classes.
        mean, std: The real train split's per-channel statistics (:func:`train_stats`).
        protocol: docs/benchmark.md when omitted.
        seeds: One training run per seed.
        **kwargs: Passed to :class:`Scorer` (device, compile, teacher).
    """
    scorer = Scorer(test, num_classes, mean, std, protocol, **kwargs)
    return scorer.score(fixed(train_images, train_labels), seeds)
