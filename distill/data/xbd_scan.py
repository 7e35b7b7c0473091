"""Reading the xBD layout: label folders, label files and image headers into tiles of usable buildings.

Bad input is counted, never fatal while anything usable remains: each case is named under one of
:data:`PROBLEM_RULES` in an :class:`XBDReport`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from rsdistill.core.errors import RSDistillError
from rsdistill.data.xbd_geometry import BadGeometry, Bounds, Window, clip_to_image, parse_polygon
from rsdistill.data.xbd_spec import XBDOptions

DAMAGE_CLASSES = ("no-damage", "minor-damage", "major-damage", "destroyed")
UNCLASSIFIED = "un-classified"
LABEL_NAME = re.compile(r"^(?P<tile>(?P<disaster>.+)_(?P<id>[^_]+))_(?P<phase>pre|post)_disaster\.json$")
SKIPPED_FOLDERS = frozenset({"images", "labels", "targets", "masks"})

PROBLEM_RULES: dict[str, str] = {
    "malformed_json": "label file that is not JSON or lacks features.xy or metadata.disaster_type: "
    "tile skipped",
    "missing_image": "label file whose image (post; pre too for pair=side|stack) is missing or unreadable: "
    "tile skipped",
    "duplicate_tile": "tile name already read from another folder: this copy skipped",
    "unrecognised_name": "file in labels/ not named <disaster>_<id>_(pre|post)_disaster.json: ignored",
    "malformed_wkt": "building whose wkt is not a polygon with area: building skipped",
    "outside_image": "polygon entirely outside the image: building skipped",
    "clipped": "polygon partly outside the image: clipped to the image, kept",
    "not_building": "feature whose feature_type is not building: ignored",
    "unknown_subtype": "building without a known damage subtype: building skipped",
    "duplicate_uid": "building uid repeated within its tile: repeat skipped",
    "unclassified": "building labelled un-classified: not a damage class, no patch",
    "no_buildings": "tile with no usable building: no patches in damage mode, kept as a sample in "
    "disaster mode",
}


@dataclass
class XBDReport:
    """Bad input met while reading, by kind (a key of :data:`PROBLEM_RULES`): the files or buildings named."""

    problems: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, item: str) -> None:
        self.problems.setdefault(kind, []).append(item)

    def counts(self) -> dict[str, int]:
        return {kind: len(self.problems[kind]) for kind in PROBLEM_RULES if self.problems.get(kind)}

    def lines(self, examples: int = 3) -> list[str]:
        """One line per kind met: count, rule, and the first `examples` named."""
        out = []
        for kind, count in self.counts().items():
            named = ", ".join(self.problems[kind][:examples]) + (" ..." if count > examples else "")
            out.append(f"{kind} {count}: {PROBLEM_RULES[kind]}. e.g. {named}")
        return out


@dataclass(frozen=True)
class Building:
    uid: str
    subtype: str
    bounds: Bounds  # of the part inside the image, post-image pixels
    clipped: bool


@dataclass
class Tile:
    """One pre/post image pair with its usable buildings."""

    name: str  # <disaster>_<id>
    folder: str  # relative to the root ("." for the root itself)
    disaster: str
    disaster_type: str
    post: Path
    pre: Path
    size: tuple[int, int]
    buildings: list[Building]


@dataclass(frozen=True)
class PatchInfo:
    """Where a sample comes from. `bounds` is the building polygon's bounding box in post-image pixels (the
    whole tile in disaster mode); `window` the crop box, which may reach past the image edge."""

    disaster: str
    disaster_type: str
    tile: str
    uid: str | None
    subtype: str | None
    bounds: Bounds
    window: Window
    clipped: bool
    buildings: int

    def record(self) -> dict[str, Any]:
        """A flat dict for `metadata.jsonl` lines."""
        return {f"xbd_{name}": value for name, value in asdict(self).items()}


def label_folders(root: Path) -> list[Path]:
    """Folders holding `labels/`: the root, its sub-folders and theirs (not inside images/ or labels/)."""
    found = [root] if (root / "labels").is_dir() else []
    level = [root]
    for _ in range(2):
        level = [c for f in level for c in sorted(f.iterdir()) if c.is_dir() and c.name not in SKIPPED_FOLDERS
                 and not c.name.startswith(".")]
        found.extend(f for f in level if (f / "labels").is_dir())
    return found


def _read_label(path: Path) -> tuple[list[Any], dict[str, Any]]:
    """`features.xy` and `metadata` of a label file; ValueError says what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"not JSON: {error}") from None
    features = data.get("features") if isinstance(data, dict) else None
    xy = features.get("xy") if isinstance(features, dict) else None
    metadata = data.get("metadata") if isinstance(data, dict) else None
    if not isinstance(xy, list):
        raise ValueError("no features.xy list")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("disaster_type"), str):
        raise ValueError("no metadata.disaster_type")
    return xy, metadata


def _buildings(xy: list[Any], size: tuple[int, int], where: str, report: XBDReport) -> list[Building]:
    buildings: list[Building] = []
    seen: set[str] = set()
    for index, feature in enumerate(xy):
        properties = feature.get("properties") if isinstance(feature, dict) else None
        properties = properties if isinstance(properties, dict) else {}
        uid = re.sub(r"[^\w.-]", "-", str(properties.get("uid") or f"building{index:04d}"))
        named = f"{where}#{uid}"
        if properties.get("feature_type", "building") != "building":
            report.add("not_building", named)
            continue
        subtype = properties.get("subtype")
        if subtype == UNCLASSIFIED:
            report.add("unclassified", named)
            continue
        if subtype not in DAMAGE_CLASSES:
            report.add("unknown_subtype", f"{named} ({subtype!r})")
            continue
        try:
            polygon = parse_polygon(feature.get("wkt"))
        except BadGeometry as error:
            report.add("malformed_wkt", f"{named} ({error})")
            continue
        bounds, clipped = clip_to_image(polygon, *size)
        if bounds is None:
            report.add("outside_image", named)
            continue
        if uid in seen:
            report.add("duplicate_uid", named)
            continue
        if clipped:
            report.add("clipped", named)
        seen.add(uid)
        buildings.append(Building(uid, subtype, bounds, clipped))
    return buildings


def _image_size(path: Path) -> tuple[int, int] | str:
    """The (width, height) in the image header, or why it cannot be read."""
    if not path.is_file():
        return f"{path.name} missing"
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError) as error:
        return f"{path.name} unreadable: {error}"


def scan(root: Path, options: XBDOptions) -> tuple[list[Tile], XBDReport]:
    """Reads every post label under `root` into tiles, counting bad input (see :data:`PROBLEM_RULES`)."""
    if not root.is_dir():
        raise RSDistillError(f"xBD folder {root} does not exist.")
    folders = label_folders(root)
    if not folders:
        raise RSDistillError(
            f"{root} holds no labels/ folder. An xBD folder holds images/<disaster>_<id>_post_disaster.png "
            "and labels/<disaster>_<id>_post_disaster.json (or sub-folders such as train/ and test/ that do)."
        )
    report = XBDReport()
    tiles: dict[str, Tile] = {}
    label_files = [path for folder in folders for path in sorted((folder / "labels").glob("*.json"))]
    for path in tqdm(label_files, desc="reading xBD labels", unit="file", leave=False):
        folder = path.parent.parent
        where = path.relative_to(root).as_posix()
        match = LABEL_NAME.match(path.name)
        if match is None:
            report.add("unrecognised_name", where)
            continue
        if match["phase"] == "pre":
            continue  # pre labels carry no damage; the post polygons place both patches
        name = match["tile"]
        if name in tiles:
            report.add("duplicate_tile", where)
            continue
        try:
            xy, metadata = _read_label(path)
        except ValueError as error:
            report.add("malformed_json", f"{where} ({error})")
            continue
        post = folder / "images" / f"{name}_post_disaster.png"
        pre = folder / "images" / f"{name}_pre_disaster.png"
        size = _image_size(post)
        if isinstance(size, tuple) and options.pair != "post":
            pre_size = _image_size(pre)
            size = size if isinstance(pre_size, tuple) else pre_size
        if isinstance(size, str):
            report.add("missing_image", f"{where} ({size})")
            continue
        buildings = _buildings(xy, size, where, report)
        if not buildings:
            report.add("no_buildings", where)
            if options.mode == "damage":
                continue
        disaster = str(metadata.get("disaster") or match["disaster"])
        relative = folder.relative_to(root).as_posix()
        tiles[name] = Tile(name, relative, disaster, metadata["disaster_type"], post, pre, size, buildings)
    if not tiles:
        problems = "; ".join(report.lines(2)) or "no post-disaster label files"
        raise RSDistillError(f"No usable xBD tiles under {root}: {problems}.")
    return sorted(tiles.values(), key=lambda tile: tile.name), report
