"""Issue 25, case 3: 16-bit, float and multi-band images are scaled by a stated rule (data.stretch) with their
RGB bands taken from data.bands; what cannot be read as stated is refused, never clipped; 8-bit images decode
exactly as before."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from rsdistill.core.config import RunConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import cache_folder, load_folder_dataset, to_rgb_resized
from rsdistill.data.imagery import Imagery
from rsdistill.data.sources import load_dataset
from tests.test_safety import snapshot

CLASSES = ("field", "sea")


def grey16_folder(root: Path, per_class: int = 4, size: int = 16) -> Path:
    """16-bit grey PNGs of random values over the whole 0..65535 range, with test.txt."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 65536, (size, size), dtype=np.uint16)).save(root / name / f"{i}.png")
    (root / "test.txt").write_text("".join(f"{name}/0.png\n" for name in CLASSES))
    return root


def tiff_folder(root: Path, bands: int, planar: bool, per_class: int = 3, size: int = 8) -> Path:
    """Multi-band uint16 GeoTIFF-like files: band b (from 0) holds 1000 * b plus noise below 100."""
    rng = np.random.default_rng(1)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            stack = np.stack([1000 * b + rng.integers(0, 100, (size, size)) for b in range(bands)]).astype(np.uint16)
            data = stack if planar else np.moveaxis(stack, 0, -1)
            tifffile.imwrite(root / name / f"{i}.tif", data, planarconfig="separate" if planar else "contig")
    (root / "test.txt").write_text("".join(f"{name}/0.tif\n" for name in CLASSES))
    return root


def context(root: Path, **data: object) -> RunContext:
    config = RunConfig()
    config.data.dataset = f"imagefolder:{root}"
    for key, value in data.items():
        setattr(config.data, key, value)
    return RunContext.load(config)


def test_a_16bit_png_is_stretched_by_train_percentiles_not_clipped(tmp_path: Path) -> None:
    root = grey16_folder(tmp_path / "grey16")
    before = snapshot(root)
    with Image.open(root / "field" / "1.png") as image:  # what Pillow's convert("RGB") makes of it
        assert np.asarray(image.convert("RGB")).mean() > 250
    run = context(root, resolution=16)
    train = run.images("train")
    assert 100 < float(np.asarray(train.images).mean()) < 155  # the full range, not a white image
    assert float(np.asarray(train.images).std()) > 50
    limits = json.loads((cache_folder(run.dataset, None) / "stretch.json").read_text())
    assert 0 < limits["low"][0] < 3000 and 62000 < limits["high"][0] < 65535  # about the 2nd / 98th percentile
    index = json.loads((cache_folder(run.dataset, None) / "train-16px.json").read_text())
    assert index["imagery"]["limits"] == {"low": limits["low"], "high": limits["high"]}
    test = run.images("test")  # scaled with the train split's limits
    raw = np.asarray(Image.open(root / "field" / "0.png"), dtype=np.float64)
    expected = np.rint(np.clip((raw - limits["low"][0]) / (limits["high"][0] - limits["low"][0]), 0, 1) * 255)
    assert np.array_equal(np.asarray(test.images)[0][..., 0], expected.astype(np.uint8))
    assert snapshot(root) == before


def test_a_stated_range_replaces_the_percentiles_and_changes_the_fingerprint(tmp_path: Path) -> None:
    root = grey16_folder(tmp_path / "grey16")
    default, ranged = context(root), context(root, stretch="range:0,65535")
    assert default.dataset.fingerprint != ranged.dataset.fingerprint
    assert context(root, stretch="percentile:2,98").dataset.fingerprint == default.dataset.fingerprint
    images = np.asarray(context(root, resolution=16, stretch="range:0,65535").images("train").images)
    raw = np.asarray(Image.open(root / "field" / "1.png"), dtype=np.float64)
    assert np.array_equal(images[0][..., 1], np.rint(raw / 65535 * 255).astype(np.uint8))


def test_8bit_images_decode_byte_identically(make_imagefolder: Callable[..., Path]) -> None:
    root = make_imagefolder({"forest": 3, "lake": 3}, size=24, test_per_class=1)
    dataset = load_dataset(f"imagefolder:{root}")
    assert dataset.imagery.default and dataset.fingerprint == dataset.with_imagery(Imagery()).fingerprint
    decoded = dataset.images("train", 16)
    for key, image in zip(decoded.keys, decoded.images, strict=True):
        with Image.open(root / key) as original:
            assert np.array_equal(image, to_rgb_resized(original, 16))


@pytest.mark.parametrize("planar", [True, False])
def test_a_13_band_geotiff_takes_its_rgb_bands_from_the_preset(tmp_path: Path, planar: bool) -> None:
    root = tiff_folder(tmp_path / "ms", bands=13, planar=planar)
    images = np.asarray(context(root, resolution=8, bands="eurosat-ms", stretch="range:0,13000")
                        .images("train").images)
    # Red is B04 (band 4, about 3000), green B03 (2000), blue B02 (1000): 3000 / 13000 * 255 is about 59.
    means = images.reshape(-1, 3).mean(axis=0)
    assert 58 < means[0] < 61 and 38 < means[1] < 41 and 19 < means[2] < 22
    false_colour = np.asarray(context(root, resolution=8, bands="sentinel-2:B08,B04,B03", stretch="range:0,13000")
                              .images("train").images)
    assert 137 < false_colour.reshape(-1, 3).mean(axis=0)[0] < 141  # B08 is band 8 (index 7): about 7000
    numbered = np.asarray(context(root, resolution=8, bands="4,3,2", stretch="range:0,13000").images("train").images)
    assert np.array_equal(numbered, images)


@pytest.mark.parametrize("on_bad_image", ["stop", "skip"])
def test_multiband_images_without_bands_are_refused_even_when_skipping(tmp_path: Path, on_bad_image: str) -> None:
    root = tiff_folder(tmp_path / "ms", bands=13, planar=True)
    run = context(root, on_bad_image=on_bad_image)
    with pytest.raises(RSDistillError, match=r"has 13 bands \(uint16\); say which are red, green and blue with "
                       r"data\.bands"):
        run.images("train")


def test_a_band_order_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    root = tiff_folder(tmp_path / "l2a", bands=12, planar=True)
    with pytest.raises(RSDistillError, match=re.escape("has 12 bands, but data.bands=eurosat-ms names an order of 13")):
        context(root, bands="eurosat-ms").images("train")
    with pytest.raises(RSDistillError, match=r"asks for band 13, but image .* has 12 bands"):
        context(root, bands="13,3,2").images("train")
    assert context(root, bands="sentinel-2-l2a", stretch="range:0,12000").images("train").images.shape[-1] == 3


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("bands", "4,3", "data.bands must be a named band order"),
    ("bands", "eurosat-ms:B04,B03,B99", "unknown: B99"),
    ("stretch", "minmax", "data.stretch must be percentile"),
    ("stretch", "range:10,5", "LOW < HIGH"),
    ("stretch", "percentile:2,120", "percentiles must lie in"),
])
def test_bad_imagery_settings_are_refused_before_any_image_is_read(
    tmp_path: Path, setting: str, value: str, message: str
) -> None:
    with pytest.raises(RSDistillError, match=re.escape(message)):
        context(tmp_path / "not-even-there", **{setting: value})


def test_float_images_are_stretched_and_nan_is_a_bad_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    root = tmp_path / "float"
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(3):
            tifffile.imwrite(root / name / f"{i}.tif", rng.random((8, 8, 3)).astype(np.float32) * 0.3)
    broken = rng.random((8, 8, 3)).astype(np.float32)
    broken[0, 0, 0] = np.nan
    tifffile.imwrite(root / "sea" / "2.tif", broken)
    (root / "test.txt").write_text("field/0.tif\nsea/0.tif\n")
    with pytest.raises(RSDistillError, match=r"sea/2\.tif: it holds NaN or infinite values.*--on-bad-image skip"):
        context(root, resolution=8).images("train")
    train = context(root, resolution=8, on_bad_image="skip").images("train")
    assert train.skipped == ["sea/2.tif"] and 90 < float(np.asarray(train.images).mean()) < 165


def test_a_cache_decoded_before_the_stretch_existed_is_decoded_again(tmp_path: Path) -> None:
    root = grey16_folder(tmp_path / "grey16")
    dataset = load_folder_dataset(root, f"imagefolder:{root}")
    first = np.asarray(dataset.images("train", 16).images).copy()
    index_path = cache_folder(dataset, None) / "train-16px.json"
    index = json.loads(index_path.read_text())
    del index["imagery"]  # as an older rsdistill wrote it
    index_path.write_text(json.dumps(index))
    np.save(cache_folder(dataset, None) / "train-16px.npy", np.full_like(first, 255))  # clipped, as it was
    assert np.array_equal(np.asarray(dataset.images("train", 16).images), first)
