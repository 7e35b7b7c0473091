"""The common set format: an ImageFolder with `metadata.jsonl` (Hugging Face `imagefolder` layout).

Every distilled set and every coreset baseline is written this way, so evaluation reads them alike and
``datasets.load_dataset("imagefolder", data_dir=...)`` opens them too. Each metadata line holds
``file_name`` (relative to the set folder), ``label`` (the class name), ``text`` (the prompt or caption,
empty for real images) and whatever produced the image (source key, prototype, seed, score...).

Names that become paths are checked (`rsdistill.core.atomic.safe_name`): a class name or file stem written
here, and every ``file_name`` read from a metadata file, must stay inside the set folder. An existing set
folder is replaced only when it is one of ours: nothing in it but `metadata.jsonl` and the files it lists.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from rsdistill.core.artifacts import files_under, refuse_unless_ours, shown
from rsdistill.core.atomic import safe_name, temporary_sibling
from rsdistill.core.errors import RSDistillError
from rsdistill.data.dataset import to_rgb_resized

METADATA = "metadata.jsonl"
RENAME_CLASS = (
    "Rename the class in the dataset (class names become folder names and must be plain names without '/', "
    "'\\' or '..')."
)


def safe_file_name(value: object, what: str) -> str:
    """Returns `value` when it is a relative path that stays inside its folder (``<Class>/<file>``), else
    refuses it: absolute paths, ``..`` or ``.`` parts, empty parts and backslashes are refused.

    Args:
        value: The path, POSIX-style (``/`` between parts).
        what: Where it came from, for the message (e.g. ``"/x/metadata.jsonl line 3: file_name"``).

    Raises:
        RSDistillError: Naming `value`, `what` and what to do.
    """
    remedy = "A set's file_name must be a path inside the set folder, such as <Class>/<file>.png; fix the line."
    if not isinstance(value, str) or value.startswith(("/", "\\")):
        raise RSDistillError(f"{what} {value!r} is not a relative path inside the set folder. {remedy}")
    for part in value.split("/"):
        safe_name(part, f"{what} {value!r}: its part", remedy)
    return value


def set_content_problem(out_dir: Path) -> str | None:
    """Why the existing folder `out_dir` is not a set this project wrote, or None when it is one (or holds
    no file). Ours: `metadata.jsonl` and nothing but the files it lists."""
    files = files_under(out_dir)
    if not files:
        return None
    if METADATA not in files:
        return f"is not an image set (no {METADATA}) and holds files rsdistill did not write ({shown(files)})"
    try:
        listed = {str(record["file_name"]) for record in read_records(out_dir)}
    except RSDistillError as error:
        return f"holds a {METADATA} rsdistill cannot read ({error})"
    extra = sorted(set(files) - listed - {METADATA})
    if extra:
        return f"holds {len(extra)} file(s) its {METADATA} does not list ({shown(extra)})"
    return None


def check_set_destination(out_dir: str | Path, overwrite: bool = True) -> None:
    """Refuses to replace what must not be replaced at `out_dir` (the ``--out`` of a set).

    Replaced: nothing there; an empty folder; a set of ours (see `set_content_problem`) when `overwrite`.
    Refused, even with `overwrite`: a file or link, a folder holding files its `metadata.jsonl` does not list.

    Args:
        out_dir: The set folder about to be written.
        overwrite: Whether an existing set of ours may be replaced (``--overwrite``).

    Raises:
        RSDistillError: Naming the folder, why it is kept and what to do.
    """
    out_dir = Path(out_dir)
    if not refuse_unless_ours(out_dir, set_content_problem):
        return
    if not overwrite and files_under(out_dir):
        raise RSDistillError(
            f"The output folder {out_dir} holds an image set already. Pass --overwrite to replace it, or choose "
            "another --out to keep it."
        )


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
        out_dir: The set folder (created; an existing one is replaced only once the new one is complete, and
            only when it is a set of ours -- see `check_set_destination`; anything else there is kept and the
            write refused).
        images: uint8 array (N, H, W, 3).
        labels: Class indices into `classes`, shape (N,).
        classes: Class names (folder names).
        records: Optional per-image metadata merged into each line.
        stems: Optional file stems; default `<class>_<index within class>`.

    Returns:
        The set folder.

    Raises:
        RSDistillError: When a class name or stem cannot be a file name (`safe_name`), when `out_dir` holds
            something that is not a set of ours, or when writing fails.
    """
    out_dir = Path(out_dir)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    for name in classes:
        safe_name(name, f"Class name of the set written to {out_dir}:", RENAME_CLASS)
    for stem in stems or []:
        safe_name(stem, f"File stem of the set written to {out_dir}:")
    check_set_destination(out_dir)
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
        check_set_destination(out_dir)  # again: the folder may have changed while the images were written
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except (OSError, RSDistillError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, RSDistillError):
            raise
        remedy = "Free space there" if error.errno == errno.ENOSPC else "Check that you may write there"
        where = f" ({error.filename})" if error.filename else ""
        raise RSDistillError(
            f"Could not write the image set {out_dir}: {error.strerror}{where}. {remedy} or choose another --out."
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
        if not isinstance(record, dict) or "file_name" not in record:
            raise RSDistillError(f"{path} line {number} has no file_name.")
        safe_file_name(record["file_name"], f"{path} line {number}: file_name")
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


def set_digest(set_dir: str | Path) -> str:
    """Hash of a set's metadata and image bytes: tells whether a record (a report, a verdict) is about this very
    set."""
    set_dir = Path(set_dir)
    if not set_dir.is_dir():
        raise RSDistillError(f"Image set {set_dir} does not exist.")
    records = read_records(set_dir)
    digest = hashlib.sha256((set_dir / METADATA).read_bytes())
    for record in records:
        image = set_dir / record["file_name"]
        if not image.is_file():
            raise RSDistillError(f"{set_dir / METADATA} lists {record['file_name']}, which is not in {set_dir}. "
                                 "Restore the image or remove its line.")
        digest.update(image.read_bytes())
    return digest.hexdigest()[:16]


def read_image_set(set_dir: str | Path, classes: list[str], resolution: int | None = None) -> ImageSet:
    """Reads a set in the common format, checking its classes against `classes`.

    Every image must lie inside `set_dir`: a ``file_name`` that is absolute or climbs out with ``..`` is
    refused (`read_records`). Links inside the set are followed; placing them there is the set owner's choice.

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
