"""The prototypes stage folder: `prototypes.json`, `centroids.npy`, `representatives.npy` (CONTRACTS.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.errors import RSDistillError

PROTOTYPES_FILE = "prototypes.json"
CENTROIDS_FILE = "centroids.npy"
REPRESENTATIVES_FILE = "representatives.npy"


@dataclass
class Prototype:
    """One cluster of one class and its representative train image (JSON key ``class`` is `class_name`)."""

    id: str
    class_name: str
    label: int
    cluster: int
    source_key: str
    cluster_size: int
    members: list[str]
    member_distances: list[float]
    score: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "class": self.class_name,
            "label": self.label,
            "cluster": self.cluster,
            "source_key": self.source_key,
            "cluster_size": self.cluster_size,
            "members": self.members,
            "member_distances": self.member_distances,
            "score": self.score,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Prototype:
        fields = dict(data)
        fields["class_name"] = fields.pop("class")
        return cls(**fields)


@dataclass
class PrototypeSet:
    """A prototypes folder: `centroids[i]` and `representatives[i]` belong to `prototypes[i]`."""

    dataset: str
    dataset_fingerprint: str
    ipc: int
    encoder: str
    rule: str
    alpha: float
    seed: int
    resolution: int
    classes: list[str]
    prototypes: list[Prototype]
    centroids: np.ndarray = field(repr=False)
    representatives: np.ndarray = field(repr=False)
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "dataset_fingerprint": self.dataset_fingerprint,
            "ipc": self.ipc,
            "encoder": self.encoder,
            "rule": self.rule,
            "alpha": self.alpha,
            "seed": self.seed,
            "resolution": self.resolution,
            "classes": self.classes,
            "prototypes": [p.to_json() for p in self.prototypes],
        }

    def of_class(self, name: str) -> list[Prototype]:
        return [p for p in self.prototypes if p.class_name == name]

    def save(self, folder: str | Path) -> Path:
        """Writes the three files into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / CENTROIDS_FILE, np.asarray(self.centroids, dtype=np.float32))
        np.save(folder / REPRESENTATIVES_FILE, np.asarray(self.representatives, dtype=np.float32))
        write_text_atomic(folder / PROTOTYPES_FILE, json.dumps(self.to_json(), indent=1) + "\n")
        return folder


def load_prototypes(folder: str | Path) -> PrototypeSet:
    """Reads a prototypes folder (a stage folder or one written by ``rsdistill prototypes --out``)."""
    folder = Path(folder)
    path = folder / PROTOTYPES_FILE
    if not path.is_file():
        raise RSDistillError(f"{folder} holds no {PROTOTYPES_FILE}; run `rsdistill prototypes` to make one.")
    try:
        data = json.loads(path.read_text())
        prototypes = [Prototype.from_json(p) for p in data.pop("prototypes")]
        centroids = np.load(folder / CENTROIDS_FILE)
        representatives = np.load(folder / REPRESENTATIVES_FILE)
        result = PrototypeSet(
            **data, prototypes=prototypes, centroids=centroids, representatives=representatives, path=folder
        )
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise RSDistillError(f"{path} is not a valid prototypes file ({error}); make it again.") from None
    except (OSError, ValueError) as error:
        raise RSDistillError(f"Cannot read the arrays of {folder} ({error}); make the prototypes again.") from None
    if len(centroids) != len(prototypes) or len(representatives) != len(prototypes):
        raise RSDistillError(f"{folder}: the .npy arrays do not have one row per prototype; make it again.")
    return result
