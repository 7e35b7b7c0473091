"""The offline captioner: it describes what it measures in each image.

Everything is computed with vectorised NumPy/SciPy over a batch of uint8 RGB images (N, H, W, 3):

- colours: every pixel gets a basic colour name from its hue, saturation and value; the names covering at
  least a fifth of the image are the dominant colours;
- brightness and contrast: mean and standard deviation of the luminance;
- texture and edges: mean local standard deviation of the luminance (5x5 windows) and the share of pixels
  whose luminance gradient is strong;
- vegetation: the excess-green index ExG = (2G - R - B) / (R + G + B) above a threshold, or, for hazy
  imagery, the normalised green-red difference NGRDI = (G - R) / (G + R);
- water: dark pixels that are not green and either very smooth (local standard deviation below one grey
  level) or smooth and clearly darker and bluer than the rest of their image;
- built-up regularity: the histogram of gradient orientations on strong edges; one sharp peak means straight
  parallel edges, two peaks 90 degrees apart a grid;
- layout: where the water and vegetation masks lie (a region of the image, a band and its direction, or
  the whole image), from the masks' first and second moments.

The thresholds below are fixed constants (fractions of the [0, 1] intensity range) chosen for 64-pixel
scenes, so a caption depends on its image alone and the same image always gets the same caption.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from matplotlib.colors import rgb_to_hsv
from scipy import ndimage

from rsdistill.data.names import scene_phrase

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

COLOURS = (
    "black",
    "dark gray",
    "gray",
    "light gray",
    "white",
    "red",
    "brown",
    "orange",
    "tan",
    "olive",
    "yellow",
    "dark green",
    "green",
    "dark teal",
    "teal",
    "dark blue",
    "blue",
    "purple",
    "pink",
)
DOMINANT_SHARE = 0.2
COLOUR_BITS = 6

# (upper bound, words) pairs: a value gets the words of the first bound above it.
BRIGHTNESS = (
    (0.2, "very dark"),
    (0.33, "dark"),
    (0.5, "moderately bright"),
    (0.7, "bright"),
    (9, "very bright"),
)
CONTRAST = (
    (0.03, "low contrast"),
    (0.08, "moderate contrast"),
    (0.15, "high contrast"),
    (9, "very high contrast"),
)
TEXTURE = (
    (0.006, "very smooth texture"),
    (0.015, "smooth texture"),
    (0.03, "moderate texture"),
    (9, "rough texture"),
)
EDGES = ((0.05, "few edges"), (0.2, "some edges"), (0.4, "many edges"), (9, "dense edges"))

WINDOW = 5
STRONG_GRADIENT = 0.04
VEGETATION_EXG = 0.05
VEGETATION_NGRDI, VEGETATION_MIN_EXG = 0.18, 0.02
VEGETATION_GREEN_OVER_RED = 0.02
WATER_LOCAL_STD = 0.003
WATER_EDGE_STD = 0.005
WATER_RELATIVE_LUMA = 0.78
WATER_BLUE_EXCESS = 0.05
WATER_MAX_LUMA = 0.5
WATER_MAX_EXG = 0.12
ORIENTATION_BINS = 12
STRUCTURE_MIN_EDGES = 0.1
GRID_PEAK, GRID_CROSS, LINES_PEAK = 0.4, 0.15, 0.5


@dataclass
class Measurements:
    """Per-image figures for a batch; every array has the batch as its first axis."""

    colour_shares: np.ndarray  # (N, len(COLOURS))
    brightness: np.ndarray
    contrast: np.ndarray
    texture: np.ndarray
    edge_share: np.ndarray
    vegetation_share: np.ndarray
    water_share: np.ndarray
    orientation_hist: np.ndarray  # (N, ORIENTATION_BINS), gradient angle in [0, pi), magnitude-weighted
    vegetation_layout: list[str]
    water_layout: list[str]


def colour_names(rgb: np.ndarray) -> np.ndarray:
    """Index into COLOURS for every pixel of float RGB in [0, 1] (any leading shape)."""
    hsv = rgb_to_hsv(rgb)
    hue, sat, val = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    hue = np.where(hue >= 340.0, hue - 360.0, hue)
    dark = val < 0.4
    grey = sat < 0.18
    conditions = {
        "black": val < 0.12,
        "dark gray": grey & (val < 0.35),
        "gray": grey & (val < 0.6),
        "light gray": grey & (val < 0.85),
        "white": grey,
        "red": (hue < 15) & (sat >= 0.45) & (val >= 0.4),
        "brown": (hue < 45) & (val < 0.55),
        "orange": (hue < 45) & (sat >= 0.45),
        "tan": hue < 45,
        "olive": (hue < 70) & (val < 0.5),
        "yellow": hue < 70,
        "dark green": (hue < 165) & dark,
        "green": hue < 165,
        "dark teal": (hue < 195) & dark,
        "teal": hue < 195,
        "dark blue": (hue < 255) & dark,
        "blue": hue < 255,
        "purple": hue < 290,
    }
    choices = [COLOURS.index(name) for name in conditions]
    return np.select(list(conditions.values()), choices, default=COLOURS.index("pink")).astype(np.uint8)


@cache
def colour_table() -> np.ndarray:
    """Colour name of every RGB colour quantised to COLOUR_BITS bits per channel (a lookup table)."""
    levels = 1 << COLOUR_BITS
    centres = (np.arange(levels, dtype=np.float32) + 0.5) / levels
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), axis=-1)
    return colour_names(grid).reshape(-1)


def colour_index(images: np.ndarray) -> np.ndarray:
    """Colour name index of every pixel of uint8 RGB images, through the lookup table."""
    q = (np.asarray(images) >> (8 - COLOUR_BITS)).astype(np.int32)
    return colour_table()[(q[..., 0] << (2 * COLOUR_BITS)) | (q[..., 1] << COLOUR_BITS) | q[..., 2]]


def local_std(values: np.ndarray, size: int = WINDOW) -> np.ndarray:
    """Standard deviation in a size x size window around every pixel of (N, H, W) values."""
    window = (1, size, size)
    mean = ndimage.uniform_filter(values, size=window, mode="reflect")
    mean_sq = ndimage.uniform_filter(values * values, size=window, mode="reflect")
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))


def per_image_shares(index: np.ndarray, weights: np.ndarray | None, bins: int) -> np.ndarray:
    """Per-image histograms (N, bins) of integer maps (N, ...), normalised to sum to 1 (0 for empty)."""
    n = index.shape[0]
    flat = (index.reshape(n, -1) + bins * np.arange(n)[:, None]).ravel()
    w = None if weights is None else weights.reshape(-1)
    counts = np.bincount(flat, weights=w, minlength=n * bins).reshape(n, bins).astype(np.float64)
    total = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def layouts(masks: np.ndarray) -> list[str]:
    """Where each (H, W) mask lies: the whole image, a band and its direction, or a region."""
    n, height, width = masks.shape
    m = masks.astype(np.float64)
    area = m.sum(axis=(1, 2))
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    safe = np.maximum(area, 1.0)
    cy = (m.sum(axis=2) * ys).sum(axis=1) / safe
    cx = (m.sum(axis=1) * xs).sum(axis=1) / safe
    vy = (m.sum(axis=2) * ys**2).sum(axis=1) / safe - cy**2
    vx = (m.sum(axis=1) * xs**2).sum(axis=1) / safe - cx**2
    cxy = np.einsum("nhw,h,w->n", m, ys, xs) / safe - cx * cy
    spread = np.sqrt(np.maximum(((vx - vy) / 2) ** 2 + cxy**2, 0.0))
    major, minor = (vx + vy) / 2 + spread, np.maximum((vx + vy) / 2 - spread, 1e-9)
    angle = np.degrees(0.5 * np.arctan2(2 * cxy, vx - vy))  # major axis, y pointing down
    share = area / (height * width)
    out = []
    for i in range(n):
        if share[i] >= 0.7:
            out.append("across the whole image")
        elif major[i] / minor[i] >= 9.0 and share[i] < 0.5:
            out.append(f"in a band running {direction(angle[i])}")
        elif min(vx[i], vy[i]) >= 0.06:
            out.append("spread across the image")
        else:
            out.append(region(cy[i], cx[i]))
    return out


def direction(angle: float) -> str:
    """Plain words for a line at `angle` degrees from the x axis (image y axis pointing down)."""
    if abs(angle) < 22.5 or abs(angle) > 157.5:
        return "horizontally"
    if 67.5 < abs(angle) < 112.5:
        return "vertically"
    falling = 0 < angle < 90 or angle < -90  # y points down: a positive angle falls to the right
    return "from upper left to lower right" if falling else "from lower left to upper right"


def region(cy: float, cx: float) -> str:
    row = "upper" if cy < 0.4 else "lower" if cy > 0.6 else "middle"
    col = "left" if cx < 0.4 else "right" if cx > 0.6 else "center"
    if row == "middle":
        return "in the center" if col == "center" else f"on the {col}"
    return f"in the {row} part" if col == "center" else f"in the {row} {col}"


def vegetation_mask(rgb: np.ndarray, exg: np.ndarray) -> np.ndarray:
    """Green pixels: excess green above VEGETATION_EXG, or, for hazy blue-tinted imagery where ExG stays low,
    green well above red (NGRDI = (G - R) / (G + R)) with some excess green. Green must exceed red, which
    keeps yellow soil and grey asphalt (whose ExG is slightly positive) out."""
    green_minus_red = rgb[..., 1] - rgb[..., 0]
    ngrdi = green_minus_red / (rgb[..., 1] + rgb[..., 0] + 1e-3)
    greenish = (exg > VEGETATION_EXG) | ((ngrdi > VEGETATION_NGRDI) & (exg > VEGETATION_MIN_EXG))
    return greenish & (green_minus_red > VEGETATION_GREEN_OVER_RED)


def water_mask(rgb: np.ndarray, luma: np.ndarray, exg: np.ndarray, roughness: np.ndarray) -> np.ndarray:
    """Water-like pixels: dark, not green, and either very smooth or smooth and clearly darker and bluer
    than the rest of their image (a river between fields)."""
    very_smooth = roughness < WATER_LOCAL_STD
    darker = luma < WATER_RELATIVE_LUMA * luma.mean(axis=(1, 2), keepdims=True)
    bluer = rgb[..., 2] - rgb[..., 1] > WATER_BLUE_EXCESS
    smooth_dark_blue = (local_std(luma, 3) < WATER_EDGE_STD) & darker & bluer
    return (luma < WATER_MAX_LUMA) & (exg < WATER_MAX_EXG) & (very_smooth | smooth_dark_blue)


def measure(images: np.ndarray) -> Measurements:
    """Measures a batch of uint8 RGB images (N, H, W, 3)."""
    rgb = np.asarray(images, dtype=np.float32) / 255.0
    luma = rgb @ LUMA
    total = rgb.sum(axis=-1) + 1e-3
    exg = (2 * rgb[..., 1] - rgb[..., 0] - rgb[..., 2]) / total
    grad_y, grad_x = np.gradient(luma, axis=(1, 2))
    magnitude = np.hypot(grad_x, grad_y)
    roughness = local_std(luma)
    strong = magnitude > STRONG_GRADIENT

    water = water_mask(rgb, luma, exg, roughness)
    vegetation = vegetation_mask(rgb, exg) & ~water
    angle = np.mod(np.arctan2(grad_y, grad_x), np.pi)
    bins = np.minimum((angle / np.pi * ORIENTATION_BINS).astype(np.int64), ORIENTATION_BINS - 1)

    return Measurements(
        colour_shares=per_image_shares(colour_index(images), None, len(COLOURS)),
        brightness=luma.mean(axis=(1, 2)),
        contrast=luma.std(axis=(1, 2)),
        texture=roughness.mean(axis=(1, 2)),
        edge_share=strong.mean(axis=(1, 2)),
        vegetation_share=vegetation.mean(axis=(1, 2)),
        water_share=water.mean(axis=(1, 2)),
        orientation_hist=per_image_shares(bins, magnitude * strong, ORIENTATION_BINS),
        vegetation_layout=layouts(vegetation),
        water_layout=layouts(water),
    )


def level(value: float, levels: tuple[tuple[float, str], ...]) -> str:
    return next(word for bound, word in levels if value < bound)


def colour_phrase(shares: np.ndarray) -> str:
    order = np.argsort(-shares, kind="stable")
    names = [COLOURS[i] for i in order[:3] if shares[i] >= DOMINANT_SHARE] or [COLOURS[order[0]]]
    if len(names) == 3:
        return f"a mix of {names[0]}, {names[1]} and {names[2]}"
    return "mostly " + " and ".join(names)


def water_phrase(share: float, where: str) -> str | None:
    if share >= 0.6:
        return f"a large body of water {where}"
    if share >= 0.15:
        return f"water {where}"
    if share >= 0.05:
        return f"small water-like patches {where}"
    return None


def vegetation_phrase(share: float, where: str) -> str | None:
    if share >= 0.6:
        return f"dense vegetation {where}"
    if share >= 0.3:
        return f"patches of vegetation {where}"
    if share >= 0.1:
        return f"scattered vegetation {where}"
    return None


def structure_phrase(hist: np.ndarray, edge_share: float, vegetation_share: float) -> str | None:
    """Straight edges: a grid (two perpendicular peaks) or parallel lines (one peak); else nothing."""
    if edge_share < STRUCTURE_MIN_EDGES or hist.sum() == 0:
        return None
    peak = int(np.argmax(hist))
    around = hist[[(peak - 1) % ORIENTATION_BINS, peak, (peak + 1) % ORIENTATION_BINS]].sum()
    cross_bin = (peak + ORIENTATION_BINS // 2) % ORIENTATION_BINS
    cross = hist[[(cross_bin - 1) % ORIENTATION_BINS, cross_bin, (cross_bin + 1) % ORIENTATION_BINS]].sum()
    built = "built-up " if vegetation_share < 0.3 else ""
    if around >= GRID_PEAK and cross >= GRID_CROSS:
        return f"regular {built}structures with straight edges in a grid pattern"
    if around >= LINES_PEAK:
        # Edges run across the gradient: a gradient at angle a gives lines at a + 90 degrees.
        gradient_angle = (peak + 0.5) * 180.0 / ORIENTATION_BINS
        line_angle = gradient_angle - 90.0
        return f"straight linear features running {direction(line_angle)}"
    if edge_share >= 0.3:
        return f"irregular {built}structures with many edges"
    return None


def describe(m: Measurements, i: int) -> list[str]:
    """The measured phrases of image `i`, most informative first."""
    phrases = [
        water_phrase(float(m.water_share[i]), m.water_layout[i]),
        vegetation_phrase(float(m.vegetation_share[i]), m.vegetation_layout[i]),
        structure_phrase(m.orientation_hist[i], float(m.edge_share[i]), float(m.vegetation_share[i])),
        colour_phrase(m.colour_shares[i]),
        f"{level(float(m.brightness[i]), BRIGHTNESS)} with {level(float(m.contrast[i]), CONTRAST)}",
        f"{level(float(m.texture[i]), TEXTURE)} with {level(float(m.edge_share[i]), EDGES)}",
    ]
    return [p for p in phrases if p]


class AttributeCaptioner:
    """Deterministic captions from measured image attributes, optionally opened by the class in plain words.

    Args:
        classes: Class names; a caption for label `k` starts with `scene_phrase(classes[k])`.
        mention_class: Whether captions start with the class phrase.
        prefix: Opening words of the class phrase ("a satellite image of").
        batch_size: Images measured at once (memory: about 100 bytes per pixel).
    """

    name = "attributes"

    def __init__(
        self,
        classes: list[str],
        mention_class: bool = True,
        prefix: str = "a satellite image of",
        batch_size: int = 1024,
    ) -> None:
        self.classes = classes
        self.mention_class = mention_class
        self.prefix = prefix
        self.batch_size = batch_size

    def caption(self, images: np.ndarray, labels: np.ndarray) -> list[str]:
        """One caption per image of a uint8 batch (N, H, W, 3) with its labels (N,)."""
        m = measure(images)
        captions = []
        for i, label in enumerate(np.asarray(labels).tolist()):
            opening = [scene_phrase(self.classes[label], self.prefix)] if self.mention_class else []
            captions.append(", ".join(opening + describe(m, i)))
        return captions
