"""`rsdistill export` and the privacy verdict on tiny fake data.

The fake dataset gives every train image a test "twin" (the same noise image, re-noised slightly), so the
test-to-train distances are tiny and a classifier's loss cannot tell train from test: a set of fresh noise
images passes the verdict for sure, and a set of real train images (a coreset) fails it for sure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rsdistill.cli.main import main
from rsdistill.core.config import RunConfig, dump_config
from rsdistill.data.dataset import SceneDataset
from rsdistill.data.imageset import write_image_set
from rsdistill.data.sources import load_dataset
from rsdistill.export.card import redact
from rsdistill.export.source import RUN_SPLIT_FILE
from rsdistill.export.thresholds import Thresholds
from rsdistill.export.verdict import judge

Capture = pytest.CaptureFixture[str]
CLASSES = ["forest", "lake", "town"]
SIZE = 16
PER_CLASS = 6
FAST_EVAL = ["--steps", "3", "--no-compile", "--precision", "fp32"]


def twin_dataset(root: Path) -> SceneDataset:
    """Per class, PER_CLASS noise images for train and a slightly re-noised twin of each for test."""
    rng = np.random.default_rng(0)
    tests = []
    for index, name in enumerate(CLASSES):
        for i in range(PER_CLASS):
            image = np.clip(rng.normal(60 + 60 * index, 40, (SIZE, SIZE, 3)), 0, 255)
            twin = np.clip(image + rng.normal(0, 2, image.shape), 0, 255)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.astype(np.uint8)).save(root / name / f"{name}_{i:03d}.png")
            Image.fromarray(twin.astype(np.uint8)).save(root / name / f"{name}_{i:03d}_twin.png")
            tests.append(f"{name}/{name}_{i:03d}_twin.png")
    (root / "test.txt").write_text("\n".join(tests) + "\n")
    return load_dataset(f"imagefolder:{root}")


def synthetic_set(dataset: SceneDataset, out: Path, ipc: int = 2) -> Path:
    """Fresh noise images, with the provenance fields a generated set carries (naming real train images)."""
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(len(CLASSES)), ipc)
    images = rng.integers(0, 256, (len(labels), SIZE, SIZE, 3), dtype=np.uint8)
    keys = [s.key for s in dataset.train]
    records = [{"text": f"a satellite image of {CLASSES[label]}", "method": "dpd", "source_key": keys[i],
                "nearest_key": keys[-1 - i], "nearest_real": keys[i + 1], "prototype": f"p{i}"}
               for i, label in enumerate(labels)]
    return write_image_set(out, images, labels, CLASSES, records)


def coreset(dataset: SceneDataset, out: Path) -> Path:
    """Real train images, two per class: what a set must not be to be shared."""
    train = dataset.images("train", SIZE)
    index = np.concatenate([np.flatnonzero(train.labels == c)[:2] for c in range(len(CLASSES))])
    return write_image_set(out, np.asarray(train.images[index]), train.labels[index], CLASSES)


def make_run(tmp_path: Path, dataset: SceneDataset) -> Path:
    """A run folder with its config and refined set, evaluated by the pipeline's own evaluation step."""
    from rsdistill.generator.tiny import tiny_sd_folder
    from rsdistill.pipeline import Run

    run_dir = tmp_path / "run"
    config = RunConfig(run_dir=str(run_dir))
    config.data.dataset, config.data.resolution = dataset.name, SIZE
    evaluation = config.evaluation
    evaluation.steps, evaluation.runs, evaluation.compile, evaluation.precision = 3, 1, False, "fp32"
    evaluation.baselines = ["random"]
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(config))
    set_dir = synthetic_set(dataset, run_dir / "refine" / "set")
    run = Run(config)
    # The generator that "made" the set: a tiny random bundle (VAE factor 2: 16 px images, 8 x 8 latents).
    run.timings["generator"] = {"folder": str(tiny_sd_folder(tmp_path / "generator", latent_size=SIZE // 2))}
    run.evaluation(set_dir)
    return run_dir


def every_string(dataset) -> list[str]:  # a datasets.Dataset
    return [str(value) for row in dataset.remove_columns("image") for value in row.values()]


def assert_no_train_key(out: Path, dataset: SceneDataset, rows: list[str]) -> None:
    names = {s.key for s in dataset.train} | {Path(s.key).name for s in dataset.train}
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [n for n in names if n.encode() in data], path
    assert not [value for value in rows if any(n in value for n in names)]


def left_behind(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name] if parent.is_dir() else []


def test_run_verdict_then_export_in_every_format(tmp_path: Path, capsys: Capture) -> None:
    import datasets

    dataset = twin_dataset(tmp_path / "scenes")
    run_dir = make_run(tmp_path, dataset)
    privacy = json.loads((run_dir / "report" / "privacy.json").read_text())
    assert privacy["verdict"] == {"safe": True, "reasons": []}
    assert privacy["near_copies"]["failing"] == 0 and privacy["near_copies"]["threshold_distance"] < 0.05
    assert {image["nearest_train_key"] for image in privacy["near_copies"]["images"]} <= {s.key for s in dataset.train}
    attack = privacy["generator_attack"]
    assert attack["members"] == 18 and attack["calibration_non_members"] == 9 and attack["non_members"] == 9
    assert 0 <= attack["auc"] <= 1 and 0 <= attack["tpr_at_1pct_fpr"] <= 1 and set(attack["auc_per_timestep"]) == {
        "50", "100", "200", "400"}
    report_md = (run_dir / "report" / "report.md").read_text()
    assert "## Privacy verdict" in report_md and "**Fit to share.**" in report_md and "MIA AUC set" in report_md
    assert "membership attack on the generator" in report_md
    cache = str(tmp_path / "hf-cache")
    for fmt in ("imagefolder", "parquet", "arrow"):
        out = tmp_path / f"export-{fmt}"
        code = main(["export", str(run_dir), "--out", str(out), "--format", fmt, "--license", "cc-by-4.0",
                     "--source-license", "CC-BY-4.0 (the test's)"])
        assert code == 0, capsys.readouterr().err
        if fmt == "arrow":
            loaded = datasets.load_from_disk(str(out / "data"))
        elif fmt == "parquet":
            loaded = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train",
                                           cache_dir=cache)
        else:
            loaded = datasets.load_dataset("imagefolder", data_dir=str(out / "data"), split="train", cache_dir=cache)
        assert loaded.features["label"].names == CLASSES and len(loaded) == 6, fmt
        assert sorted(loaded.column_names) == ["image", "ipc", "label", "text"], fmt
        assert loaded["label"] == [0, 0, 1, 1, 2, 2] and set(loaded["ipc"]) == {2}
        assert loaded[2]["text"] == "a satellite image of lake" and loaded[0]["image"].size == (SIZE, SIZE)
        if fmt != "arrow":  # the card's `configs` header: the folder itself loads, as on the Hub
            whole = datasets.load_dataset(str(out), split="train", cache_dir=cache)
            assert whole.features["label"].names == CLASSES and len(whole) == 6, fmt
        text = (out / "README.md").read_text()
        header = yaml.safe_load(text.split("---")[1])
        assert header["license"] == "cc-by-4.0" and header["task_categories"] == ["image-classification"]
        assert header["size_categories"] == ["n<1K"] and "remote-sensing" in header["tags"]
        for part in ("CC-BY-4.0 (the test's)", "**Fit to share.**", "| this set (2 per class) |", "seed 0",
                     "membership attack on the generator",
                     "sample_grid.png", "## Citation", "imagefolder:<local path>"):
            assert part in text, part
        assert (out / "sample_grid.png").is_file()
        assert_no_train_key(out, dataset, every_string(loaded))
        assert str(tmp_path) not in text  # no local path of the maker's machine either


def test_a_failing_set_is_refused_unless_allow_unsafe(tmp_path: Path, capsys: Capture) -> None:
    dataset = twin_dataset(tmp_path / "scenes")
    set_dir = coreset(dataset, tmp_path / "coreset")
    out = tmp_path / "shared" / "export"
    args = ["export", str(set_dir), "--out", str(out), "--dataset", dataset.name, "--resolution", str(SIZE),
            *FAST_EVAL]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "is not fit to share" in error and "6 of 6 image(s)" in error
    assert "forest/forest_0000.png: 0.0000" in error  # names the failing images of the set
    assert "synthesis.prototype_strength" in error and "--allow-unsafe" in error
    assert "synthesis.near_copy_threshold=0.0" in error
    assert not out.exists() and not left_behind(out.parent)
    assert main([*args, "--allow-unsafe"]) == 0
    text = (out / "README.md").read_text()
    assert "**Not fit to share:**" in text and "exported with `--allow-unsafe`" in text


def test_judge_by_the_attack_and_thresholds() -> None:
    near = {"failing": 0, "images": [{}], "percentile": 1.0, "threshold_distance": 0.1, "space": "pixels16"}
    assert judge(near, {"set_model_auc_train_vs_test": 0.55}, Thresholds())["safe"]
    verdict = judge(near, {"set_model_auc_train_vs_test": 0.61}, Thresholds())
    assert not verdict["safe"] and "AUC 0.610" in verdict["reasons"][0] and "at most 0.55" in verdict["reasons"][0]
    with pytest.raises(Exception, match="--max-attack-auc"):
        Thresholds(max_attack_auc=0.4)


def test_a_set_alone_needs_its_dataset_or_allow_unsafe(tmp_path: Path, capsys: Capture) -> None:
    dataset = twin_dataset(tmp_path / "scenes")
    set_dir = synthetic_set(dataset, tmp_path / "set")
    out = tmp_path / "out"
    assert main(["export", str(set_dir), "--out", str(out)]) == 2
    assert "--dataset NAME" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(set_dir), "--out", str(out), "--allow-unsafe", "--format", "parquet"]) == 0
    text = (out / "README.md").read_text()
    assert "**Not measured.**" in text and "Not scored" in text


def test_bad_input_is_named_and_nothing_is_left_behind(tmp_path: Path, capsys: Capture) -> None:
    dataset = twin_dataset(tmp_path / "scenes")
    out = tmp_path / "exports" / "out"
    out.parent.mkdir()
    not_a_set = tmp_path / "holiday"
    (not_a_set / "photos").mkdir(parents=True)
    (not_a_set / "photos" / "a.png").write_bytes(b"x")
    assert main(["export", str(not_a_set), "--out", str(out), "--allow-unsafe"]) == 2
    error = capsys.readouterr().err
    assert str(not_a_set) in error and "is not an image set" in error and "run folder" in error

    set_dir = synthetic_set(dataset, tmp_path / "set")
    (set_dir / "lake" / "lake_0001.png").unlink()
    assert main(["export", str(set_dir), "--out", str(out), "--allow-unsafe"]) == 2
    error = capsys.readouterr().err
    assert "lake/lake_0001.png" in error and "missing" in error and str(set_dir) in error

    set_dir = synthetic_set(dataset, tmp_path / "set2")
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(set_dir), "--out", str(out), "--allow-unsafe"]) == 2
    error = capsys.readouterr().err
    assert str(out) in error and "not empty" in error
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and not left_behind(out.parent)
    assert main(["export", str(set_dir), "--out", str(set_dir / "inside"), "--allow-unsafe"]) == 2
    assert "inside the set" in capsys.readouterr().err and not (set_dir / "inside").exists()


def test_push_to_hub_offline_keeps_the_export(tmp_path: Path, capsys: Capture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dataset = twin_dataset(tmp_path / "scenes")
    set_dir = synthetic_set(dataset, tmp_path / "set")
    out = tmp_path / "out"
    assert main(["export", str(set_dir), "--out", str(out), "--allow-unsafe", "--push-to-hub", "me/eurosat-dd"]) == 2
    error = capsys.readouterr().err
    assert "me/eurosat-dd" in error and "offline" in error and f"hf upload me/eurosat-dd {out}" in error
    assert (out / "README.md").is_file() and (out / "data" / "metadata.parquet").is_file()


def test_the_split_file_name_agrees_with_the_pipeline() -> None:
    from rsdistill.pipeline import SPLIT_FILE

    assert RUN_SPLIT_FILE == SPLIT_FILE
    assert redact("imagefolder:/data/x") == "imagefolder:<local path>" and redact("vae") == "vae"
    assert redact("stabilityai/sd-2") == "stabilityai/sd-2" and redact("~/x") == "<local path>"
