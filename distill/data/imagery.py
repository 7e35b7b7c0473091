"""Imagery beyond 8-bit RGB: which bands are red, green and blue, and how 16-bit and float values become bytes.

8-bit RGB and grey images are decoded as they always were (Pillow's ``convert("RGB")``). Any other image is
read as its stored values, (H, W, bands) of any dtype -- GeoTIFFs through tifffile, other files through Pillow --
and turned into 8-bit RGB by two stated settings:

- ``data.bands`` picks the red, green and blue bands: none (one band is shown as grey, three as RGB; any
  other count is refused), three band numbers counted from 1 as GDAL does (``4,3,2``), or a named band order
  -- ``eurosat-ms`` (EuroSAT's 13-band multispectral release), ``sentinel-2`` (the 13 Sentinel-2 L1C bands),
  ``sentinel-2-l2a`` (the 12 L2A bands, no B10) -- alone (true colour: B04, B03, B02) or with three band
  names (``sentinel-2:B08,B04,B03``). An image whose band count does not match the named order is refused.
- ``data.stretch`` maps 16-bit, 32-bit and float values to 0..255, band by band: ``percentile`` (the 2nd and
  98th percentiles of each band over the train split, as torchgeo's percentile normalisation, computed once per
  dataset and used for every split), ``percentile:LOW,HIGH`` (other percentiles), or ``range:MIN,MAX`` (fixed
  values, e.g. ``range:0,10000`` for Sentinel-2 reflectance). Values outside the limits are saturated, which is
  what the stated rule asks for; 8-bit values are never stretched.

An image with NaN or infinite values is a bad image (skipped with ``--on-bad-image skip``, named otherwise).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rsdistill.core.errors import RSDistillError

# Pillow modes of 8-bit images that `convert("RGB")` renders without losing their range.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                             "LAB", "HSV"})
# Modes whose arrays are already grey or RGB(A) bytes; other 8-bit modes are converted to RGB first.
ARRAY_MODES = frozenset({"L", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})

SENTINEL2_L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
BAND_ORDERS: dict[str, tuple[str, ...]] = {
    "eurosat-ms": SENTINEL2_L1C,
    "sentinel-2": SENTINEL2_L1C,
    "sentinel-2-l2a": tuple(band for band in SENTINEL2_L1C if band != "B10"),
}
TRUE_COLOUR = ("B04", "B03", "B02")
DEFAULT_PERCENTILES = (2.0, 98.0)
STRETCH_FORMS = "percentile, percentile:LOW,HIGH (e.g. percentile:1,99) or range:MIN,MAX (e.g. range:0,10000)"
BAND_FORMS = (f"a named band order ({', '.join(BAND_ORDERS)}), optionally with three of its band names "
              "(sentinel-2:B08,B04,B03), or three band numbers counted from 1 (4,3,2)")
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def band_key(name: str) -> str:
    """A band name in one spelling: upper case, B8A and B08A alike."""
    return name.strip().upper().replace("B08A", "B8A")


def two_numbers(text: str, setting: str) -> tuple[float, float]:
    """`LOW,HIGH` of a setting, low below high."""
    match = re.fullmatch(rf"\s*({NUMBER})\s*,\s*({NUMBER})\s*", text)
    if not match or float(match.group(1)) >= float(match.group(2)):
        raise RSDistillError(f"{setting} needs two numbers LOW,HIGH with LOW < HIGH, not {text!r}; "
                             f"use {STRETCH_FORMS}.")
    return float(match.group(1)), float(match.group(2))


@dataclass(frozen=True)
class Imagery:
    """The ``data.bands`` and ``data.stretch`` settings, checked when made (see the module docstring).

    Attributes:
        bands: The ``data.bands`` setting (None: grey or RGB images only).
        stretch: The ``data.stretch`` setting.
    """

    bands: str | None = None
    stretch: str = "percentile"

    def __post_init__(self) -> None:
        self.band_choice()
        self.stretch_rule()

    @property
    def default(self) -> bool:
        """Whether these are the settings every dataset had before they existed (they leave fingerprints alone)."""
        return self.bands is None and self.stretch_rule() == ("percentile", *DEFAULT_PERCENTILES)

    @property
    def key(self) -> str:
        """What identifies the settings in a fingerprint."""
        return f"bands={self.bands}|stretch={self.stretch_rule()}"

    def stretch_rule(self) -> tuple[str, float, float]:
        """(``percentile`` or ``range``, low, high) of ``data.stretch``."""
        kind, _, values = self.stretch.strip().partition(":")
        if kind == "percentile" and not values:
            return ("percentile", *DEFAULT_PERCENTILES)
        if kind in ("percentile", "range") and values:
            low, high = two_numbers(values, f"data.stretch={self.stretch}")
            if kind == "percentile" and not 0 <= low < high <= 100:
                raise RSDistillError(f"data.stretch={self.stretch}: percentiles must lie in [0, 100].")
            return kind, low, high
        raise RSDistillError(f"data.stretch must be {STRETCH_FORMS}, not {self.stretch!r}.")

    def band_choice(self) -> tuple[tuple[int, int, int], int | None] | None:
        """(red, green, blue band indices from 0, the band count the order names or None), or None without
        ``data.bands``."""
        if self.bands is None or not self.bands.strip():
            return None
        spec = self.bands.strip()
        order_name, _, names = spec.partition(":")
        if order_name.lower() in BAND_ORDERS:
            order = [band_key(band) for band in BAND_ORDERS[order_name.lower()]]
            wanted = [band_key(name) for name in names.split(",")] if names else list(TRUE_COLOUR)
            unknown = [name for name in wanted if name not in order]
            if len(wanted) != 3 or unknown:
                raise RSDistillError(
                    f"data.bands={spec}: name three bands of the {order_name} order ({', '.join(order)}); "
                    f"{'unknown: ' + ', '.join(unknown) if unknown else f'{len(wanted)} given'}."
                )
            picked = tuple(order.index(name) for name in wanted)
            return (picked[0], picked[1], picked[2]), len(order)
        numbers = [part.strip() for part in spec.split(",")]
        if len(numbers) != 3 or not all(part.isdigit() and int(part) >= 1 for part in numbers):
            raise RSDistillError(f"data.bands must be {BAND_FORMS}, not {spec!r}.")
        return (int(numbers[0]) - 1, int(numbers[1]) - 1, int(numbers[2]) - 1), None

    def rgb_bands(self, pixels: np.ndarray, where: str) -> np.ndarray:
        """The red, green and blue planes (H, W, 3) of `pixels` (H, W, bands), as ``data.bands`` says.

        Raises:
            RSDistillError: When the image's bands cannot be read as stated (this is a setting to fix, not one
                bad image).
        """
        count = pixels.shape[2]
        choice = self.band_choice()
        if choice is None:
            if count == 1:
                return np.repeat(pixels, 3, axis=2)
            if count == 3 or (count == 4 and pixels.dtype == np.uint8):
                return pixels[..., :3]
            raise RSDistillError(
                f"Image {where} has {count} bands ({pixels.dtype}); say which are red, green and blue with "
                f"data.bands (--bands): {BAND_FORMS}."
            )
        picked, expected = choice
        if expected is not None and count != expected:
            raise RSDistillError(
                f"Image {where} has {count} bands, but data.bands={self.bands} names an order of {expected}. "
                "Choose the order the images are stored in, or give three band numbers (e.g. 4,3,2)."
            )
        if max(picked) >= count:
            raise RSDistillError(
                f"data.bands={self.bands} asks for band {max(picked) + 1}, but image {where} has {count} bands."
            )
        return pixels[..., list(picked)]


def as_bands(pixels: np.ndarray, where: str) -> np.ndarray:
    """`pixels` as (H, W, bands): a 2-D array gains a band axis; other shapes are refused."""
    if pixels.ndim == 2:
        return pixels[..., None]
    if pixels.ndim != 3:
        raise RSDistillError(f"Image {where} holds a {pixels.ndim}-D array {pixels.shape}; rsdistill reads one "
                             "image of (height, width, bands) per file.")
    return pixels


def pixels_of(image: Image.Image) -> np.ndarray:
    """The stored values of an open Pillow image: 16-bit, 32-bit and float modes as they are, other 8-bit
    modes (palette, CMYK...) as RGB bytes."""
    if image.mode not in ARRAY_MODES:
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    return np.asarray(image)


def read_tiff(path: Path) -> np.ndarray:
    """The first image of a (Geo)TIFF as (H, W, bands), read with tifffile (any band count and dtype)."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        series = tiff.series[0]
        pixels, axes = series.asarray(), series.axes
    if pixels.ndim == 3 and axes.index("Y") > 0 and axes[0] not in "YX":
        pixels = np.moveaxis(pixels, 0, -1)  # bands stored first (planar, or one page per band)
    return pixels


def tiff_is_plain(path: Path) -> bool:
    """Whether a TIFF is 8-bit with at most 4 samples (read as before, through Pillow); True when tifffile
    cannot tell, so Pillow reads (or names) it as before."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            shape, dtype = series.shape, series.dtype
    except (tifffile.TiffFileError, ValueError, OSError, IndexError):
        return True
    bands = 1 if len(shape) == 2 else min(shape[0], shape[-1])
    return dtype == np.uint8 and len(shape) in (2, 3) and bands <= 4


@dataclass(frozen=True)
class Limits:
    """Per-band low and high values that map to 0 and 255 (red, green, blue)."""

    low: tuple[float, float, float]
    high: tuple[float, float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"low": list(self.low), "high": list(self.high)}


def to_bytes(rgb: np.ndarray, limits: Callable[[], Limits], where: str) -> np.ndarray:
    """8-bit RGB of (H, W, 3) values: bytes as they are, anything else stretched between `limits()`.

    Raises:
        ValueError: When the image holds NaN or infinite values (a bad image).
    """
    if rgb.dtype == np.uint8:
        return rgb
    if rgb.dtype == np.bool_:
        return rgb.astype(np.uint8) * 255
    values = rgb.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"it holds NaN or infinite values ({where}); rsdistill does not guess what they mean")
    bounds = limits()
    low, high = np.asarray(bounds.low), np.asarray(bounds.high)
    scaled = (values - low) / np.maximum(high - low, np.finfo(np.float64).tiny)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def percentile_limits(samples: Iterable[np.ndarray], low: float, high: float, what: str) -> Limits:
    """The `low` and `high` percentiles of each band over pixel samples (each (N, 3)) of the train images.

    Raises:
        RSDistillError: When there is nothing to compute them from, or a band is constant.
    """
    pooled = [sample for sample in samples if len(sample)]
    if not pooled:
        raise RSDistillError(
            f"data.stretch=percentile needs 16-bit or float train images of {what} to compute the stretch from, "
            "and there are none. Set data.stretch=range:MIN,MAX."
        )
    values = np.concatenate(pooled).astype(np.float64)
    lows, highs = np.percentile(values, low, axis=0), np.percentile(values, high, axis=0)
    flat = [band for band in range(3) if highs[band] <= lows[band]]
    if flat:
        raise RSDistillError(
            f"The {low:g}th and {high:g}th percentiles of band {flat[0] + 1} of the RGB bands of {what}'s train "
            f"images are equal ({lows[flat[0]]:g}), so a percentile stretch would make it one colour. Set "
            "data.stretch=range:MIN,MAX or other percentiles."
        )
    return Limits(tuple(float(v) for v in lows), tuple(float(v) for v in highs))  # type: ignore[arg-type]


def pixel_sample(rgb: np.ndarray, count: int) -> np.ndarray:
    """About `count` pixels (N, 3) of an (H, W, 3) image, taken at a fixed stride."""
    flat = rgb.reshape(-1, 3)
    return flat[:: max(1, len(flat) // count)]
