"""The common set format: an ImageFolder with `metadata.jsonl` (Hugging Face `imagefolder` layout).

Every distilled set and every coreset baseline is written this way, so evaluation reads them alike and
``datasets.load_dataset("imagefolder", data_dir=...)`` opens them too. Each metadata line holds
``file_name`` (relative to the set folder), ``label`` (the class name), ``text`` (the prompt or caption,
empty for real images) and whatever produced the image (source key, prototype, seed, score...).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from rsdistill.core.atomic import temporary_sibling
from rsdistill.core.errors import RSDistillError
from rsdistill.data.dataset import to_rgb_resized

METADATA = "metadata.jsonl"


@dataclass
class ImageSet:
    """A set read from disk: images (uint8, N x H x W x 3), labels indexing `classes`, metadata lines."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    records: list[dict[str, Any]]
    path: Path

    def per_class(self) -> dict[str, int]:
        counts = Counter(self.labels.tolist())
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    @property
    def uneven(self) -> bool:
        return len(set(self.per_class().values())) > 1

    def storage_bytes(self) -> int:
        return sum((self.path / record["file_name"]).stat().st_size for record in self.records)


def write_image_set(
    out_dir: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    records: list[dict[str, Any]] | None = None,
    stems: list[str] | None = None,
) -> Path:
    """Writes images as PNG files under `<out_dir>/<Class>/` plus `metadata.jsonl`.

    Args:
        out_dir: The set folder (created; an existing one is replaced only once the new one is complete).
        images: uint8 array (N, H, W, 3).
        labels: Class indices into `classes`, shape (N,).
        classes: Class names (folder names).
        records: Optional per-image metadata merged into each line.
        stems: Optional file stems; default `<class>_<index within class>`.

    Returns:
        The set folder.
    """
    out_dir = Path(out_dir)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    tmp = temporary_sibling(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    counters: Counter[int] = Counter()
    lines = []
    try:
        for index, (image, label) in enumerate(zip(images, np.asarray(labels).tolist(), strict=True)):
            name = classes[label]
            stem = stems[index] if stems else f"{name}_{counters[label]:04d}"
            counters[label] += 1
            file_name = f"{name}/{stem}.png"
            (tmp / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(tmp / file_name, optimize=False, compress_level=6)
            line = {"file_name": file_name, "label": name, "text": ""}
            line.update(records[index] if records else {})
            lines.append(json.dumps(line, default=str))
        (tmp / METADATA).write_text("\n".join(lines) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RSDistillError(
            f"Could not write the image set {out_dir}: {error.strerror}. Free space there or choose another --out."
        ) from None
    return out_dir


def read_records(set_dir: Path) -> list[dict[str, Any]]:
    path = set_dir / METADATA
    if not path.is_file():
        raise RSDistillError(
            f"{set_dir} is not an image set: it has no {METADATA}. A set is <dir>/<Class>/<image> plus "
            f"{METADATA} with file_name and label per line (rsdistill coreset / generate write one)."
        )
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise RSDistillError(f"{path} line {number} is not valid JSON.") from None
        if "file_name" not in record:
            raise RSDistillError(f"{path} line {number} has no file_name.")
        record.setdefault("label", record["file_name"].split("/", 1)[0])
        records.append(record)
    return records


def check_class_names(set_classes: set[str], classes: list[str], where: Path) -> None:
    """Refuses a set whose class names are not the dataset's, listing the differences."""
    unknown = sorted(set_classes - set(classes))
    absent = sorted(set(classes) - set_classes)
    if unknown or absent:
        parts = []
        if unknown:
            parts.append(f"not in the dataset: {', '.join(unknown)}")
        if absent:
            parts.append(f"missing from the set: {', '.join(absent)}")
        raise RSDistillError(f"Class names of {where} do not match the dataset ({'; '.join(parts)}).")


def read_image_set(set_dir: str | Path, classes: list[str], resolution: int | None = None) -> ImageSet:
    """Reads a set in the common format, checking its classes against `classes`.

    Args:
        set_dir: The set folder.
        classes: The dataset's class names; labels are mapped onto this order.
        resolution: If given, images are resized (bicubic, antialiased) to this square size.
    """
    set_dir = Path(set_dir)
    if not set_dir.is_dir():
        raise RSDistillError(f"Image set {set_dir} does not exist.")
    records = read_records(set_dir)
    if not records:
        raise RSDistillError(f"Image set {set_dir} is empty ({METADATA} lists no images).")
    check_class_names({str(r["label"]) for r in records}, classes, set_dir)
    index = {name: i for i, name in enumerate(classes)}
    arrays = []
    for record in records:
        path = set_dir / record["file_name"]
        try:
            with Image.open(path) as image:
                image.load()
                if resolution is None:
                    arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
                else:
                    arrays.append(to_rgb_resized(image, resolution))
        except (OSError, UnidentifiedImageError) as error:
            raise RSDistillError(f"Cannot read image {path} of set {set_dir}: {error}. Replace or remove it.") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise RSDistillError(f"Images of {set_dir} differ in size ({sorted(shapes)}); pass a resolution to read it.")
    labels = np.asarray([index[str(r["label"])] for r in records], dtype=np.int64)
    return ImageSet(np.stack(arrays), labels, list(classes), records, set_dir)


def sample_grid(images: np.ndarray, labels: np.ndarray, num_classes: int, columns: int = 10) -> np.ndarray:
    """One row per class with its first `columns` images (black where a class has fewer), 2 px gaps."""
    size = images.shape[1]
    cell = size + 2
    grid = np.zeros((num_classes * cell + 2, columns * cell + 2, 3), dtype=np.uint8)
    for label in range(num_classes):
        for column, index in enumerate(np.flatnonzero(labels == label)[:columns]):
            y, x = 2 + label * cell, 2 + column * cell
            grid[y : y + size, x : x + size] = images[index]
    return grid
