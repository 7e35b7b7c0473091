"""Datasets, splits and the decoded-image cache (the dataset specs are read by :mod:`rsdistill.data.sources`).

The data root is taken from the ``root`` argument (``--data-root``), then ``$RSDISTILL_DATA``, then
``~/.cache/rsdistill/datasets``. A root holding ``test.txt`` uses that split; otherwise a stratified split
with a fixed seed is made once and written down with the list of files it was made from (``<split
file>.files.json``), so later runs read the same one; when the images change (added, removed or renamed), the
split is made again, with a warning.

Images that are not 8-bit RGB or grey (16-bit, float, multi-band GeoTIFF) are turned into 8-bit RGB by the
dataset's ``data.bands`` and ``data.stretch`` settings (:mod:`rsdistill.data.imagery`); 8-bit images are
decoded exactly as before. An image over Pillow's decompression-bomb limit is a bad image, like an unreadable
one (``--on-bad-image``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from rsdistill.core.atomic import safe_name, save_npy_atomic, write_text_atomic
from rsdistill.core.errors import RSDistillError
from rsdistill.data.imagery import (
    EIGHT_BIT_MODES,
    TIFF_SUFFIXES,
    Imagery,
    Limits,
    as_bands,
    percentile_limits,
    pixel_sample,
    pixels_of,
    read_tiff,
    tiff_is_plain,
    to_bytes,
)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
SPLITS = ("train", "test")
# What a bad image raises while it is opened and decoded (tifffile's errors are ValueErrors).
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
STRETCH_IMAGES = 256  # train images the percentile stretch is computed from (spread over the split)
STRETCH_PIXELS = 4096  # pixels taken from each of them


@dataclass(frozen=True)
class NamedDataset:
    """A dataset the toolkit knows by name: its folder under the data root and a public copy."""

    name: str
    folder: str
    num_classes: int
    hub_id: str


NAMED_DATASETS: dict[str, NamedDataset] = {
    "eurosat": NamedDataset("eurosat", "eurosat", 10, "blanchon/EuroSAT_RGB"),
    "ucmerced": NamedDataset("ucmerced", "ucmerced", 21, "blanchon/UC_Merced"),
    "resisc45": NamedDataset("resisc45", "resisc45", 45, "timm/resisc45"),
    "aid": NamedDataset("aid", "aid", 30, "blanchon/AID"),
}


@dataclass(frozen=True)
class Sample:
    """One labelled image: `key` is `<Class>/<file>` for folders (the `test.txt` form)."""

    key: str
    label: int


@dataclass
class ImageArray:
    """Decoded images of one split at one resolution, with their labels and keys."""

    images: np.ndarray  # uint8, (N, H, W, 3)
    labels: np.ndarray  # int64, (N,)
    keys: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageArray:
        indices = np.asarray(indices, dtype=np.int64)
        return ImageArray(self.images[indices], self.labels[indices], [self.keys[i] for i in indices])


def default_cache_root() -> Path:
    """Where decoded images, splits and downloads are cached (`$RSDISTILL_CACHE` or ~/.cache/rsdistill)."""
    return Path(os.environ.get("RSDISTILL_CACHE", Path.home() / ".cache" / "rsdistill"))


def resolve_data_root(root: str | Path | None = None) -> tuple[Path, str]:
    """The data root and where it came from: the flag, then $RSDISTILL_DATA, then the cache folder."""
    if root is not None:
        return Path(root).expanduser(), "--data-root"
    if os.environ.get("RSDISTILL_DATA"):
        return Path(os.environ["RSDISTILL_DATA"]).expanduser(), "$RSDISTILL_DATA"
    return default_cache_root() / "datasets", "the default cache folder"


class ImageSource:
    """Opens the images of a dataset by sample key."""

    def open(self, key: str) -> Image.Image:
        raise NotImplementedError

    def describe(self, key: str) -> str:
        return key

    def plain(self, key: str) -> bool:
        """Whether the image may be read as 8-bit through Pillow (False: read its stored values, `raster`)."""
        return True

    def raster(self, key: str) -> np.ndarray:
        """The image's stored values, (H, W, bands) of any dtype."""
        with self.open(key) as image:
            return as_bands(pixels_of(image), self.describe(key))


class FolderSource(ImageSource):
    """Images stored as files under `<root>/<Class>/<file>`; TIFFs that are not 8-bit RGB are read with
    tifffile."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, key: str) -> Image.Image:
        return Image.open(self.root / key)

    def describe(self, key: str) -> str:
        return str(self.root / key)

    def plain(self, key: str) -> bool:
        path = self.root / key
        return path.suffix.lower() not in TIFF_SUFFIXES or tiff_is_plain(path)

    def raster(self, key: str) -> np.ndarray:
        path = self.root / key
        if path.suffix.lower() in TIFF_SUFFIXES:
            return as_bands(read_tiff(path), str(path))
        return super().raster(key)


@dataclass
class SceneDataset:
    """A labelled dataset with a fixed train/test split.

    Attributes:
        name: The spec it was loaded from (``eurosat``, ``imagefolder:/data/x``...).
        classes: Class names, sorted; a sample's label indexes this list.
        train: Train samples. No stage trains on anything else.
        test: Test samples, used only for scoring.
        source: Opens an image by key.
        split_origin: How the split was obtained, for reports.
        location: The folder (or source id) the images come from.
        imagery: How images beyond 8-bit RGB become RGB (``data.bands``, ``data.stretch``).
    """

    name: str
    classes: list[str]
    train: list[Sample]
    test: list[Sample]
    source: ImageSource
    split_origin: str
    location: str
    imagery: Imagery = field(default_factory=Imagery)

    def samples(self, split: str) -> list[Sample]:
        if split not in SPLITS:
            raise RSDistillError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
        return self.train if split == "train" else self.test

    def class_counts(self, split: str) -> dict[str, int]:
        counts = Counter(sample.label for sample in self.samples(split))
        return {name: counts.get(index, 0) for index, name in enumerate(self.classes)}

    @property
    def fingerprint(self) -> str:
        """Changes whenever the classes, the split, the location or the imagery settings (when not the
        defaults) change."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.name, self.location, self.classes]).encode())
        if not self.imagery.default:
            digest.update(self.imagery.key.encode())
        for split in SPLITS:
            for sample in self.samples(split):
                digest.update(f"{split}\t{sample.key}\t{sample.label}\n".encode())
        return digest.hexdigest()[:16]

    def test_keys(self) -> set[str]:
        return {sample.key for sample in self.test}

    def with_imagery(self, imagery: Imagery) -> SceneDataset:
        """The same dataset read with other ``data.bands`` / ``data.stretch`` settings."""
        return replace(self, imagery=imagery)

    def images(
        self,
        split: str,
        resolution: int,
        cache_dir: str | Path | None = None,
        on_bad_image: str = "stop",
    ) -> ImageArray:
        """Decoded RGB images of a split, resized to `resolution`, cached after the first call."""
        return load_images(self, split, resolution, cache_dir=cache_dir, on_bad_image=on_bad_image)


def class_folders(root: Path) -> list[str]:
    """Sorted class folder names under `root` (hidden folders ignored)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (key, label) pairs of an ImageFolder root; refuses empty class folders."""
    classes = class_folders(root)
    if not classes:
        raise RSDistillError(
            f"{root} holds no class folders. An image dataset here is laid out as {root}/<Class>/<image>."
        )
    entries: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        safe_name(name, f"Class folder name under {root}:", "Rename the folder (class names become folder names).")
        files = sorted(
            p.name
            for p in (root / name).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            raise RSDistillError(
                f"Class folder {root / name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}). "
                "Add its images or remove the empty folder."
            )
        entries.extend((f"{name}/{file}", label) for file in files)
    return classes, entries


def read_test_list(path: Path, entries: list[tuple[str, int]], classes: list[str], root: Path) -> set[str]:
    """Reads a `test.txt` (or a written split) and checks it against the images on disk under `root`."""
    keys = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    known = {key for key, _ in entries}
    missing = [key for key in keys if key not in known]
    if missing:
        raise RSDistillError(
            f"{path} names {len(missing)} file(s) that do not exist under {root}, "
            f"e.g. {', '.join(missing[:3])}. Fix the list or restore the files."
        )
    test = set(keys)
    per_class = Counter(key.split("/", 1)[0] for key in test)
    absent = [name for name in classes if per_class[name] == 0]
    if absent:
        raise RSDistillError(
            f"{path} has no test images for class(es) {', '.join(absent)}. Every class needs test images: "
            "add lines `<Class>/<file>` for them, or delete test.txt to get a stratified split."
        )
    return test


def stratified_test_keys(entries: list[tuple[str, int]], fraction: float, seed: int) -> set[str]:
    """A fixed-seed stratified choice of test keys: `fraction` of every class, at least one."""
    rng = random.Random(seed)
    by_class: dict[int, list[str]] = {}
    for key, label in entries:
        by_class.setdefault(label, []).append(key)
    test: set[str] = set()
    for label in sorted(by_class):
        keys = sorted(by_class[label])
        if len(keys) < 2:
            raise RSDistillError(
                f"Class folder {keys[0].split('/')[0]} has a single image: a split needs at least two per class."
            )
        count = min(len(keys) - 1, max(1, round(fraction * len(keys))))
        test.update(rng.sample(keys, count))
    return test


def split_file_for(location: str, seed: int, fraction: float) -> Path:
    tag = hashlib.sha256(f"{location}|{seed}|{fraction}".encode()).hexdigest()[:12]
    return default_cache_root() / "splits" / f"{Path(location).name}-{tag}-test.txt"


def split_files_path(split_file: Path) -> Path:
    """Where the list of files a written split was made from is kept."""
    return split_file.with_name(split_file.name + ".files.json")


def write_split_files(split_file: Path, entries: list[tuple[str, int]]) -> None:
    """Records the files (`<Class>/<file>`) a split was made from beside it."""
    write_text_atomic(split_files_path(split_file), json.dumps({"files": sorted(key for key, _ in entries)}))


def split_still_fits(split_file: Path, entries: list[tuple[str, int]], root: Path) -> bool:
    """Whether the split written in `split_file` was made from the images now under `root`; when not, says so
    (it is made again). A split written before the file list was kept is taken as it is when every file it
    names exists, and its list is recorded now."""
    now = sorted(key for key, _ in entries)
    record_path = split_files_path(split_file)
    try:
        made_from = json.loads(record_path.read_text())["files"] if record_path.is_file() else None
    except (json.JSONDecodeError, KeyError, TypeError):
        made_from = []
    if made_from is None:  # only the test files it names are known
        listed = {line.strip() for line in split_file.read_text().splitlines() if line.strip()}
        if listed <= set(now):
            write_split_files(split_file, entries)
            return True
        made_from = sorted(listed | set(now))
    if made_from == now:
        return True
    added, removed = sorted(set(now) - set(made_from)), sorted(set(made_from) - set(now))
    tqdm.write(
        f"warning: the images under {root} changed since the split {split_file} was made ({len(added)} added"
        f"{': ' + shown_keys(added) if added else ''}; {len(removed)} removed"
        f"{': ' + shown_keys(removed) if removed else ''}); making a new split. Stages made from the old split "
        "are made again.", file=sys.stderr
    )
    return False


def shown_keys(keys: list[str], count: int = 3) -> str:
    """The first `count` of `keys`, for a message."""
    return ", ".join(keys[:count]) + (f" and {len(keys) - count} more" if len(keys) > count else "")


def load_folder_dataset(
    root: Path,
    name: str,
    split_file: Path | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.2,
) -> SceneDataset:
    """An ImageFolder dataset, split by its `test.txt`, by `split_file`, or by a new stratified split."""
    if not root.is_dir():
        raise RSDistillError(f"Dataset folder {root} does not exist.")
    classes, entries = list_folder(root)
    if (root / "test.txt").is_file():
        test = read_test_list(root / "test.txt", entries, classes, root)
        origin = f"{root / 'test.txt'}"
    else:
        split_file = split_file or split_file_for(str(root.resolve()), split_seed, test_fraction)
        if split_file.is_file() and split_still_fits(split_file, entries, root):
            test = read_test_list(split_file, entries, classes, root)
            origin = f"{split_file} (written earlier)"
        else:
            test = stratified_test_keys(entries, test_fraction, split_seed)
            write_text_atomic(split_file, "".join(f"{key}\n" for key in sorted(test)))
            write_split_files(split_file, entries)
            origin = f"{split_file} (stratified, seed {split_seed}, {test_fraction:.0%} test, new)"
    train = [Sample(key, label) for key, label in entries if key not in test]
    test_samples = [Sample(key, label) for key, label in entries if key in test]
    missing = sorted(set(classes) - {classes[sample.label] for sample in train})
    if missing:
        raise RSDistillError(f"Class(es) {', '.join(missing)} have no train images left after the split in {root}.")
    return SceneDataset(name, classes, train, test_samples, FolderSource(root), origin, str(root))


def to_rgb_resized(image: Image.Image, resolution: int) -> np.ndarray:
    """RGB uint8 array at `resolution` x `resolution`, bicubic with antialiasing (BENCHMARK.md).

    Only for 8-bit images: Pillow's ``convert("RGB")`` clips 16-bit and float values. `RGBReader` reads any
    image.
    """
    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


class RGBReader:
    """Reads one image of a source as 8-bit RGB at a resolution, by the dataset's imagery settings.

    An 8-bit image without ``data.bands`` goes through Pillow as it always did; any other image is read as its
    stored values and turned into RGB bytes (:mod:`rsdistill.data.imagery`). The stretch limits are asked
    for (`limits`) only when an image needs them.
    """

    def __init__(self, imagery: Imagery, limits: Callable[[], Limits]) -> None:
        self.imagery = imagery
        self._limits = limits
        self.known: Limits | None = None

    def limits(self) -> Limits:
        """The stretch limits, computed on first use."""
        if self.known is None:
            self.known = self._limits()
        return self.known

    def rgb(self, source: ImageSource, key: str) -> np.ndarray:
        """The image at `key` as 8-bit RGB (H, W, 3) at its own size."""
        where = source.describe(key)
        return to_bytes(self.imagery.rgb_bands(source.raster(key), where), self.limits, where)

    def __call__(self, source: ImageSource, key: str, resolution: int) -> np.ndarray:
        if self.imagery.bands is None and source.plain(key):
            with source.open(key) as image:
                image.load()
                if image.mode in EIGHT_BIT_MODES:
                    return to_rgb_resized(image, resolution)
        return to_rgb_resized(Image.fromarray(self.rgb(source, key)), resolution)


def fixed_limits(imagery: Imagery) -> Limits:
    """The limits of ``data.stretch=range:MIN,MAX``.

    Raises:
        RSDistillError: For a percentile stretch, whose limits come from the train split (`stretch_limits`).
    """
    kind, low, high = imagery.stretch_rule()
    if kind != "range":
        raise RSDistillError(f"data.stretch={imagery.stretch} is computed on a dataset's train split.")
    return Limits((low, low, low), (high, high, high))


def decode(
    source: ImageSource,
    keys: Sequence[str],
    resolution: int,
    reader: RGBReader,
    on_bad_image: str = "stop",
    desc: str = "decoding",
) -> tuple[np.ndarray, list[int]]:
    """Decodes images; returns the array and the indices that decoded (bad ones skipped or refused).

    Args:
        source: Where the images are.
        keys: Which.
        resolution: Side of the decoded images.
        reader: How an image becomes RGB (a dataset's: `dataset_reader`).
        on_bad_image: ``stop`` (name the image) or ``skip`` it.
        desc: Progress bar label.
    """
    if on_bad_image not in ("stop", "skip"):
        raise RSDistillError(f"data.on_bad_image must be 'stop' or 'skip', not {on_bad_image!r}.")
    out = np.empty((len(keys), resolution, resolution, 3), dtype=np.uint8)
    kept: list[int] = []
    for index, key in enumerate(tqdm(keys, desc=desc, unit="img", leave=False)):
        try:
            out[len(kept)] = reader(source, key, resolution)
        except UNREADABLE as error:
            if on_bad_image == "stop":
                raise RSDistillError(
                    f"Cannot read image {source.describe(key)}: {str(error).rstrip('.')}. Replace or delete the "
                    "file, or pass --on-bad-image skip (data.on_bad_image=skip) to leave unreadable images out."
                ) from None
            tqdm.write(f"skipping unreadable image {source.describe(key)}: {error}")
            continue
        kept.append(index)
    return out[: len(kept)], kept


def dataset_slug(name: str) -> str:
    """A dataset spec as one folder name (its last 40 characters, ``:`` and ``/`` as ``_``), checked to be one.

    Raises:
        RSDistillError: When what is left is no plain folder name (``..``, a backslash...).
    """
    slug = name.replace(":", "_").replace("/", "_").strip("_")[-40:]
    return safe_name(slug, f"The folder name made from the dataset name {name!r}:",
                     "Give the dataset by another path or name.")


def cache_folder(dataset: SceneDataset, cache_dir: str | Path | None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else default_cache_root() / "images"
    return base / f"{dataset_slug(dataset.name)}-{dataset.fingerprint}"


def stretch_limits(dataset: SceneDataset, cache_dir: str | Path | None = None) -> Limits:
    """The ``data.stretch`` limits of `dataset`: fixed ones, or the percentiles of each RGB band over up to
    `STRETCH_IMAGES` train images spread over the split, computed once and kept in the image cache. Images that
    cannot be read are left out here (decoding names or skips them)."""
    imagery = dataset.imagery
    kind, low, high = imagery.stretch_rule()
    if kind == "range":
        return fixed_limits(imagery)
    path = cache_folder(dataset, cache_dir) / "stretch.json"  # the folder is keyed by the settings
    if path.is_file():
        record = json.loads(path.read_text())
        return Limits(tuple(record["low"]), tuple(record["high"]))  # type: ignore[arg-type]
    keys = [sample.key for sample in dataset.train]
    keys = keys[:: max(1, len(keys) // STRETCH_IMAGES)]
    samples = []
    for key in tqdm(keys, desc="train percentiles for data.stretch", unit="img", leave=False):
        try:
            rgb = imagery.rgb_bands(dataset.source.raster(key), dataset.source.describe(key))
        except UNREADABLE:
            continue
        if rgb.dtype not in (np.uint8, np.bool_) and np.isfinite(rgb).all():
            samples.append(pixel_sample(rgb, STRETCH_PIXELS))
    limits = percentile_limits(samples, low, high, dataset.name)
    write_text_atomic(path, json.dumps({"stretch": imagery.stretch, "bands": imagery.bands, "images": len(samples),
                                        **limits.to_dict()}))
    shown = [", ".join(f"{value:.6g}" for value in values) for values in (limits.low, limits.high)]
    tqdm.write(f"note: data.stretch={imagery.stretch}: red, green, blue from ({shown[0]}) to ({shown[1]}), "
               f"from {len(samples)} train images of {dataset.name} (kept in {path})")
    return limits


def dataset_reader(dataset: SceneDataset, cache_dir: str | Path | None = None) -> RGBReader:
    """How `dataset`'s images become RGB, its stretch limits computed on its train split when first needed."""
    return RGBReader(dataset.imagery, lambda: stretch_limits(dataset, cache_dir))


def decoded_as_now(dataset: SceneDataset, index: dict[str, Any]) -> bool:
    """Whether a cached split was decoded the way this version decodes it: caches written before imagery
    settings existed are kept for 8-bit images only (their 16-bit images were clipped)."""
    if "imagery" in index or not index["keys"]:
        return True
    key = index["keys"][0]
    try:
        if not dataset.source.plain(key):
            return False
        with dataset.source.open(key) as image:
            return image.mode in EIGHT_BIT_MODES
    except UNREADABLE:
        return True


def cache_paths(dataset: SceneDataset, split: str, resolution: int, cache_dir: str | Path | None) -> tuple[Path, Path]:
    folder = cache_folder(dataset, cache_dir)
    return folder / f"{split}-{resolution}px.npy", folder / f"{split}-{resolution}px.json"


def cache_state(dataset: SceneDataset, resolution: int, cache_dir: str | Path | None = None) -> dict[str, bool]:
    """Which splits are decoded in the cache at `resolution`."""
    return {split: cache_paths(dataset, split, resolution, cache_dir)[1].is_file() for split in SPLITS}


def load_images(
    dataset: SceneDataset,
    split: str,
    resolution: int,
    cache_dir: str | Path | None = None,
    on_bad_image: str = "stop",
) -> ImageArray:
    """Decoded images of a split, from the cache when present (a memory map), else decoded and cached."""
    array_path, index_path = cache_paths(dataset, split, resolution, cache_dir)
    samples = dataset.samples(split)
    if index_path.is_file() and array_path.is_file():
        index = json.loads(index_path.read_text())
        if decoded_as_now(dataset, index):
            images = np.load(array_path, mmap_mode="r")
            return ImageArray(images, np.asarray(index["labels"], dtype=np.int64), index["keys"], index["skipped"])
        tqdm.write(f"note: {index_path} was decoded before 16-bit and float images were stretched; decoding again")
    keys = [sample.key for sample in samples]
    reader = dataset_reader(dataset, cache_dir)
    images, kept = decode(dataset.source, keys, resolution, reader, on_bad_image, desc=f"decoding {split}")
    kept_keys = [keys[i] for i in kept]
    skipped = sorted(set(keys) - set(kept_keys))
    labels = np.asarray([samples[i].label for i in kept], dtype=np.int64)
    array_path.parent.mkdir(parents=True, exist_ok=True)
    save_npy_atomic(array_path, images, what="the image cache ", remedy="RSDISTILL_CACHE / data.cache_dir")
    imagery = {"bands": dataset.imagery.bands, "stretch": dataset.imagery.stretch,
               "limits": reader.known.to_dict() if reader.known else None}
    write_text_atomic(index_path, json.dumps({"keys": kept_keys, "labels": labels.tolist(), "skipped": skipped,
                                              "imagery": imagery}))
    return ImageArray(images, labels, kept_keys, skipped)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices of `labels` into (kept, held out), `fraction` of every class held out (at least one
    where a class has two or more). Used to carve a validation split from train."""
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        count = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) > 1 else 0
        held.append(members[:count])
        kept.append(members[count:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def image_sizes(dataset: SceneDataset, split: str, limit: int | None = None) -> Counter[tuple[int, int]]:
    """Counts of original (width, height) over a split, read from image headers."""
    samples = dataset.samples(split)[:limit] if limit else dataset.samples(split)
    sizes: Counter[tuple[int, int]] = Counter()
    for sample in tqdm(samples, desc=f"reading {split} headers", leave=False):
        try:
            with dataset.source.open(sample.key) as image:
                sizes[image.size] += 1
        except UNREADABLE:
            sizes[(0, 0)] += 1
    return sizes


def normalization_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (BENCHMARK.md normalisation)."""
    flat = np.asarray(images).reshape(-1, 3).astype(np.float64) / 255.0
    return flat.mean(axis=0).astype(np.float32), flat.std(axis=0).astype(np.float32)

