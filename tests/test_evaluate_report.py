"""`rsdistill evaluate` end to end on fake data: report, baselines, full reference, bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rsdistill.cli.main import main
from rsdistill.core.config import EvalConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.imageset import write_image_set
from rsdistill.evaluate.evaluation import evaluate_sets
from rsdistill.evaluate.protocol import Trainer
from rsdistill.evaluate.scoring import Scorer
from rsdistill.evaluate.teacher import full_reference, load_feature_extractor
from tests.evaluate_helpers import RESOLUTION, TINY, MakeFolder, fake_dataset, set_from_train

Capture = pytest.CaptureFixture[str]
FAST = ["--resolution", str(RESOLUTION), "--steps", "3", "--no-compile", "--precision", "fp32", "--full-passes", "2"]


def test_evaluate_cli_writes_the_report(make_imagefolder: MakeFolder, tmp_path: Path, capsys: Capture) -> None:
    dataset = fake_dataset(make_imagefolder)
    set_dir = set_from_train(dataset, tmp_path / "coreset-ipc2", 2, records=True)
    out = tmp_path / "report"
    code = main(["evaluate", str(set_dir), "--dataset", dataset.name, "--out", str(out), "--runs", "2", *FAST,
                 "--metrics", "privacy,mia"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    set_row, random_row = report["rows"]
    assert set_row["name"] == "coreset-ipc2" and set_row["method"] == "random" and set_row["ipc"] == 2
    assert len(set_row["accuracy"]["runs"]) == 2 and set_row["accuracy"]["seeds"] == [0, 1]
    assert set_row["accuracy"]["std"] == pytest.approx(np.std(set_row["accuracy"]["runs"]))
    assert set_row["ratio_to_full"] == pytest.approx(set_row["accuracy"]["mean"] / report["full"]["accuracy"])
    real_bytes = sum((Path(dataset.location) / s.key).stat().st_size for s in dataset.train)
    assert set_row["storage_ratio"] == pytest.approx(set_row["storage_bytes"] / real_bytes)
    assert random_row["method"] == "random" and random_row["ipc"] == 2
    assert report["protocol_label"] == "convnet3-16px-3steps-hard-fp32"
    privacy = set_row["metrics"]["privacy"]
    assert privacy["near_copies"] == 6 and privacy["ssim_max"] == pytest.approx(1.0)  # real images: all copies
    train_keys = {s.key for s in dataset.train}
    assert all(item["real_key"] in train_keys for item in privacy["nearest"])
    mia = set_row["metrics"]["mia"]
    assert mia["sources"] == 6 and 0.0 <= mia["set_model_auc_train_vs_test"] <= 1.0
    for name in ("report.md", "accuracy_vs_ipc.png", "samples_coreset-ipc2.png", "nearest_coreset-ipc2.png"):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    assert "| coreset-ipc2 | random | 2 |" in md and "convnet3-16px-3steps-hard-fp32" in md


def test_full_reference_is_cached_exported_and_never_sees_test_images(
    make_imagefolder: MakeFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = fake_dataset(make_imagefolder)
    scorer = Scorer.for_dataset(dataset, TINY, compile=False)
    seen: list[torch.Tensor] = []
    original = Trainer.train

    def spy(self: Trainer, images: torch.Tensor, *args: object, **kwargs: object) -> torch.nn.Module:
        seen.append(images.clone())
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", spy)
    first = full_reference(dataset, scorer, passes=2)
    assert len(seen) == 1 and len(seen[0]) == len(dataset.train)
    test = scorer.test_images.flatten(1)
    assert not (seen[0].flatten(1)[:, None, :] == test[None]).all(-1).any()
    assert first.record["steps"] == 2 * (len(dataset.train) // 8) and first.record["n_train"] == len(dataset.train)
    again = full_reference(dataset, scorer, passes=2)
    assert len(seen) == 1 and again.accuracy == first.accuracy  # cached, not retrained
    extractor, config = load_feature_extractor(first.extractor)
    assert config["dim"] == 128 * 2 * 2 and config["resolution"] == RESOLUTION
    assert config["dataset_fingerprint"] == dataset.fingerprint
    x = torch.rand(3, 3, RESOLUTION, RESOLUTION)
    expected = first.model.features((x - scorer.normalizer.mean) / scorer.normalizer.std)
    assert torch.allclose(extractor(x), expected, atol=1e-5)


def test_soft_labels_and_real_plus_set(make_imagefolder: MakeFolder, tmp_path: Path) -> None:
    dataset = fake_dataset(make_imagefolder)
    set_dir = set_from_train(dataset, tmp_path / "s", 1)
    config = EvalConfig(steps=2, runs=1, labels="soft", compile=False, precision="fp32",
                        baselines=[], full_passes=2)
    report = evaluate_sets(RunContext.of(dataset, resolution=RESOLUTION), config, tmp_path / "soft", [set_dir])
    assert report["rows"][0]["n_train"] == 3 and "soft-T4" in report["protocol_label"]
    config = EvalConfig(steps=2, runs=1, train_on="real+set", compile=False,
                        precision="fp32", baselines=[])
    report = evaluate_sets(RunContext.of(dataset, resolution=RESOLUTION), config, None, [set_dir])
    assert report["rows"][0]["n_train"] == len(dataset.train) + 3


def test_random_baseline_alone_at_given_ipcs(make_imagefolder: MakeFolder, tmp_path: Path) -> None:
    dataset = fake_dataset(make_imagefolder)
    config = EvalConfig(steps=2, runs=2, compile=False, precision="fp32", baselines=["random"],
                        ipc=[1, 3])
    report = evaluate_sets(RunContext.of(dataset, resolution=RESOLUTION), config, tmp_path / "r", [])
    assert [(r["method"], r["ipc"], r["n_train"]) for r in report["rows"]] == [("random", 1, 3), ("random", 3, 9)]


def test_training_on_real_data_alone(make_imagefolder: MakeFolder, tmp_path: Path) -> None:
    dataset = fake_dataset(make_imagefolder)
    config = EvalConfig(steps=2, runs=1, train_on="real", compile=False, precision="fp32",
                        baselines=[])
    report = evaluate_sets(RunContext.of(dataset, resolution=RESOLUTION), config, None, [])
    assert [(r["method"], r["n_train"]) for r in report["rows"]] == [("real", len(dataset.train))]
    with pytest.raises(RSDistillError, match="give no SET"):
        evaluate_sets(RunContext.of(dataset, resolution=RESOLUTION), config, None, [tmp_path])


def test_class_names_that_differ_are_listed(make_imagefolder: MakeFolder, tmp_path: Path, capsys: Capture) -> None:
    dataset = fake_dataset(make_imagefolder)
    images = np.zeros((2, 8, 8, 3), np.uint8)
    bad = write_image_set(tmp_path / "bad", images, np.array([0, 1]), ["forest", "desert"])
    code = main(["evaluate", str(bad), "--dataset", dataset.name, "--out", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "desert" in err and "lake" in err and "town" in err and "Traceback" not in err


def test_uneven_set_is_scored_and_labelled(make_imagefolder: MakeFolder, tmp_path: Path) -> None:
    dataset = fake_dataset(make_imagefolder)
    set_dir = set_from_train(dataset, tmp_path / "uneven", 2)
    shutil.rmtree(set_dir / "town")
    lines = [line for line in (set_dir / "metadata.jsonl").read_text().splitlines() if '"town/' not in line]
    train = dataset.images("train", RESOLUTION)
    town = np.flatnonzero(train.labels == 2)[:1]
    other = write_image_set(tmp_path / "t", np.asarray(train.images[town]), train.labels[town], dataset.classes)
    shutil.copytree(other / "town", set_dir / "town")
    lines += (other / "metadata.jsonl").read_text().splitlines()
    (set_dir / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    config = EvalConfig(steps=2, runs=1, compile=False, precision="fp32", baselines=["random"])
    report = evaluate_sets(RunContext.of(dataset, resolution=RESOLUTION), config, tmp_path / "out", [set_dir])
    row = report["rows"][0]
    assert row["uneven"] and row["per_class"] == {"forest": 2, "lake": 2, "town": 1}
    assert len(report["rows"]) == 1  # no random baseline at an uneven IPC
    assert "uneven 1–2" in (tmp_path / "out" / "report.md").read_text()


def test_unreadable_image_is_named(make_imagefolder: MakeFolder, tmp_path: Path) -> None:
    dataset = fake_dataset(make_imagefolder)
    set_dir = set_from_train(dataset, tmp_path / "broken", 1)
    victim = next((set_dir / "lake").iterdir())
    victim.write_bytes(b"not a png")
    with pytest.raises(RSDistillError, match=victim.name):
        evaluate_sets(RunContext.of(dataset, resolution=RESOLUTION), EvalConfig(compile=False), None, [set_dir])


def test_unknown_options_are_refused(make_imagefolder: MakeFolder, tmp_path: Path) -> None:
    dataset = fake_dataset(make_imagefolder)
    with pytest.raises(RSDistillError, match="rsdistill coreset"):
        evaluate_sets(RunContext.of(dataset, resolution=RESOLUTION), EvalConfig(baselines=["herding"]), None, [])
    with pytest.raises(RSDistillError, match="Unknown metric"):
        evaluate_sets(RunContext.of(dataset, resolution=RESOLUTION), EvalConfig(metrics=["beauty"]), None, [])


@pytest.mark.slow
def test_real_ucmerced_set_is_scored_on_the_whole_test_split(tmp_path: Path) -> None:
    from rsdistill.data.sources import load_dataset
    from tests.conftest import require_real

    require_real("ucmerced")
    dataset = load_dataset("ucmerced")
    set_dir = set_from_train(dataset, tmp_path / "ucm", 1)
    config = EvalConfig(steps=2, runs=1, compile=False, baselines=["random"])
    report = evaluate_sets(RunContext.of(dataset, resolution=RESOLUTION), config, None, [set_dir])
    assert [r["n_train"] for r in report["rows"]] == [21, 21]
    assert report["real_train_bytes"] > 0 and 0 < report["rows"][0]["storage_ratio"] < 0.01


def test_report_folder_is_a_stage_that_resumes_from_finished_runs(
    make_imagefolder: MakeFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = fake_dataset(make_imagefolder)
    set_dir = set_from_train(dataset, tmp_path / "s", 1)
    config = EvalConfig(steps=2, runs=3, compile=False, precision="fp32", baselines=["random"], metrics=["mia"])
    context = RunContext.of(dataset, resolution=RESOLUTION)
    reference = evaluate_sets(context, config, None, [set_dir])
    original, seeds = Scorer.run, []

    def interrupted_after_four(self: Scorer, *args: object, **kwargs: object) -> object:
        if len(seeds) == 4:
            raise RuntimeError("interrupted")
        seeds.append(args[1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Scorer, "run", interrupted_after_four)
    out = tmp_path / "report"
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate_sets(context, config, out, [set_dir])
    assert len(list((tmp_path / ".report.partial" / "runs").rglob("seed-*.json"))) == 4
    seeds.clear()
    monkeypatch.setattr(Scorer, "run", lambda self, *a, **k: seeds.append(a[1]) or original(self, *a, **k))
    report = evaluate_sets(context, config, out, [set_dir])
    assert seeds == [1, 2]  # the random baseline's last two runs; the set's three and its first were kept
    assert [row["accuracy"] for row in report["rows"]] == [row["accuracy"] for row in reference["rows"]]
    assert report["rows"][0]["metrics"]["mia"] == reference["rows"][0]["metrics"]["mia"]  # first model reloaded
    manifest = json.loads((out / "manifest.json").read_text())
    assert not any(name.startswith("runs/") for name in manifest["files"])
    seeds.clear()
    assert evaluate_sets(context, config, out, [set_dir])["rows"] == report["rows"] and seeds == []  # kept
    with pytest.raises(RSDistillError, match="--overwrite"):
        evaluate_sets(RunContext.of(dataset, resolution=RESOLUTION, overwrite=False), replace(config, runs=2), out,
                      [set_dir])
    lake = next((set_dir / "lake").iterdir())
    lake.write_bytes(next((set_dir / "forest").iterdir()).read_bytes())  # the set changed: it is scored again
    evaluate_sets(context, config, out, [set_dir])
    assert len(seeds) == 6
