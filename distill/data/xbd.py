"""xBD building-damage data as a classification dataset: building patches, or whole tiles by disaster type.

The xBD layout (xview2.org) is a folder holding ``images/`` and ``labels/``::

    images/<disaster>_<id>_pre_disaster.png    images/<disaster>_<id>_post_disaster.png
    labels/<disaster>_<id>_pre_disaster.json   labels/<disaster>_<id>_post_disaster.json

A label file holds ``features.xy`` (buildings: ``properties.feature_type``, ``properties.subtype`` (post
labels only: no-damage, minor-damage, major-damage, destroyed, un-classified), ``properties.uid``, and
``wkt``, the polygon in pixel coordinates), ``features.lng_lat`` (the same in longitude/latitude) and
``metadata`` (``disaster``, ``disaster_type``, sensor and sun angles...). The spec's path is that folder, or a
folder whose sub-folders (up to two levels, e.g. the release's ``train/``, ``tier3/``, ``hold/``, ``test/``)
are.

Spec: ``xbd:<path>[?option=value&...]`` (a path holding ``?`` cannot be used). Options:

- ``mode``: ``damage`` (default): one sample per building, cut from the post image, class = damage subtype,
  key ``<subtype>/<tile>_<uid>``. ``disaster``: one sample per tile, class = ``metadata.disaster_type``,
  key ``<disaster_type>/<tile>``.
- ``patch``: side in pixels of each patch as the source returns it (default 64 in damage mode; the tile's own
  size in disaster mode). Stages then resize to their ``--resolution`` like any image.
- ``margin``: context around a building on each side, as a fraction of its larger side (default 0.25). The
  window is square, centred on the polygon's bounding box, at least ``min_window`` source pixels (default 32);
  beyond the image edge it is black.
- ``pair``: ``post`` (default): the post-disaster patch. ``side``: the pre and post patches side by side, one
  RGB image twice as wide as high (pre left; square-resizing stages squeeze it horizontally). ``stack``: pre
  and post as 6 channels (pre RGB, post RGB), read with :meth:`XBDDataset.stacked`; the RGB stages refuse it.
  The post polygon places the window on both images.
- ``split``: ``tile`` (default): no tile in both splits. ``disaster``: no disaster event in both splits.
  ``folder``: the release's own split, tiles under a ``test/`` folder are test, all others train. ``tile`` and
  ``disaster`` are stratified by class as far as whole tiles or events allow (iterative stratification, fixed
  seed) and written down (one line per test tile or event) so later runs read the same split.
- ``test``: test share of a generated split (default: the data layer's ``test_fraction``, 0.2).

Bad input is never fatal while anything usable remains; every case is counted and named under one of
:data:`rsdistill.data.xbd_scan.PROBLEM_RULES` (rule included), shown by ``rsdistill xbd info`` and summarised on stderr
when loading.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from rsdistill.core.atomic import safe_name, write_text_atomic
from rsdistill.core.errors import RSDistillError
from rsdistill.data.dataset import ImageArray, ImageSource, Sample, SceneDataset, default_cache_root, to_rgb_resized
from rsdistill.data.xbd_geometry import Window, crop, square_window
from rsdistill.data.xbd_scan import PatchInfo, Tile, XBDReport, scan
from rsdistill.data.xbd_spec import STACK_REFUSAL, XBDOptions, parse_spec


class XBDSource(ImageSource):
    """Crops patches from xBD tiles on demand, keeping the last few decoded tiles in memory.

    Samples are ordered tile by tile, so a pass over a split decodes each tile once.
    """

    def __init__(
        self, tiles: dict[str, Tile], crops: dict[str, tuple[str, Window]], pair: str, size: int | None,
        cached_tiles: int = 4,
    ) -> None:
        self.tiles = tiles
        self.crops = crops
        self.pair = pair
        self.size = (size, size) if size else None
        self.cached_tiles = cached_tiles
        self._decoded: OrderedDict[Path, Image.Image] = OrderedDict()

    def _image(self, path: Path) -> Image.Image:
        if path in self._decoded:
            self._decoded.move_to_end(path)
            return self._decoded[path]
        with Image.open(path) as image:
            decoded = image.convert("RGB")
        self._decoded[path] = decoded
        while len(self._decoded) > 2 * self.cached_tiles:
            self._decoded.popitem(last=False)
        return decoded

    def open_pair(self, key: str) -> tuple[Image.Image, Image.Image]:
        """The pre and post patches of a sample, RGB."""
        name, window = self.crops[key]
        tile = self.tiles[name]
        return crop(self._image(tile.pre), window, self.size), crop(self._image(tile.post), window, self.size)

    def open(self, key: str) -> Image.Image:
        if self.pair == "stack":
            raise RSDistillError(STACK_REFUSAL)
        if self.pair == "post":
            name, window = self.crops[key]
            return crop(self._image(self.tiles[name].post), window, self.size)
        pre, post = self.open_pair(key)
        side = Image.new("RGB", (pre.width + post.width, post.height))
        side.paste(pre, (0, 0))
        side.paste(post, (pre.width, 0))
        return side

    def describe(self, key: str) -> str:
        name, window = self.crops[key]
        return f"{self.tiles[name].post} window {window}"


@dataclass
class XBDDataset(SceneDataset):
    """A `SceneDataset` of xBD patches or tiles, with per-sample metadata and the bad-input report."""

    options: XBDOptions = field(default_factory=XBDOptions)
    metadata: dict[str, PatchInfo] = field(default_factory=dict)
    report: XBDReport = field(default_factory=XBDReport)

    def images(
        self, split: str, resolution: int, cache_dir: str | Path | None = None, on_bad_image: str = "stop"
    ) -> ImageArray:
        if self.options.pair == "stack":
            raise RSDistillError(STACK_REFUSAL)
        return super().images(split, resolution, cache_dir=cache_dir, on_bad_image=on_bad_image)

    def stacked(self, split: str, resolution: int, on_bad_image: str = "stop") -> ImageArray:
        """Pre and post patches as uint8 (N, H, W, 6): channels 0-2 pre RGB, 3-5 post RGB. Not cached."""
        samples = self.samples(split)
        out = np.empty((len(samples), resolution, resolution, 6), dtype=np.uint8)
        kept: list[int] = []
        source = self.source
        assert isinstance(source, XBDSource)
        for index, sample in enumerate(tqdm(samples, desc=f"cropping {split} pairs", leave=False)):
            try:
                pre, post = source.open_pair(sample.key)
            except (OSError, UnidentifiedImageError, ValueError) as error:
                if on_bad_image == "stop":
                    raise RSDistillError(
                        f"Cannot read image {source.describe(sample.key)}: {error}. Replace the file or pass "
                        "on_bad_image='skip'."
                    ) from None
                continue
            out[len(kept), ..., :3] = to_rgb_resized(pre, resolution)
            out[len(kept), ..., 3:] = to_rgb_resized(post, resolution)
            kept.append(index)
        keys = [samples[i].key for i in kept]
        labels = np.asarray([samples[i].label for i in kept], dtype=np.int64)
        return ImageArray(out[: len(kept)], labels, keys, sorted({s.key for s in samples} - set(keys)))

    def tiles(self, split: str) -> set[str]:
        return {self.metadata[sample.key].tile for sample in self.samples(split)}

    def records(self, keys: list[str]) -> list[dict[str, Any]]:
        """Metadata lines (``xbd_disaster``, ``xbd_tile``, ``xbd_bounds``...) for `keys`, e.g. for
        :func:`rsdistill.data.imageset.write_image_set`."""
        return [{"source_key": key, **self.metadata[key].record()} for key in keys]


def stratified_units(unit_counts: dict[str, Counter[int]], fraction: float, seed: int) -> set[str]:
    """Test units chosen so every class gets about `fraction` of its samples in test, whole units only.

    Iterative stratification (Sechidis et al., 2011) over units: the class with the fewest samples left is
    placed first, each of its units going to the split that still wants most of that class (then most
    samples overall, then a seeded coin). Where units are too coarse for that to give a class spread over two
    or more units any test unit, its smallest unit goes to test.
    """
    rng = random.Random(seed)
    order = sorted(unit_counts)
    rng.shuffle(order)
    totals: Counter[int] = Counter()
    for counts in unit_counts.values():
        totals.update(counts)
    want = {"test": {c: fraction * n for c, n in totals.items()}, "train": {c: (1 - fraction) * n for c, n in
                                                                             totals.items()}}
    want_total = {"test": fraction * sum(totals.values()), "train": (1 - fraction) * sum(totals.values())}
    remaining = [unit for unit in order if sum(unit_counts[unit].values())]
    test: set[str] = set()
    while remaining:
        left: Counter[int] = Counter()
        for unit in remaining:
            left.update(unit_counts[unit])
        label = min((n, c) for c, n in left.items() if n > 0)[1]
        for unit in (u for u in remaining if unit_counts[u][label] > 0):
            split = max(("test", "train"), key=lambda s: (want[s][label], want_total[s], rng.random()))
            for c, n in unit_counts[unit].items():
                want[split][c] -= n
            want_total[split] -= sum(unit_counts[unit].values())
            if split == "test":
                test.add(unit)
        remaining = [u for u in remaining if unit_counts[u][label] == 0]
    for label in sorted(totals):
        holders = [u for u in order if unit_counts[u][label] > 0]
        if len(holders) > 1 and not test.intersection(holders):
            test.add(min(holders, key=lambda u: sum(unit_counts[u].values())))
    return test


def split_path(root: Path, options: XBDOptions, seed: int, fraction: float) -> Path:
    tag = hashlib.sha256(f"{root.resolve()}|{options.mode}|{options.split}|{seed}|{fraction}".encode())
    name = f"xbd-{root.resolve().name}-{options.mode}-by-{options.split}-{tag.hexdigest()[:12]}-test.txt"
    return default_cache_root() / "splits" / name


def read_split(path: Path, unit: str) -> set[str]:
    """Test units of a written split, checking it was written for the same unit (tile or disaster)."""
    lines = path.read_text().splitlines()
    header = next((line for line in lines if line.startswith("#")), "")
    written = re.search(r"unit=(\w+)", header)
    if written is None or written.group(1) != unit:
        raise RSDistillError(
            f"Split file {path} was not written for an xBD split by {unit} (its header: {header!r}). "
            "Give another --split-file or delete this one to make a new split."
        )
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def choose_test_units(
    root: Path, options: XBDOptions, tiles: list[Tile], entries: list[tuple[str, int, PatchInfo]],
    seed: int, fraction: float, split_file: Path | None,
) -> tuple[set[str], str, tuple[Path, str] | None]:
    """The test tiles, a sentence saying where the split came from, and (path, text) of a new split that
    the caller writes down once it has checked it."""
    if options.split == "folder":
        test = {tile.name for tile in tiles if tile.folder.split("/")[0] == "test"}
        return test, f"the release's folders under {root}: test/ is test, every other folder train", None
    unit_of = {tile.name: (tile.name if options.split == "tile" else tile.disaster) for tile in tiles}
    path = split_file or split_path(root, options, seed, fraction)
    pending = None
    if path.is_file():
        units = read_split(path, options.split)
        origin = f"{path} (by {options.split}, written earlier)"
    else:
        unit_counts: dict[str, Counter[int]] = {}
        for _, label, info in entries:
            unit_counts.setdefault(unit_of[info.tile], Counter())[label] += 1
        units = stratified_units(unit_counts, fraction, seed)
        header = (f"# rsdistill xbd test split: unit={options.split} mode={options.mode} seed={seed} "
                  f"test={fraction}\n")
        pending = (path, header + "".join(f"{unit}\n" for unit in sorted(units)))
        origin = f"{path} (by {options.split}, stratified, seed {seed}, {fraction:.0%} test, new)"
    return {name for name, unit in unit_of.items() if unit in units}, origin, pending


def _entries(tiles: list[Tile], options: XBDOptions) -> list[tuple[str, str, PatchInfo]]:
    """(key, class name, info) of every sample, tile by tile."""
    out = []
    for tile in tiles:
        count = len(tile.buildings)
        if options.mode == "disaster":
            whole = (0.0, 0.0, float(tile.size[0]), float(tile.size[1]))
            window = (0, 0, *tile.size)
            info = PatchInfo(tile.disaster, tile.disaster_type, tile.name, None, None, whole, window, False,
                             count)
            out.append((f"{tile.disaster_type}/{tile.name}", tile.disaster_type, info))
            continue
        for b in sorted(tile.buildings, key=lambda b: b.uid):
            window = square_window(b.bounds, options.margin, options.min_window)
            info = PatchInfo(tile.disaster, tile.disaster_type, tile.name, b.uid, b.subtype, b.bounds, window,
                             b.clipped, count)
            out.append((f"{b.subtype}/{tile.name}_{b.uid}", b.subtype, info))
    return out


def load_xbd_dataset(
    path: Path,
    spec: str,
    split_seed: int = 0,
    split_file: Path | None = None,
    test_fraction: float = 0.2,
) -> XBDDataset:
    """An xBD folder as a dataset of building patches (or tiles), split so no tile is on both sides.

    Args:
        path: The xBD folder (a ``?query`` left on it is ignored; options are read from `spec`).
        spec: The full spec ``xbd:<path>[?options]`` (see the module docstring); also the dataset's name.
        split_seed: Seed of a generated split.
        split_file: Where the generated split is read from or written to (default: the cache's splits/).
        test_fraction: Test share of a generated split when the spec gives no ``test=``.

    Returns:
        An :class:`XBDDataset`; ``dataset.metadata[key]`` tells a sample's disaster, tile and polygon bounds.

    Raises:
        RSDistillError: When the folder holds no usable tile, an option is wrong, or the split leaves a class
            without train samples or the test split empty.
    """
    _, options = parse_spec(spec)
    root = Path(str(path).partition("?")[0]).expanduser()
    fraction = options.test if options.test is not None else test_fraction
    tiles, report = scan(root, options)
    named = _entries(tiles, options)
    classes = sorted({name for _, name, _ in named})
    first_tile: dict[str, str] = {}
    for _, name, info in named:
        first_tile.setdefault(name, info.tile)
    label_field = "metadata.disaster_type" if options.mode == "disaster" else "damage subtype"
    for name in classes:
        safe_name(name, f"Class name of the xBD data at {root} ({label_field} in the label file of tile "
                  f"{first_tile[name]}):", "Class names become folder names; fix that label file.")
    index = {name: i for i, name in enumerate(classes)}
    entries = [(key, index[name], info) for key, name, info in named]
    test_tiles, origin, pending = choose_test_units(
        root, options, tiles, entries, split_seed, fraction, split_file
    )
    train = [Sample(key, label) for key, label, info in entries if info.tile not in test_tiles]
    test = [Sample(key, label) for key, label, info in entries if info.tile in test_tiles]
    if not test:
        raise RSDistillError(
            f"The xBD split of {root} by {options.split} ({origin}) leaves the test split empty: "
            f"{len(tiles)} tile(s) are too few for test={fraction}. Add data, raise test=, or use split=tile."
        )
    missing = sorted(set(classes) - {classes[sample.label] for sample in train})
    if missing:
        raise RSDistillError(
            f"Class(es) {', '.join(missing)} have no train samples after the xBD split by {options.split} of "
            f"{root} ({origin}). Use split=tile, another seed, or a split file that keeps some in train."
        )
    if pending is not None:
        write_text_atomic(*pending)
    tile_map = {tile.name: tile for tile in tiles}
    crops = {key: (info.tile, info.window) for key, _, info in entries}
    source = XBDSource(tile_map, crops, options.pair, options.patch_size)
    if report.counts():
        summary = ", ".join(f"{kind} {count}" for kind, count in report.counts().items())
        print(f"xbd: input problems in {root}: {summary} (rsdistill xbd info {spec!r} names them)",
              file=sys.stderr)
    return XBDDataset(
        spec, classes, train, test, source, origin, str(root.resolve()),
        options=options, metadata={key: info for key, _, info in entries}, report=report,
    )
