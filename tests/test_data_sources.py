from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsdistill.cli.main import main
from rsdistill.core.errors import RSDistillError
from rsdistill.data.sources import load_dataset


def hf_dataset(tmp_path: Path, with_test: bool) -> Path:
    import datasets

    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})

    def table(n: int) -> datasets.Dataset:
        images = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]}, features=features)

    splits = {"train": table(10)} | ({"test": table(4)} if with_test else {})
    path = tmp_path / ("hf_split" if with_test else "hf_plain")
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("with_test", [True, False])
def test_hf_source(tmp_path: Path, with_test: bool) -> None:
    dataset = load_dataset(f"hf:{hf_dataset(tmp_path, with_test)}")
    assert dataset.classes == ["a", "b"]
    assert (len(dataset.train), len(dataset.test)) == ((10, 4) if with_test else (8, 2))
    array = dataset.images("train", 8)
    assert array.images.shape == (len(dataset.train), 8, 8, 3)


def test_hf_source_missing_offline(tmp_path: Path) -> None:
    with pytest.raises(RSDistillError, match="Could not load the Hugging Face dataset"):
        load_dataset("hf:nobody/no-such-dataset-here")


def test_unknown_spec() -> None:
    with pytest.raises(RSDistillError, match="Unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_data_info_cli(make_imagefolder, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_imagefolder(test_per_class=2)
    assert main(["data", "info", f"imagefolder:{root}"]) == 0
    out = capsys.readouterr().out
    assert "classes   3" in out and "train     18" in out and "32x32 (18)" in out and "not decoded" in out


def test_cli_reports_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "eurosat", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Dataset 'eurosat' not found") and "Traceback" not in err


def test_export_imagefolder_gives_a_loadable_dataset(tmp_path: Path) -> None:
    import datasets

    from rsdistill.data.hf import export_imagefolder

    splits = datasets.load_from_disk(str(hf_dataset(tmp_path, with_test=True)))
    root = export_imagefolder(splits, tmp_path / "exported")
    dataset = load_dataset(f"imagefolder:{root}")
    assert dataset.classes == ["a", "b"] and (len(dataset.train), len(dataset.test)) == (10, 4)
    assert dataset.split_origin.endswith("test.txt")
