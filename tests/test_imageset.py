from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rsdistill.core.errors import RSDistillError
from rsdistill.data.imageset import read_image_set, write_image_set

CLASSES = ["forest", "lake", "town"]


def make_set(folder: Path, per_class: list[int]) -> Path:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(per_class)), per_class)
    images = rng.integers(0, 255, size=(len(labels), 16, 16, 3), dtype=np.uint8)
    records = [{"source_key": f"k{i}"} for i in range(len(labels))]
    return write_image_set(folder, images, labels, CLASSES, records)


def test_roundtrip_and_hf_imagefolder(tmp_path: Path) -> None:
    path = make_set(tmp_path / "set", [2, 2, 2])
    loaded = read_image_set(path, CLASSES)
    assert loaded.images.shape == (6, 16, 16, 3) and loaded.per_class() == {"forest": 2, "lake": 2, "town": 2}
    assert not loaded.uneven and loaded.records[0]["source_key"] == "k0"
    import datasets

    hf = datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
    assert len(hf) == 6 and set(hf["label"]) == set(CLASSES) and "source_key" in hf.column_names


def test_mismatched_classes_are_listed(tmp_path: Path) -> None:
    path = make_set(tmp_path / "set", [1, 1, 1])
    with pytest.raises(RSDistillError, match=r"not in the dataset: town.*missing from the set: river"):
        read_image_set(path, ["forest", "lake", "river"])


def test_uneven_set_and_unreadable_image(tmp_path: Path) -> None:
    path = make_set(tmp_path / "set", [2, 1, 1])
    assert read_image_set(path, CLASSES).uneven
    first = json.loads((path / "metadata.jsonl").read_text().splitlines()[0])["file_name"]
    (path / first).write_bytes(b"broken")
    with pytest.raises(RSDistillError, match=first.split("/")[1]):
        read_image_set(path, CLASSES)


def test_set_without_metadata(tmp_path: Path) -> None:
    (tmp_path / "forest").mkdir()
    with pytest.raises(RSDistillError, match=r"no metadata.jsonl"):
        read_image_set(tmp_path, CLASSES)
