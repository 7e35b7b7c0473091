"""Building geometry for xBD: WKT polygons in pixel coordinates, clipping, and square crop windows."""

from __future__ import annotations

import math

import shapely
import shapely.wkt
from PIL import Image
from shapely.errors import ShapelyError
from shapely.geometry import box

Bounds = tuple[float, float, float, float]  # (min x, min y, max x, max y) in image pixels
Window = tuple[int, int, int, int]  # (left, top, right, bottom), a PIL crop box


class BadGeometry(ValueError):
    """A WKT string that is not a usable building polygon; the message says why."""


def parse_polygon(wkt: object) -> shapely.Geometry:
    """A polygon (or multipolygon) with positive area from WKT; self-intersections are repaired.

    Raises:
        BadGeometry: When the text does not parse, is empty, or is not an areal shape.
    """
    if not isinstance(wkt, str):
        raise BadGeometry(f"wkt is {type(wkt).__name__}, not text")
    try:
        geometry = shapely.wkt.loads(wkt)
    except (ShapelyError, ValueError) as error:
        raise BadGeometry(str(error).splitlines()[0]) from None
    if geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise BadGeometry(f"a {geometry.geom_type}, not a polygon")
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    if geometry.is_empty or geometry.area <= 0:
        raise BadGeometry("an empty or zero-area polygon")
    return geometry


def clip_to_image(geometry: shapely.Geometry, width: int, height: int) -> tuple[Bounds | None, bool]:
    """Bounds of the part of `geometry` inside a `width` x `height` image, and whether anything was cut.

    Returns (None, True) when no part of the polygon lies inside the image (touching an edge is not inside).
    """
    frame = box(0, 0, width, height)
    if frame.contains(geometry):
        return geometry.bounds, False
    inside = geometry.intersection(frame)
    if inside.is_empty or inside.area <= 0:
        return None, True
    return inside.bounds, True


def square_window(bounds: Bounds, margin: float, min_side: int) -> Window:
    """A square crop box centred on `bounds`: the larger side plus `margin` of it on each side, at least
    `min_side` pixels. It may reach past the image edge; the crop pads there with black."""
    min_x, min_y, max_x, max_y = bounds
    side = max(float(min_side), max(max_x - min_x, max_y - min_y) * (1 + 2 * margin))
    side_px = max(1, math.ceil(side))
    left = math.floor((min_x + max_x - side_px) / 2)
    top = math.floor((min_y + max_y - side_px) / 2)
    return left, top, left + side_px, top + side_px


def crop(image: Image.Image, window: Window, size: tuple[int, int] | None) -> Image.Image:
    """The window of `image` (black beyond its edges), resized to `size` (bicubic, antialiased) if given."""
    patch = image.crop(window)
    if size is not None and patch.size != size:
        patch = patch.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
    return patch
