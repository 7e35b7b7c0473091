"""Coreset baselines: selection rules on hand-made features, and sets written in the common format."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rsdistill.cli.main import main
from rsdistill.core.config import PrototypeConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.imageset import read_image_set
from rsdistill.data.sources import load_dataset
from rsdistill.prototypes import herding, kcenter, select_coreset, write_coreset
from tests.prototypes_helpers import blobs


def test_herding_matches_the_mean_greedily() -> None:
    x = np.array([[0.0], [1.0], [2.0], [10.0]])  # mean 3.25
    chosen = herding(x, 3)
    assert chosen[0] == 2  # 2 is nearest the mean
    assert chosen[1] == 1  # running means: (2 + 1) / 2 = 1.5 is nearer 3.25 than (2 + 10) / 2 = 6
    assert chosen[2] == 3  # (3 + 10) / 3 = 4.33 is nearer than (3 + 0) / 3 = 1
    assert len(set(herding(x, 4))) == 4


def test_kcenter_starts_near_the_mean_then_goes_far() -> None:
    x = np.array([[0.0], [4.0], [5.0], [6.0], [20.0]])  # mean 7
    assert kcenter(x, 3) == [3, 4, 0]


def test_select_coreset_per_class_counts_and_determinism() -> None:
    features = blobs([10, 12, 8], dim=4)
    labels = np.repeat([0, 1, 2], [10, 12, 8])
    for method in ("random", "herding", "kcenter", "kmeans"):
        picks = select_coreset(method, features, labels, ipc=3, seed=1)
        assert Counter(labels[picks].tolist()) == {0: 3, 1: 3, 2: 3}
        assert len(set(picks.tolist())) == 9
        assert np.array_equal(picks, select_coreset(method, features, labels, ipc=3, seed=1))
    assert not np.array_equal(
        select_coreset("random", None, labels, ipc=3, seed=1),
        select_coreset("random", None, labels, ipc=3, seed=2),
    )


def test_kmeans_coreset_takes_one_medoid_per_blob() -> None:
    features = blobs([6, 6, 6], dim=4, spread=0.01)  # one class, three tight blobs
    picks = select_coreset("kmeans", features, np.zeros(18, dtype=int), ipc=3, nredo=10)
    assert sorted(p // 6 for p in picks) == [0, 1, 2]


def test_select_coreset_refuses_bad_requests() -> None:
    labels = np.array([0, 0, 1])
    with pytest.raises(RSDistillError, match="'lake' has 1"):
        select_coreset("random", None, labels, ipc=2, classes=["forest", "lake"])
    with pytest.raises(RSDistillError, match="needs features"):
        select_coreset("herding", None, labels, ipc=1)
    with pytest.raises(RSDistillError, match="kcenter"):
        select_coreset("greedy", None, labels, ipc=1)


@pytest.mark.parametrize("method", ["random", "herding", "kcenter", "kmeans"])
def test_write_coreset_common_format(
    make_imagefolder: Callable[..., Path], tmp_path: Path, method: str
) -> None:
    dataset = load_dataset(f"imagefolder:{make_imagefolder(test_per_class=3)}")
    out = write_coreset(RunContext.of(dataset, seed=0, resolution=16), PrototypeConfig(), tmp_path / method, method, 2,
                        encoder="pixels:8")
    coreset = read_image_set(out, dataset.classes)
    assert coreset.per_class() == {"forest": 2, "lake": 2, "town": 2}
    assert coreset.images.shape == (6, 16, 16, 3)
    sources = [r["source_key"] for r in coreset.records]
    train = {s.key for s in dataset.train}
    assert set(sources) <= train and len(set(sources)) == 6
    assert all(r["method"] == method and r["seed"] == 0 and r["ipc"] == 2 for r in coreset.records)
    assert all(r["encoder"] == (None if method == "random" else "pixels:8") for r in coreset.records)
    # The set holds the decoded train images themselves.
    images = dataset.images("train", 16)
    first = images.keys.index(sources[0])
    assert np.array_equal(coreset.images[0], images.images[first])


def test_cli_coreset(
    make_imagefolder: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_imagefolder(test_per_class=2)
    out = tmp_path / "herding"
    args = ["coreset", "--dataset", f"imagefolder:{root}", "--resolution", "16", "--encoder", "pixels:4"]
    assert main([*args, "--method", "herding", "--ipc", "3", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 9 and {line["label"] for line in lines} == {"forest", "lake", "town"}
    assert main([*args, "--method", "kcenter", "--ipc", "9", "--out", str(tmp_path / "x")]) == 2
    assert "has 6" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main([*args, "--method", "random", "--ipc", "1", "--out", str(tmp_path / "busy")]) == 2
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
