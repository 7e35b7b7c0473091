"""A small fake xBD folder in xBD's exact schema, for the tests and ``scripts/xbd_demo.py``.

Layout and label JSON mirror the xView2/xBD release::

    images/<disaster>_<8-digit id>_{pre,post}_disaster.png
    labels/<same stem>.json = {"features": {"lng_lat": [...], "xy": [...]}, "metadata": {...}}

Each feature is ``{"properties": {"feature_type": "building", "subtype": <damage>, "uid": <uuid>},
"wkt": "POLYGON ((...))"}`` (pre labels have no ``subtype``); ``xy`` is in pixels, ``lng_lat`` in degrees.
Buildings are drawn into the images, their look set by the damage class (intact roofs in the pre image and
for no-damage, more debris the worse the damage), so a classifier can learn them.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from shapely import affinity
from shapely.geometry import Polygon, box

DISASTERS = {  # name -> disaster_type, as in xBD's metadata
    "hurricane-harvey": "flooding",
    "hurricane-florence": "flooding",
    "santa-rosa-wildfire": "fire",
    "socal-fire": "fire",
}
DAMAGE = ("no-damage", "minor-damage", "major-damage", "destroyed")
DEBRIS_SHARE = {"no-damage": 0.0, "minor-damage": 0.3, "major-damage": 0.65, "destroyed": 1.0}
GROUND = {"flooding": (70, 110, 80), "fire": (120, 105, 70)}
POST_GROUND = {"flooding": (60, 90, 130), "fire": (60, 50, 45)}
DEBRIS = np.array([95, 65, 40], dtype=np.float32)


@dataclass
class FixtureBuilding:
    tile: str
    uid: str
    subtype: str
    polygon: Polygon


@dataclass
class XBDFixture:
    """What was written: the folder and every building, for tests to check against."""

    root: Path
    buildings: list[FixtureBuilding] = field(default_factory=list)
    tiles: list[str] = field(default_factory=list)

    def damage_counts(self) -> Counter[str]:
        return Counter(b.subtype for b in self.buildings if b.subtype in DAMAGE)


def _metadata(disaster: str, stem: str, size: int, rng: random.Random) -> dict[str, object]:
    return {
        "sensor": "GEOEYE01",
        "provider_asset_type": "GEOEYE01",
        "gsd": round(rng.uniform(1.2, 2.5), 6),
        "capture_date": "2017-09-04T17:19:42.000Z",
        "off_nadir_angle": round(rng.uniform(5, 30), 6),
        "pan_resolution": 0.5,
        "sun_azimuth": round(rng.uniform(100, 200), 6),
        "sun_elevation": round(rng.uniform(30, 70), 6),
        "target_azimuth": round(rng.uniform(0, 360), 6),
        "disaster": disaster,
        "disaster_type": DISASTERS.get(disaster, "flooding"),
        "catalog_id": f"{rng.getrandbits(64):016X}",
        "original_width": size,
        "original_height": size,
        "width": size,
        "height": size,
        "id": f"{rng.getrandbits(96):024x}",
        "img_name": f"{stem}.png",
    }


def _lng_lat(polygon: Polygon, origin: tuple[float, float]) -> Polygon:
    return affinity.affine_transform(polygon, [1e-5, 0, 0, -1e-5, origin[0], origin[1]])


def write_label(path: Path, stem: str, disaster: str, size: int, buildings: list[FixtureBuilding],
                post: bool, rng: random.Random) -> None:
    """Writes one label file in xBD's schema (`subtype` only in post labels)."""
    origin = (rng.uniform(-120, -80), rng.uniform(25, 40))

    def feature(b: FixtureBuilding, polygon: Polygon) -> dict[str, object]:
        properties = {"feature_type": "building", "subtype": b.subtype, "uid": b.uid}
        if not post:
            del properties["subtype"]
        return {"properties": properties, "wkt": polygon.wkt}

    label = {
        "features": {
            "lng_lat": [feature(b, _lng_lat(b.polygon, origin)) for b in buildings],
            "xy": [feature(b, b.polygon) for b in buildings],
        },
        "metadata": _metadata(disaster, stem, size, rng),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(label))


def _draw(ground: tuple[int, int, int], buildings: list[FixtureBuilding], roofs: list[np.ndarray], size: int,
          post: bool, np_rng: np.random.Generator) -> Image.Image:
    base = np.asarray(ground, dtype=np.float32) + np_rng.normal(0, 12, size=(size, size, 3))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for b, roof in zip(buildings, roofs, strict=True):
        share = DEBRIS_SHARE.get(b.subtype, 0.0) if post else 0.0
        colour = tuple(int(v) for v in (1 - share) * roof + share * DEBRIS)
        draw.polygon([(x, y) for x, y in b.polygon.exterior.coords], fill=colour)
    return image


def write_tile(
    root: Path, disaster: str, tile_id: int, subtypes: list[str], size: int, seed: int
) -> list[FixtureBuilding]:
    """Writes the pre/post images and labels of one tile with one building per subtype, on a grid."""
    rng = random.Random(f"{seed}-{disaster}-{tile_id}")
    np_rng = np.random.default_rng(rng.getrandbits(32))
    stem = f"{disaster}_{tile_id:08d}"
    cells = max(2, int(np.ceil(np.sqrt(len(subtypes)))))
    cell = size / cells
    slots = rng.sample(range(cells * cells), len(subtypes))
    buildings = []
    for slot, subtype in zip(slots, subtypes, strict=True):
        row, col = divmod(slot, cells)
        w, h = rng.uniform(0.35, 0.6) * cell, rng.uniform(0.35, 0.6) * cell
        cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
        polygon = affinity.rotate(box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), rng.uniform(-25, 25))
        uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        buildings.append(FixtureBuilding(stem, uid, subtype, polygon))
    roofs = [np.asarray([rng.uniform(150, 220)] * 3, dtype=np.float32) for _ in buildings]
    disaster_type = DISASTERS.get(disaster, "flooding")
    phases = (("pre", GROUND[disaster_type], False), ("post", POST_GROUND[disaster_type], True))
    for phase, ground, post in phases:
        image = _draw(ground, buildings, roofs, size, post, np_rng)
        (root / "images").mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / f"{stem}_{phase}_disaster.png")
        write_label(root / "labels" / f"{stem}_{phase}_disaster.json", f"{stem}_{phase}_disaster", disaster,
                    size, buildings, post, rng)
    return buildings


def write_xbd_fixture(
    root: Path,
    tiles_per_disaster: int = 3,
    size: int = 128,
    seed: int = 0,
    first_id: int = 0,
    disasters: tuple[str, ...] = tuple(DISASTERS),
) -> XBDFixture:
    """Writes a clean fake xBD folder: per tile one building of each damage class, one un-classified, and
    0-2 more of random classes."""
    fixture = XBDFixture(root)
    rng = random.Random(seed)
    for disaster in disasters:
        for index in range(tiles_per_disaster):
            subtypes = [*DAMAGE, "un-classified", *rng.choices(DAMAGE, k=rng.randint(0, 2))]
            tile_id = first_id + index
            fixture.buildings += write_tile(root, disaster, tile_id, subtypes, size, seed)
            fixture.tiles.append(f"{disaster}_{tile_id:08d}")
    return fixture


@dataclass
class BadInputs:
    """The bad cases added by :func:`add_bad_inputs`: kind -> names the report should hold."""

    expected: dict[str, list[str]]
    kept_buildings: Counter[str]  # buildings of the bad tiles that must still give patches
    tiles_without_buildings: list[str]


def add_bad_inputs(root: Path, size: int = 128) -> BadInputs:
    """Adds one of each bad case to a fixture folder (ids from 90 up, disaster socal-fire)."""
    labels = root / "labels"
    # Malformed JSON, with its images present.
    write_tile(root, "socal-fire", 90, ["no-damage"], size, seed=1)
    (labels / "socal-fire_00000090_post_disaster.json").write_text('{"features": {"xy": [')
    # A label file whose post image is missing.
    write_tile(root, "socal-fire", 91, ["destroyed"], size, seed=1)
    (root / "images" / "socal-fire_00000091_post_disaster.png").unlink()
    # A tile with no buildings.
    write_tile(root, "socal-fire", 92, [], size, seed=1)
    # One tile with a good building, malformed WKT, a polygon outside, one partly outside.
    good = write_tile(root, "socal-fire", 93, ["major-damage"], size, seed=1)
    path = labels / "socal-fire_00000093_post_disaster.json"
    label = json.loads(path.read_text())
    bad = {
        "bad-wkt": "POLYGON ((1 2, 3 4",
        "outside": box(size + 20, size + 20, size + 40, size + 40).wkt,
        "partly-outside": box(-10, 20, 12, 40).wkt,
    }
    for uid, wkt in bad.items():
        label["features"]["xy"].append(
            {"properties": {"feature_type": "building", "subtype": "destroyed", "uid": uid}, "wkt": wkt}
        )
    path.write_text(json.dumps(label))
    where = "labels/socal-fire_0000009{}_post_disaster.json"
    return BadInputs(
        expected={
            "malformed_json": [where.format(0)],
            "missing_image": [where.format(1)],
            "no_buildings": [where.format(2)],
            "malformed_wkt": [f"{where.format(3)}#bad-wkt"],
            "outside_image": [f"{where.format(3)}#outside"],
            "clipped": [f"{where.format(3)}#partly-outside"],
        },
        kept_buildings=Counter({good[0].subtype: 1, "destroyed": 1}),
        tiles_without_buildings=["socal-fire_00000092"],
    )
