"""The exported images and labels as a Hugging Face dataset, in one of three on-disk formats.

Every format holds the same columns: ``image``, ``label`` (a `ClassLabel` with the class names), ``text`` (the
prompt the image was generated from) and ``ipc`` (images per class of the set). Nothing else of the set's
metadata is copied: it names the real train images each image came from and resembles. The images are
re-encoded from their pixels (PNG, no text chunks) and renamed ``<Class>/synthetic-<index>.png``.

- ``imagefolder``: ``data/<Class>/synthetic-00000.png`` plus ``data/metadata.parquet``, whose schema carries the
  features, so ``load_dataset("imagefolder", data_dir="OUT/data")`` gives the `ClassLabel` back.
- ``parquet``: ``data/train-00000-of-00001.parquet`` with the images embedded.
- ``arrow``: ``data/`` as `Dataset.save_to_disk` writes it, for ``load_from_disk("OUT/data")``.

With the card's ``configs`` header, ``load_dataset("OUT")`` reads any of them (and so does the Hub).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from rsdistill.core.errors import RSDistillError

if TYPE_CHECKING:
    import datasets

FORMATS = ("imagefolder", "parquet", "arrow")
DATA_FOLDER = "data"
PARQUET_FILE = "train-00000-of-00001.parquet"
# Where `load_dataset(OUT)` finds the data of each format (the card's `configs` header).
DATA_FILES = {"imagefolder": f"{DATA_FOLDER}/**", "parquet": f"{DATA_FOLDER}/*.parquet",
              "arrow": f"{DATA_FOLDER}/*.arrow"}
# How the card tells a reader to load each format.
LOADERS = {
    "imagefolder": 'load_dataset("imagefolder", data_dir="{out}/data", split="train")',
    "parquet": 'load_dataset("parquet", data_files="{out}/data/*.parquet", split="train")',
    "arrow": 'load_from_disk("{out}/data")',
}


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise RSDistillError(f"Unknown export format {name!r} (--format); known: {', '.join(FORMATS)}.")
    return name


def features(classes: list[str]) -> datasets.Features:
    """The exported columns' features (`datasets` is imported here: it is slow to import)."""
    import datasets

    return datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=list(classes)),
        "text": datasets.Value("string"),
        "ipc": datasets.Value("int64"),
    })


def png_bytes(image: np.ndarray) -> bytes:
    """The pixels alone, as PNG (no metadata chunk of the original file survives)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def file_names(labels: np.ndarray, classes: list[str]) -> list[str]:
    """``<Class>/synthetic-<index>.png``, numbered in set order: names that say nothing of the source."""
    return [f"{classes[label]}/synthetic-{index:05d}.png" for index, label in enumerate(np.asarray(labels).tolist())]


def write_data(
    work: Path, fmt: str, images: np.ndarray, labels: np.ndarray, texts: list[str], classes: list[str], ipc: int
) -> Path:
    """Writes the dataset into ``work/data`` in format `fmt`; returns that folder.

    Args:
        work: The export folder being built (a temporary sibling of ``--out``).
        fmt: One of `FORMATS`.
        images: uint8 (N, H, W, 3).
        labels: Indices into `classes`, shape (N,).
        texts: The prompt of each image.
        classes: The class names, in `ClassLabel` order.
        ipc: Images per class of the set.
    """
    import datasets

    check_format(fmt)
    data = work / DATA_FOLDER
    data.mkdir(parents=True, exist_ok=True)
    names = file_names(labels, classes)
    columns = {"label": np.asarray(labels).tolist(), "text": list(texts), "ipc": [ipc] * len(names)}
    if fmt == "imagefolder":
        for name, image in zip(names, images, strict=True):
            (data / name).parent.mkdir(parents=True, exist_ok=True)
            (data / name).write_bytes(png_bytes(image))
        metadata = {key: value for key, value in features(classes).items() if key != "image"}
        table = datasets.Dataset.from_dict({"file_name": names, **columns},
                                           features=datasets.Features({"file_name": datasets.Value("string"),
                                                                       **metadata}))
        table.to_parquet(str(data / "metadata.parquet"))
        return data
    encoded = [{"bytes": png_bytes(image), "path": Path(name).name} for name, image in zip(names, images, strict=True)]
    dataset = datasets.Dataset.from_dict({"image": encoded, **columns}, features=features(classes))
    if fmt == "parquet":
        dataset.to_parquet(str(data / PARQUET_FILE))
    else:
        dataset.save_to_disk(str(data))
    return data
