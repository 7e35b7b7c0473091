from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rsdistill.core.errors import RSDistillError
from rsdistill.data.dataset import load_images, stratified_holdout
from rsdistill.data.sources import load_dataset
from tests.conftest import REAL_DATA, require_real


def test_imagefolder_with_test_txt(make_imagefolder) -> None:
    root = make_imagefolder(test_per_class=2)
    dataset = load_dataset(f"imagefolder:{root}")
    assert dataset.classes == ["forest", "lake", "town"]
    assert len(dataset.test) == 6 and len(dataset.train) == 18
    assert dataset.test_keys() == set((root / "test.txt").read_text().split())
    assert not dataset.test_keys() & {s.key for s in dataset.train}


def test_generated_split_is_written_and_reused(make_imagefolder, tmp_path: Path) -> None:
    root = make_imagefolder(counts={"a": 10, "b": 7})
    split_file = tmp_path / "run" / "split-test.txt"
    first = load_dataset(f"imagefolder:{root}", split_file=split_file)
    assert split_file.is_file()
    second = load_dataset(f"imagefolder:{root}", split_file=split_file)
    third = load_dataset(f"imagefolder:{root}")  # default location, same seed
    assert first.test_keys() == second.test_keys() == third.test_keys()
    assert first.class_counts("test") == {"a": 2, "b": 1}
    other_seed = load_dataset(f"imagefolder:{root}", split_seed=1)
    assert other_seed.test_keys() != first.test_keys()


def test_missing_root_names_where_data_is_expected(tmp_path: Path) -> None:
    with pytest.raises(RSDistillError, match=r"nowhere.*eurosat.*RSDISTILL_DATA"):
        load_dataset("eurosat", root=tmp_path / "nowhere")
    with pytest.raises(RSDistillError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'absent'}")


def test_empty_class_folder_is_named(make_imagefolder) -> None:
    root = make_imagefolder()
    (root / "desert").mkdir()
    with pytest.raises(RSDistillError, match=r"desert holds no images"):
        load_dataset(f"imagefolder:{root}")


def test_test_txt_naming_missing_files(make_imagefolder) -> None:
    root = make_imagefolder(test_per_class=1)
    with (root / "test.txt").open("a") as f:
        f.write("forest/ghost.png\n")
    with pytest.raises(RSDistillError, match=r"1 file\(s\) that do not exist.*forest/ghost.png"):
        load_dataset(f"imagefolder:{root}")


def test_class_missing_from_test_split(make_imagefolder) -> None:
    root = make_imagefolder(test_per_class=1)
    lines = [line for line in (root / "test.txt").read_text().split() if not line.startswith("town/")]
    (root / "test.txt").write_text("\n".join(lines))
    with pytest.raises(RSDistillError, match=r"no test images for class\(es\) town"):
        load_dataset(f"imagefolder:{root}")


def test_corrupt_image_stop_or_skip(make_imagefolder, tmp_path: Path) -> None:
    root = make_imagefolder(test_per_class=2)
    bad = root / "lake" / "lake_007.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    (root / "town" / "town_005.png").write_text("not an image at all")
    dataset = load_dataset(f"imagefolder:{root}")
    cache = tmp_path / "c"
    with pytest.raises(RSDistillError, match=r"lake_007.png.*--on-bad-image skip"):
        load_images(dataset, "train", 16, cache_dir=cache)
    assert not any(cache.rglob("*.json"))  # nothing half-written was left as a valid cache
    array = load_images(dataset, "train", 16, cache_dir=cache, on_bad_image="skip")
    assert len(array) == len(dataset.train) - 2
    assert set(array.skipped) == {"lake/lake_007.png", "town/town_005.png"}
    again = load_images(dataset, "train", 16, cache_dir=cache)  # the cache remembers the decision
    assert again.skipped == array.skipped and len(again) == len(array)


def test_images_are_resized_cached_and_equal(make_imagefolder, tmp_path: Path) -> None:
    root = make_imagefolder(size=40, test_per_class=2)
    dataset = load_dataset(f"imagefolder:{root}")
    first = dataset.images("train", 24, cache_dir=tmp_path)
    assert first.images.shape == (18, 24, 24, 3) and first.images.dtype == np.uint8
    second = dataset.images("train", 24, cache_dir=tmp_path)
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.keys == [s.key for s in dataset.train]


def test_threads_decoding_the_same_split_at_once_both_succeed(make_imagefolder, tmp_path: Path) -> None:
    root = make_imagefolder(size=40, test_per_class=2)
    dataset = load_dataset(f"imagefolder:{root}")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: dataset.images("train", 24, cache_dir=tmp_path).images, range(2)))
    np.testing.assert_array_equal(results[0], results[1])
    assert not [p for p in tmp_path.rglob(".*tmp*")], "temporary files left behind"


def test_stratified_holdout_keeps_every_class() -> None:
    labels = np.repeat(np.arange(4), [10, 5, 3, 2])
    kept, held = stratified_holdout(labels, 0.2, seed=0)
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(len(labels)))
    assert set(labels[held]) == {0, 1, 2, 3} and set(labels[kept]) == {0, 1, 2, 3}
    again, _ = stratified_holdout(labels, 0.2, seed=0)
    np.testing.assert_array_equal(kept, again)


@pytest.mark.parametrize(
    ("name", "classes", "train", "test"), [("eurosat", 10, 21600, 5400), ("ucmerced", 21, 1680, 420)]
)
def test_real_dataset_split(name: str, classes: int, train: int, test: int) -> None:
    folder = require_real(name)
    dataset = load_dataset(name, root=REAL_DATA)
    assert (len(dataset.classes), len(dataset.train), len(dataset.test)) == (classes, train, test)
    assert dataset.test_keys() == set((folder / "test.txt").read_text().split())
