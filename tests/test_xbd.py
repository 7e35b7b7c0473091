"""The xBD source: patches, pairs, splits, tile mode, bad input, and the data layer and CLI on top."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsdistill.cli.main import main
from rsdistill.core.errors import RSDistillError
from rsdistill.data.imageset import read_image_set, write_image_set
from rsdistill.data.sources import load_dataset
from rsdistill.data.xbd import XBDDataset, parse_spec, split_path, stratified_units
from rsdistill.data.xbd_fake import DAMAGE, DISASTERS, BadInputs, XBDFixture, add_bad_inputs, write_xbd_fixture
from rsdistill.data.xbd_geometry import crop


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> XBDFixture:
    return write_xbd_fixture(tmp_path_factory.mktemp("xbd") / "xbd")


@pytest.fixture
def bad(tmp_path: Path, clean: XBDFixture) -> tuple[Path, BadInputs]:
    root = tmp_path / "xbd"
    shutil.copytree(clean.root, root)
    return root, add_bad_inputs(root)


def load(root: Path, query: str = "", **kwargs: object) -> XBDDataset:
    dataset = load_dataset(f"xbd:{root}{query}", **kwargs)
    assert isinstance(dataset, XBDDataset)
    return dataset


def test_damage_patches_have_classes_keys_and_metadata(clean: XBDFixture) -> None:
    dataset = load(clean.root)
    assert dataset.classes == sorted(DAMAGE)
    counts = Counter(dataset.class_counts("train")) + Counter(dataset.class_counts("test"))
    assert counts == clean.damage_counts()
    assert len(dataset.report.problems["unclassified"]) == len(clean.tiles)
    by_key = {f"{b.subtype}/{b.tile}_{b.uid}": b for b in clean.buildings if b.subtype in DAMAGE}
    keys = [s.key for s in dataset.train + dataset.test]
    assert sorted(keys) == sorted(by_key)
    for key in keys:
        info, building = dataset.metadata[key], by_key[key]
        assert info.tile == building.tile and info.subtype == building.subtype
        assert np.allclose(info.bounds, building.polygon.bounds)
        assert info.disaster == building.tile.rsplit("_", 1)[0]
        assert info.disaster_type == DISASTERS[info.disaster]


def test_no_tile_on_both_sides_and_every_class_on_both(clean: XBDFixture) -> None:
    dataset = load(clean.root)
    assert dataset.tiles("train") and dataset.tiles("test")
    assert not dataset.tiles("train") & dataset.tiles("test")
    assert all(dataset.class_counts("train").values()) and all(dataset.class_counts("test").values())


def test_patch_is_the_square_window_of_the_post_image(clean: XBDFixture) -> None:
    dataset = load(clean.root, "?patch=48&margin=0.5&min_window=8")
    for sample in dataset.train[:6]:
        info = dataset.metadata[sample.key]
        left, top, right, bottom = info.window
        min_x, min_y, max_x, max_y = info.bounds
        assert right - left == bottom - top >= max(max_x - min_x, max_y - min_y) * 2
        assert left <= min_x and top <= min_y and right >= max_x and bottom >= max_y
        assert abs((left + right) / 2 - (min_x + max_x) / 2) <= 1
        with Image.open(clean.root / "images" / f"{info.tile}_post_disaster.png") as post:
            expected = crop(post.convert("RGB"), info.window, (48, 48))
        patch = dataset.source.open(sample.key)
        assert patch.size == (48, 48)
        assert np.array_equal(np.asarray(patch), np.asarray(expected))


def test_small_buildings_get_the_minimum_window(clean: XBDFixture) -> None:
    dataset = load(clean.root, "?margin=0&min_window=100")
    assert {info.window[2] - info.window[0] for info in dataset.metadata.values()} == {100}


def test_side_pair_puts_pre_left_and_post_right(clean: XBDFixture) -> None:
    dataset = load(clean.root, "?pair=side&patch=32")
    key = dataset.train[0].key
    side = np.asarray(dataset.source.open(key))
    assert side.shape == (32, 64, 3)
    pre, post = dataset.source.open_pair(key)
    assert np.array_equal(side[:, :32], np.asarray(pre)) and np.array_equal(side[:, 32:], np.asarray(post))
    assert not np.array_equal(np.asarray(pre), np.asarray(post))  # the fixture damages the post image
    assert dataset.images("train", 16).images.shape == (len(dataset.train), 16, 16, 3)


def test_stack_is_refused_by_rgb_stages_and_read_as_six_channels(clean: XBDFixture) -> None:
    dataset = load(clean.root, "?pair=stack")
    with pytest.raises(RSDistillError, match="pair=stack"):
        dataset.images("train", 32)
    with pytest.raises(RSDistillError, match="pair=side"):
        dataset.source.open(dataset.train[0].key)
    stacked = dataset.stacked("test", 24)
    assert stacked.images.shape == (len(dataset.test), 24, 24, 6)
    post = load(clean.root).images("test", 24)
    assert stacked.keys == post.keys
    assert np.array_equal(stacked.images[..., 3:], post.images)


def test_split_is_written_down_and_read_back(clean: XBDFixture) -> None:
    first = load(clean.root)
    written = split_path(clean.root, parse_spec(f"xbd:{clean.root}")[1], 0, 0.2)
    assert written.is_file() and "unit=tile" in written.read_text()
    test_tiles = {line for line in written.read_text().splitlines() if not line.startswith("#")}
    assert test_tiles == first.tiles("test")
    again = load(clean.root)
    assert again.test == first.test and "written earlier" in again.split_origin
    written.write_text("# rsdistill xbd test split: unit=tile\n" + f"{sorted(clean.tiles)[0]}\n")
    assert load(clean.root).tiles("test") == {sorted(clean.tiles)[0]}


def test_split_file_for_another_unit_is_refused(clean: XBDFixture, tmp_path: Path) -> None:
    split = tmp_path / "split.txt"
    load(clean.root, "?split=disaster", split_file=split)
    with pytest.raises(RSDistillError, match="unit=disaster"):
        load(clean.root, "?split=tile", split_file=split)


def test_split_by_disaster_keeps_events_apart(clean: XBDFixture) -> None:
    dataset = load(clean.root, "?split=disaster")
    events = {split: {dataset.metadata[s.key].disaster for s in dataset.samples(split)}
              for split in ("train", "test")}
    assert events["train"] and events["test"] and not events["train"] & events["test"]


def test_stratified_units_follow_the_fraction_with_whole_units() -> None:
    rng = np.random.default_rng(0)
    shares = [0.7, 0.05, 0.1, 0.15]
    units = {f"t{i}": Counter(dict(enumerate(rng.multinomial(20, shares)))) for i in range(300)}
    test = stratified_units(units, 0.2, seed=3)
    assert test == stratified_units(units, 0.2, seed=3)
    totals, held = Counter(), Counter()
    for name, counts in units.items():
        totals.update(counts)
        if name in test:
            held.update(counts)
    for label, total in totals.items():
        assert 0.17 <= held[label] / total <= 0.23


def test_a_class_in_two_units_gets_a_test_unit() -> None:
    units = {"a": Counter({0: 5}), "b": Counter({0: 4}), "c": Counter({1: 3}), "d": Counter({1: 3})}
    test = stratified_units(units, 0.2, seed=0)
    assert test & {"a", "b"} and test & {"c", "d"}
    assert {"a", "b"} - test and {"c", "d"} - test


def test_disaster_mode_gives_one_tile_per_sample(clean: XBDFixture) -> None:
    dataset = load(clean.root, "?mode=disaster")
    assert dataset.classes == sorted(set(DISASTERS.values()))
    samples = dataset.train + dataset.test
    assert sorted(s.key.split("/")[1] for s in samples) == sorted(clean.tiles)
    for sample in samples:
        info = dataset.metadata[sample.key]
        assert sample.key == f"{info.disaster_type}/{info.tile}"
        assert dataset.classes[sample.label] == DISASTERS[info.disaster]
    assert dataset.source.open(samples[0].key).size == (128, 128)


def test_bad_input_is_named_counted_and_skipped(bad: tuple[Path, BadInputs]) -> None:
    root, expected = bad
    dataset = load(root)
    for kind, names in expected.expected.items():
        found = dataset.report.problems[kind]
        assert len(found) == len(names), kind
        assert all(item.split(" ")[0] == name for item, name in zip(found, names, strict=True)), kind
    tiles = {info.tile for info in dataset.metadata.values()}
    assert not {"socal-fire_00000090", "socal-fire_00000091", "socal-fire_00000092"} & tiles
    kept = Counter(info.subtype for info in dataset.metadata.values() if info.tile == "socal-fire_00000093")
    assert kept == expected.kept_buildings
    clipped = [info for info in dataset.metadata.values() if info.clipped]
    assert len(clipped) == 1 and clipped[0].bounds[0] == 0.0 and clipped[0].uid == "partly-outside"
    tile_mode = load(root, "?mode=disaster")
    assert "socal-fire_00000092" in {info.tile for info in tile_mode.metadata.values()}


def test_missing_pre_image_skips_the_tile_only_when_pairs_need_it(bad: tuple[Path, BadInputs]) -> None:
    root, _ = bad
    (root / "images" / "hurricane-harvey_00000001_pre_disaster.png").unlink()
    assert "hurricane-harvey_00000001" in {i.tile for i in load(root).metadata.values()}
    side = load(root, "?pair=side")
    assert "hurricane-harvey_00000001" not in {i.tile for i in side.metadata.values()}
    assert any("hurricane-harvey_00000001" in item for item in side.report.problems["missing_image"])


def test_unreadable_image_counts_as_missing(bad: tuple[Path, BadInputs]) -> None:
    root, _ = bad
    (root / "images" / "socal-fire_00000001_post_disaster.png").write_bytes(b"not a png")
    dataset = load(root)
    assert "socal-fire_00000001" not in {i.tile for i in dataset.metadata.values()}
    assert any("socal-fire_00000001" in item and "unreadable" in item
               for item in dataset.report.problems["missing_image"])


def test_label_json_without_xbd_structure_is_malformed(bad: tuple[Path, BadInputs]) -> None:
    root, _ = bad
    label = root / "labels" / "hurricane-harvey_00000000_post_disaster.json"
    label.write_text(json.dumps({"features": []}))
    found = load(root).report.problems["malformed_json"]
    assert any("hurricane-harvey_00000000" in item and "features.xy" in item for item in found)


@pytest.mark.parametrize(
    ("query", "named"),
    [("?mode=scene", "mode"), ("?patch=abc", "patch"), ("?bogus=1", "bogus"),
     ("?pair=side&pair=post", "pair"), ("?test=1.5", "test"), ("?split=random", "split")],
)
def test_bad_options_are_refused_by_name(clean: XBDFixture, query: str, named: str) -> None:
    with pytest.raises(RSDistillError, match=named):
        load(clean.root, query)


def test_folders_without_usable_tiles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RSDistillError, match="does not exist"):
        load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RSDistillError, match="no labels/ folder"):
        load(tmp_path / "empty")
    (tmp_path / "broken" / "labels").mkdir(parents=True)
    (tmp_path / "broken" / "labels" / "x-fire_00000000_post_disaster.json").write_text("{")
    with pytest.raises(RSDistillError, match=r"No usable xBD tiles.*malformed_json"):
        load(tmp_path / "broken")


def test_release_layout_with_its_own_test_folder(tmp_path: Path) -> None:
    write_xbd_fixture(tmp_path / "xbd" / "train", tiles_per_disaster=2)
    held = write_xbd_fixture(tmp_path / "xbd" / "test", tiles_per_disaster=1, first_id=50, seed=1)
    dataset = load(tmp_path / "xbd", "?split=folder")
    assert dataset.tiles("test") == set(held.tiles)
    assert len(dataset.tiles("train")) == 8
    pooled = load(tmp_path / "xbd")
    assert len(pooled.tiles("train") | pooled.tiles("test")) == 12


def test_a_pass_over_a_split_decodes_each_tile_once(
    clean: XBDFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = load(clean.root)
    opened: Counter[str] = Counter()
    real_open = Image.open

    def counting_open(path: object, *args: object, **kwargs: object) -> Image.Image:
        opened[Path(str(path)).name] += 1
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    dataset.images("train", 32)
    assert set(opened.values()) == {1}
    assert len(opened) == len(dataset.tiles("train"))


def test_images_are_deterministic_and_feed_an_image_set(clean: XBDFixture, tmp_path: Path) -> None:
    dataset = load(clean.root)
    train = dataset.images("train", 32, cache_dir=tmp_path / "a")
    again = load(clean.root).images("train", 32, cache_dir=tmp_path / "b")
    assert np.array_equal(np.asarray(train.images), np.asarray(again.images)) and train.keys == again.keys
    picks = [int(np.flatnonzero(train.labels == label)[0]) for label in range(len(dataset.classes))]
    chosen = train.subset(picks)
    out = write_image_set(tmp_path / "set", chosen.images, chosen.labels, dataset.classes,
                          records=dataset.records(chosen.keys))
    read = read_image_set(out, dataset.classes)
    assert read.per_class() == dict.fromkeys(dataset.classes, 1)
    assert {r["xbd_tile"] for r in read.records} <= dataset.tiles("train")


def test_cli_data_info_and_xbd_info(bad: tuple[Path, BadInputs], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = bad
    assert main(["data", "info", f"xbd:{root}"]) == 0
    shown = capsys.readouterr()
    assert all(name in shown.out for name in DAMAGE) and "malformed_json 1" in shown.err
    assert main(["xbd", "info", f"xbd:{root}?mode=disaster"]) == 0
    shown = capsys.readouterr().out
    assert "flooding" in shown and "no_buildings 1" in shown and "socal-fire_00000092" in shown
    assert main(["xbd", "info", f"xbd:{root}?pair=cube"]) == 2


def test_the_prototype_stage_takes_xbd_patches(clean: XBDFixture, tmp_path: Path) -> None:
    pytest.importorskip("rsdistill.prototypes.coreset")
    out = tmp_path / "kmeans"
    spec = f"xbd:{clean.root}?pair=side"
    argv = ["coreset", "--dataset", spec, "--method", "kmeans", "--encoder", "pixels", "--ipc", "2",
            "--resolution", "32", "--out", str(out)]
    assert main(argv) == 0
    chosen = read_image_set(out, sorted(DAMAGE))
    assert chosen.per_class() == dict.fromkeys(sorted(DAMAGE), 2)
    train_keys = {s.key for s in load(clean.root, "?pair=side").train}
    assert {r["source_key"] for r in chosen.records} <= train_keys
