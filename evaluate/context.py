"""What one evaluation works on: the sets read for scoring and the state the run builds up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsdistill.core.config import EvalConfig
from rsdistill.data.dataset import ImageArray, SceneDataset
from rsdistill.data.imageset import read_image_set
from rsdistill.evaluate.scoring import Draw, Score, Scorer, fixed
from rsdistill.evaluate.teacher import FullReference


@dataclass
class EvalSet:
    """A set read for evaluation, with what the report says about it."""

    name: str
    path: Path
    method: str
    images: np.ndarray
    labels: np.ndarray
    records: list[dict[str, Any]]
    per_class: dict[str, int]
    storage_bytes: int

    @property
    def uneven(self) -> bool:
        return len(set(self.per_class.values())) > 1

    @property
    def ipc(self) -> int:
        """Images per class (the rounded mean for an uneven set, which the report labels)."""
        return round(len(self.labels) / len(self.per_class))

    @property
    def texts(self) -> list[str]:
        return [str(r.get("text") or "") for r in self.records]


def set_name(path: Path) -> str:
    """A set's name in a report: its folder's, or for a stage's ``set/`` folder the stage's (``refine``)."""
    return path.parent.name if path.name == "set" and path.parent.name else path.name


def set_method(records: list[dict[str, Any]], fallback: str) -> str:
    """What made a set, from its metadata: a coreset's method, or how a distilled set was sampled and whether it
    was refined (``distilled (prototype guidance) + refined``); `fallback` when the records do not say."""
    methods = {str(r["method"]) for r in records if r.get("method")}
    guidance = {str(r["guidance"]) for r in records if r.get("guidance")}
    if len(methods) == 1:
        method = methods.pop()
    elif len(guidance) == 1:
        method = f"distilled ({guidance.pop()} guidance)"
    else:
        method = fallback
    return f"{method} + refined" if any(r.get("refined") for r in records) else method


def load_set(path: str | Path, dataset: SceneDataset, resolution: int) -> EvalSet:
    """Reads a set in the common format at `resolution` (class names and images checked)."""
    image_set = read_image_set(path, dataset.classes, resolution=resolution)
    path = Path(path)
    return EvalSet(
        name=set_name(path),
        path=path,
        method=set_method(image_set.records, set_name(path)),
        images=image_set.images,
        labels=image_set.labels,
        records=image_set.records,
        per_class=image_set.per_class(),
        storage_bytes=image_set.storage_bytes(),
    )


@dataclass
class Evaluation:
    """The state of one evaluation run (what `evaluate_sets` builds up)."""

    dataset: SceneDataset
    config: EvalConfig
    scorer: Scorer
    train: ImageArray
    full: FullReference | None = None
    reference: FullReference | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return list(range(self.config.runs))

    def training_draw(self, images: np.ndarray, labels: np.ndarray) -> Draw:
        if self.config.train_on == "set":
            return fixed(images, labels)
        real = np.asarray(self.train.images)
        return fixed(np.concatenate([real, images]), np.concatenate([self.train.labels, labels]))

    def accuracy_row(self, score: Score) -> dict[str, Any]:
        row: dict[str, Any] = {"accuracy": {k: getattr(score, k) for k in ("mean", "std", "runs", "seeds")},
                               "n_train": score.n_train,
                               "timing": {k: getattr(score, k) for k in ("train_s", "test_s", "compile_s", "wall_s")}}
        if self.full is not None:
            row["ratio_to_full"] = score.mean / self.full.accuracy
        return row
