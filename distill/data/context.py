"""The run context every stage runner takes first: the dataset, how its images are prepared, device and seed."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rsdistill.core.config import RunConfig
from rsdistill.data.dataset import ImageArray, SceneDataset
from rsdistill.data.imagery import Imagery
from rsdistill.data.sources import load_dataset

RUN_SPLIT_FILE = "split-test.txt"  # a run folder's generated split (rsdistill run, export, benchmark)


@dataclass(frozen=True)
class RunContext:
    """What one run shares between its stages.

    Every stage runner is called as ``runner(context, config, out, ...)``: `context` says which data, at which
    size, on which device and seed; `config` is the stage's own section of :class:`RunConfig`; `out` is the
    stage folder; the rest are the folders of earlier stages it reads.

    Attributes:
        dataset: The dataset and its train/test split.
        resolution: Side the images are decoded at, for every stage (``data.resolution``).
        cache_dir: Decoded-image cache folder (None: ``$RSDISTILL_CACHE``).
        on_bad_image: ``stop`` or ``skip`` for an unreadable image.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        seed: The run's seed.
        overwrite: Whether a stage may replace a finished folder of its own made with other settings (``rsdistill
            run``: yes; a single-stage command: only with ``--overwrite``). A folder that is not a stage of ours
            is never replaced.
    """

    dataset: SceneDataset
    resolution: int
    cache_dir: str | None
    on_bad_image: str
    device: str
    seed: int
    overwrite: bool = True

    @classmethod
    def from_config(cls, dataset: SceneDataset, config: RunConfig | None = None) -> RunContext:
        """The context of `config` (defaults: those of :class:`RunConfig`) over an already loaded `dataset`."""
        config = config or RunConfig()
        data = config.data
        return cls(dataset, data.resolution, data.cache_dir, data.on_bad_image, config.device, config.seed)

    @classmethod
    def of(cls, dataset: SceneDataset, **settings: Any) -> RunContext:
        """The context over `dataset` with :class:`RunConfig`'s defaults, changed by `settings` (any field)."""
        return replace(cls.from_config(dataset), **settings)

    @classmethod
    def load(cls, config: RunConfig, default_split_file: str | Path | None = None) -> RunContext:
        """Loads the dataset `config.data` names and returns its context; a generated split is read from or
        written to `data.split_file`, else `default_split_file` (e.g. the run folder's), else the cache's."""
        data = config.data
        imagery = Imagery(data.bands, data.stretch)  # checks the settings before the dataset is read
        dataset = load_dataset(data.dataset, root=data.data_root, split_file=data.split_file or default_split_file,
                               split_seed=data.split_seed, test_fraction=data.test_fraction)
        if not imagery.default:
            dataset = dataset.with_imagery(imagery)
        return cls.from_config(dataset, config)

    def images(self, split: str) -> ImageArray:
        """The decoded images of `split` at the context's resolution (cached after the first call)."""
        return self.dataset.images(split, self.resolution, cache_dir=self.cache_dir, on_bad_image=self.on_bad_image)
