"""Per-class k-means, representative rules and the prototypes stage, on fake data."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rsdistill.cli.main import main
from rsdistill.core.config import PrototypeConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import default_cache_root
from rsdistill.data.sources import load_dataset
from rsdistill.prototypes import Features, build_prototypes, cluster, load_prototypes, run_prototypes
from rsdistill.prototypes.kmeans import Clustering, faiss_gpu, faiss_has_gpu
from rsdistill.prototypes.representatives import choose_representatives
from rsdistill.prototypes.stage import stage_settings
from tests.prototypes_helpers import blobs


def keys_for(n: int, prefix: str = "c") -> list[str]:
    return [f"{prefix}/{i:04d}.png" for i in range(n)]


def test_cluster_finds_blobs_numbered_by_decreasing_size() -> None:
    x = blobs([5, 12, 8])
    result = cluster(x, keys_for(len(x)), k=3, nredo=10, seed=0)
    assert result.sizes.tolist() == [12, 8, 5]
    # Each blob lands in one cluster: the blob of 12 (rows 5..16) is cluster 0.
    assert set(result.assignment[5:17].tolist()) == {0}
    assert set(result.assignment[17:].tolist()) == {1}
    assert set(result.assignment[:5].tolist()) == {2}
    nearest = np.linalg.norm(x[:, None, :] - result.centroids[None], axis=2).argmin(axis=1)
    assert np.array_equal(nearest, result.assignment)


def test_cluster_ties_broken_by_smallest_member_key() -> None:
    x = blobs([4, 4])
    keys = ["b/1", "b/2", "b/3", "b/4", "a/1", "a/2", "a/3", "a/4"]
    result = cluster(x, keys, k=2, seed=3)
    assert result.assignment[4] == 0  # the blob holding "a/1" comes first


def test_cluster_edge_cases_k1_k_equals_n_and_duplicates() -> None:
    x = blobs([6])
    single = cluster(x, keys_for(6), k=1)
    assert np.allclose(single.centroids[0], x.mean(axis=0), atol=1e-5)
    exact = cluster(x, keys_for(6), k=6)
    assert sorted(exact.sizes.tolist()) == [1] * 6
    duplicates = np.repeat(blobs([2]), 3, axis=0)  # 2 distinct points, 6 rows, 4 clusters asked
    result = cluster(duplicates, keys_for(6), k=4)
    assert (result.sizes > 0).all() and result.sizes.sum() == 6


def hand_clustering() -> Clustering:
    # Two clusters on a line: centroids at 0 and 10; members 0: {-1, 1, 4}, 1: {9, 12}.
    x = np.array([[-1.0], [1.0], [4.0], [9.0], [12.0]])
    centroids = np.array([[0.0], [10.0]], dtype=np.float32)
    distances = np.abs(x - centroids.T)
    return Clustering(centroids, np.array([0, 0, 0, 1, 1]), distances)


def test_representative_rules() -> None:
    clustering = hand_clustering()
    keys = ["m", "a", "b", "c", "d"]
    medoid, _ = choose_representatives(clustering, keys, "medoid")
    # Cluster 0: -1 and 1 tie at distance 1, key "a" < "m" wins; cluster 1: 9 is nearest.
    assert medoid.tolist() == [1, 3]
    margin, scores = choose_representatives(clustering, keys, "dpd-margin", alpha=1.0)
    # Scores: -1 -> 11-1=10, 1 -> 9-1=8, 4 -> 6-4=2; 9 -> 9-1=8, 12 -> 12-2=10.
    assert np.allclose(scores, [10, 8, 2, 8, 10])
    assert margin.tolist() == [0, 4]
    far, _ = choose_representatives(clustering, keys, "dpd-margin", alpha=0.0)
    assert far.tolist() == [0, 4]
    with pytest.raises(RSDistillError, match="rule"):
        choose_representatives(clustering, keys, "nearest")


def fake_features(sizes: dict[str, int], dim: int = 6) -> tuple[Features, list[str]]:
    classes = sorted(sizes)
    parts, labels, keys = [], [], []
    for label, name in enumerate(classes):
        parts.append(blobs([sizes[name] // 2, sizes[name] - sizes[name] // 2], dim=dim, seed=label))
        labels += [label] * sizes[name]
        keys += keys_for(sizes[name], name)
    return Features(np.concatenate(parts), np.asarray(labels), keys), classes


def test_build_prototypes_follows_the_contract() -> None:
    features, classes = fake_features({"forest": 9, "lake": 7})
    result = build_prototypes(features, classes, PrototypeConfig(encoder="pixels", ipc=3), seed=0)
    assert [p.id for p in result.prototypes] == [f"{c}/{j}" for c in classes for j in range(3)]
    assert result.centroids.shape == (6, 6) and result.centroids.dtype == np.float32
    for i, prototype in enumerate(result.prototypes):
        class_keys = {
            k for k, label in zip(features.keys, features.labels, strict=True) if label == prototype.label
        }
        assert set(prototype.members) <= class_keys
        assert prototype.source_key in prototype.members
        assert prototype.cluster_size == len(prototype.members) == len(prototype.member_distances)
        assert prototype.member_distances == sorted(prototype.member_distances)
        row = features.keys.index(prototype.source_key)
        assert np.array_equal(result.representatives[i], features.features[row])
    for label, name in enumerate(classes):
        members = [m for p in result.of_class(name) for m in p.members]
        assert sorted(members) == sorted(
            k for k, lab in zip(features.keys, features.labels, strict=True) if lab == label
        )
        sizes = [p.cluster_size for p in result.of_class(name)]
        assert sizes == sorted(sizes, reverse=True)


def test_ipc_larger_than_a_class_names_the_class_and_count() -> None:
    features, classes = fake_features({"forest": 9, "lake": 4})
    with pytest.raises(RSDistillError, match=r"'lake' has 4"):
        build_prototypes(features, classes, PrototypeConfig(ipc=5))


def test_small_classes_noted_once_without_faiss_warnings(capfd: pytest.CaptureFixture[str]) -> None:
    features, classes = fake_features({"forest": 9, "lake": 7})
    build_prototypes(features, classes, PrototypeConfig(ipc=3))
    out, err = capfd.readouterr()
    assert out.count("note: faiss k-means") == 1 and "forest (9)" in out and "lake (7)" in out
    assert "WARNING" not in out + err


def sha256s(folder: Path) -> dict[str, str]:
    names = ("prototypes.json", "centroids.npy", "representatives.npy")
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def test_stage_writes_train_prototypes_and_is_byte_identical(
    make_imagefolder: Callable[..., Path], tmp_path: Path
) -> None:
    root = make_imagefolder({"forest": 7, "lake": 6, "town": 6}, test_per_class=2)
    dataset = load_dataset(f"imagefolder:{root}")
    config = PrototypeConfig(encoder="pixels", ipc=2)
    first = run_prototypes(RunContext.of(dataset, seed=3, resolution=16), config, tmp_path / "run1" / "prototypes")
    assert first == tmp_path / "run1" / "prototypes"
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["stage"] == "prototypes" and manifest["prototypes"] == 6
    loaded = load_prototypes(first)
    assert loaded.ipc == 2 and loaded.classes == ["forest", "lake", "town"] and loaded.seed == 3
    train_keys = {s.key for s in dataset.train}
    assert {p.source_key for p in loaded.prototypes} <= train_keys
    assert not {m for p in loaded.prototypes for m in p.members} & dataset.test_keys()
    assert sum(p.cluster_size for p in loaded.prototypes) == len(dataset.train)

    shutil.rmtree(default_cache_root() / "features")  # the second run encodes again
    second = run_prototypes(RunContext.of(dataset, seed=3, resolution=16), config, tmp_path / "run2" / "prototypes")
    assert sha256s(first) == sha256s(second)
    other_seed = run_prototypes(RunContext.of(dataset, seed=4, resolution=16), config, tmp_path / "run3" / "prototypes")
    assert json.loads((other_seed / "prototypes.json").read_text())["seed"] == 4


def test_stage_is_skipped_when_done_and_refuses_other_settings(
    make_imagefolder: Callable[..., Path], tmp_path: Path
) -> None:
    dataset = load_dataset(f"imagefolder:{make_imagefolder(test_per_class=2)}")
    config = PrototypeConfig(encoder="pixels", ipc=2)
    folder = run_prototypes(RunContext.of(dataset, resolution=16), config, tmp_path / "prototypes")
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    run_prototypes(RunContext.of(dataset, resolution=16), config, tmp_path / "prototypes")
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(RSDistillError, match="--overwrite"):
        run_prototypes(RunContext.of(dataset, resolution=16, overwrite=False), PrototypeConfig(encoder="pixels", ipc=3),
                       tmp_path / "prototypes")
    run_prototypes(RunContext.of(dataset, resolution=16), PrototypeConfig(encoder="pixels", ipc=3),
                   tmp_path / "prototypes")
    assert load_prototypes(folder).ipc == 3


def test_cli_prototypes(
    make_imagefolder: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_imagefolder(test_per_class=2)
    args = ["prototypes", "--dataset", f"imagefolder:{root}", "--resolution", "16", "--encoder", "pixels:8"]
    assert main([*args, "--ipc", "3", "--rule", "medoid", "--out", str(tmp_path / "run")]) == 0
    assert "9 prototypes (3 classes, 3-3 per class, rule medoid)" in capsys.readouterr().out
    assert load_prototypes(tmp_path / "run" / "prototypes").encoder == "pixels:8"
    assert main([*args, "--ipc", "7", "--out", str(tmp_path / "big")]) == 2
    assert "has 6" in capsys.readouterr().err


def test_load_prototypes_explains_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(RSDistillError, match="rsdistill prototypes"):
        load_prototypes(tmp_path)


def test_faiss_device_setting() -> None:
    assert faiss_gpu("cpu") is False and faiss_gpu("auto") == faiss_has_gpu()
    with pytest.raises(RSDistillError, match="faiss_device 'tpu'"):
        faiss_gpu("tpu")
    if not faiss_has_gpu():
        with pytest.raises(RSDistillError, match="faiss-gpu"):
            faiss_gpu("gpu")
    # `auto` leaves the stage's settings as they were before the setting existed; a forced device is recorded
    assert "faiss_device" not in stage_settings(PrototypeConfig())
    assert stage_settings(PrototypeConfig(faiss_device="cpu"))["faiss_device"] == "cpu"
