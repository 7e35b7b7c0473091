"""Synthesis end to end on a fake dataset and a tiny random SD bundle: set, determinism, resume, bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rsdistill.synthesis.synthesize as synthesis
from rsdistill.cli.main import main
from rsdistill.core.config import SynthesisConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import SceneDataset
from rsdistill.data.sources import load_dataset
from rsdistill.generator.latent_classifier import LatentClassifier, LatentClassifierConfig
from rsdistill.generator.tiny import tiny_sd_folder
from rsdistill.prototypes import Prototype, PrototypeSet
from rsdistill.synthesis.near_copy import NearestReal
from rsdistill.synthesis.synthesize import Candidate, Target, candidate_seed, choose, synthesize
from tests.conftest import TINTS, write_image

CLASSES = ["forest", "lake", "town"]
CONFIG = SynthesisConfig(num_inference_steps=2, candidates=2, batch_size=4, guidance_scale=2.0)
SIZE = 16  # pixels of the generated images (tiny VAE factor 2, 8 x 8 latents)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SceneDataset:
    root = tmp_path_factory.mktemp("data") / "scenes"
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        for i in range(6):
            write_image(root / name / f"{name}_{i}.png", rng, 32, TINTS[label])
    (root / "test.txt").write_text("".join(f"{name}/{name}_0.png\n" for name in CLASSES))
    return load_dataset(f"imagefolder:{root}")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tiny_sd_folder(tmp_path_factory.mktemp("gen") / "bundle", latent_size=SIZE // 2)
    config = LatentClassifierConfig(in_channels=4, num_classes=3, width=8, stages=2, classes=CLASSES)
    LatentClassifier(config).save_pretrained(folder / "latent_classifier")
    return folder


def write_prototypes(folder: Path, dataset: SceneDataset, ipc: int = 2, name: str | None = None) -> Path:
    prototypes = []
    for label, class_name in enumerate(dataset.classes):
        keys = [s.key for s in dataset.train if s.label == label]
        for cluster in range(ipc):
            members = keys[cluster::ipc]
            prototypes.append(
                Prototype(
                    f"{class_name}/{cluster}",
                    class_name,
                    label,
                    cluster,
                    members[0],
                    len(members),
                    members,
                    [0.0] * len(members),
                    0.0,
                )
            )
    rows = np.zeros((len(prototypes), 4), dtype=np.float32)
    found = PrototypeSet(
        name or dataset.name,
        dataset.fingerprint,
        ipc,
        "pixels",
        "dpd-margin",
        1.0,
        0,
        32,
        list(dataset.classes),
        prototypes,
        rows,
        rows,
    )
    return found.save(folder)


@pytest.fixture(scope="module")
def prototypes_dir(tmp_path_factory: pytest.TempPathFactory, dataset: SceneDataset) -> Path:
    return write_prototypes(tmp_path_factory.mktemp("protos") / "prototypes", dataset)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, dataset, bundle_dir, prototypes_dir) -> Path:
    """An uninterrupted run with seed 3."""
    out = tmp_path_factory.mktemp("reference") / "synthesis"
    synthesize(RunContext.of(dataset, seed=3), CONFIG, out, bundle_dir, prototypes_dir, None, ipc=2)
    return out


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_generates_the_set_grid_and_manifest(reference: Path, dataset) -> None:
    set_dir = reference / "set"
    records = [json.loads(line) for line in (set_dir / "metadata.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == ["forest"] * 2 + ["lake"] * 2 + ["town"] * 2
    for record in records:
        assert record["prototype"].startswith(record["label"] + "/")
        assert record["seed"] == candidate_seed(3, record["prototype"], record["candidate"])
        assert (
            record["candidate"] in (0, 1)
            and record["guidance"] == "prototype"
            and record["selection"] == "margin"
        )
        assert record["text"] == f"a satellite image of {record['label']}"
        assert record["nearest_key"] in {s.key for s in dataset.train}
        assert record["near_copy"] == (record["nearest_distance"] < CONFIG.near_copy_threshold)
        assert isinstance(record["score"], float)
        with Image.open(set_dir / record["file_name"]) as image:
            assert image.size == (SIZE, SIZE)
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["images"] == 6 and manifest["per_class"] == {"forest": 2, "lake": 2, "town": 2}
    assert manifest["candidates_drawn"] == 12 and manifest["generated_now"] == 6
    # The tiny CLIP tokenizer takes 16 characters: every class prompt is cut.
    assert manifest["prompts_truncated"] == 6
    assert manifest["near_copies"] == sum(r["near_copy"] for r in records)
    with Image.open(reference / "sample_grid.png") as grid:
        assert grid.size == (10 * (SIZE + 2) + 2, 3 * (SIZE + 2) + 2)
    assert not (reference.parent / ".synthesis.partial").exists()


def test_same_seed_is_byte_identical(
    tmp_path: Path, reference: Path, dataset, bundle_dir, prototypes_dir
) -> None:
    synthesize(RunContext.of(dataset, seed=3), CONFIG, tmp_path / "again", bundle_dir, prototypes_dir, None, ipc=2)
    assert files_of(tmp_path / "again") == files_of(reference)
    assert len(files_of(reference)) == 6 + 2  # images, metadata.jsonl, sample_grid.png


def test_interrupted_run_resumes_to_identical_files(
    tmp_path: Path, reference: Path, dataset, bundle_dir, prototypes_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = []
    original = synthesis.save_progress

    def interrupt_after_three(*args, **kwargs):
        if len(saved) == 3:  # in the middle of the second chunk of two prototypes
            raise KeyboardInterrupt
        original(*args, **kwargs)
        saved.append(args[1].id)

    monkeypatch.setattr(synthesis, "save_progress", interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        synthesize(RunContext.of(dataset, seed=3), CONFIG, tmp_path / "resumed", bundle_dir, prototypes_dir, None,
                   ipc=2)
    assert len(list((tmp_path / ".resumed.partial" / "progress").glob("*.png"))) == 3
    monkeypatch.setattr(synthesis, "save_progress", original)
    synthesize(RunContext.of(dataset, seed=3), CONFIG, tmp_path / "resumed", bundle_dir, prototypes_dir, None, ipc=2)
    assert files_of(tmp_path / "resumed") == files_of(reference)
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert manifest["kept_from_earlier_run"] == 3 and manifest["generated_now"] == 3


def test_prototypes_of_another_dataset_or_ipc_are_refused(
    tmp_path: Path, dataset, bundle_dir, prototypes_dir
) -> None:
    with pytest.raises(RSDistillError, match=r"2 prototypes per class, but IPC 5"):
        synthesize(RunContext.of(dataset), CONFIG, tmp_path / "x", bundle_dir, prototypes_dir, None, ipc=5)
    other = write_prototypes(tmp_path / "other", dataset, name="eurosat")
    with pytest.raises(RSDistillError, match=r"'eurosat'.*'imagefolder:"):
        synthesize(RunContext.of(dataset), CONFIG, tmp_path / "y", bundle_dir, other, None, ipc=2)


def test_prompts_file_and_truncation_count(tmp_path: Path, dataset, bundle_dir, prototypes_dir) -> None:
    prompts = [
        {"id": f"{name}/{k}", "class": name, "label": label, "prompt": f"{name} {k}", "members": 1}
        for label, name in enumerate(CLASSES)
        for k in range(2)
    ]
    prompts[1]["prompt"] = "a very long description of a dense forest canopy"
    folder = tmp_path / "captions"
    folder.mkdir()
    (folder / "prompts.json").write_text(
        json.dumps(
            {"rule": "test", "captioner": "test", "max_tokens": 77, "truncated": 0, "prompts": prompts}
        )
    )
    config = replace(CONFIG, candidates=1)
    set_dir = synthesize(RunContext.of(dataset), config, tmp_path / "s", bundle_dir, prototypes_dir, folder, ipc=2)
    texts = [json.loads(line)["text"] for line in (set_dir / "metadata.jsonl").read_text().splitlines()]
    assert texts == [p["prompt"] for p in prompts]
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["prompts_truncated"] == 1


def test_img2img_from_cluster_centroids_and_prompt_only(
    tmp_path: Path, dataset, bundle_dir, prototypes_dir
) -> None:
    config = replace(CONFIG, guidance="img2img", prototype_target="centroid", scheduler="dpm", candidates=1)
    records = (
        synthesize(RunContext.of(dataset), config, tmp_path / "i", bundle_dir, prototypes_dir, None, ipc=2)
        / "metadata.jsonl"
    ).read_text()
    assert '"img2img_strength": 0.7' in records and '"prototype_target": "centroid"' in records
    plain = synthesize(RunContext.of(dataset), replace(CONFIG, guidance="none"), tmp_path / "n", bundle_dir, None,
                       None, ipc=1)
    assert sorted(p.parent.name for p in plain.rglob("*.png")) == CLASSES
    with pytest.raises(RSDistillError, match="needs --prototypes"):
        synthesize(RunContext.of(dataset), CONFIG, tmp_path / "p", bundle_dir, None, None, ipc=1)


def test_rejecting_near_copies_draws_new_candidates_and_counts_the_rest(
    tmp_path: Path, dataset, bundle_dir, prototypes_dir
) -> None:
    # Every image is within distance 2.1 of every other: all candidates are near copies, none is kept clean.
    config = replace(CONFIG, guidance="none", candidates=1, near_copy_threshold=2.1, reject_near_copies=True)
    synthesize(RunContext.of(dataset), config, tmp_path / "r", bundle_dir, None, None, ipc=1)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["candidates_drawn"] == 3 * synthesis.MAX_ROUNDS
    assert manifest["near_copies"] == manifest["near_copy_unresolved"] == 3


def fake_candidate(number: int, score: float, distance: float) -> Candidate:
    target = Target(0, "forest/0", 0, "forest", "p")
    return Candidate(
        target, number, number, np.zeros((2, 2, 3), np.uint8), score, 0, "forest/x.png", distance
    )


def test_choose_prefers_score_then_skips_near_copies() -> None:
    candidates = [fake_candidate(0, 1.0, 0.5), fake_candidate(1, 3.0, 0.01), fake_candidate(2, 3.0, 0.2)]
    assert choose(candidates, 0.05, reject=False).number == 1
    assert choose(candidates, 0.05, reject=True).number == 2
    assert choose(candidates, 0.6, reject=True) is None


@pytest.mark.parametrize("space", ["pixels16", "pixels:8"])  # built-in, and a prototypes encoder spec
def test_nearest_real_finds_the_train_image(dataset, space: str) -> None:
    nearest = NearestReal.for_dataset(dataset, space, resolution=32, device="cpu")
    train = dataset.images("train", 32)
    keys, distances = nearest.query(train.images[[4, 0]])
    assert keys == [train.keys[4], train.keys[0]]
    assert np.allclose(distances, 0.0, atol=1e-5)
    if space == "pixels16":
        noise = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
        assert nearest.query(noise)[1][0] > 0.5


def test_command_line(
    tmp_path: Path, dataset, bundle_dir, prototypes_dir, capsys: pytest.CaptureFixture
) -> None:
    common = [
        "generate",
        "--generator",
        str(bundle_dir),
        "--prototypes",
        str(prototypes_dir),
        "--dataset",
        dataset.name,
        "--num_inference_steps",
        "1",
        "--candidates",
        "1",
        "--resolution",
        "32",
    ]
    assert main([*common, "--ipc", "2", "--out", str(tmp_path / "cli"), "--guidance-scale", "1.5"]) == 0
    assert len(list((tmp_path / "cli" / "set").rglob("*.png"))) == 6
    assert main([*common, "--ipc", "3", "--out", str(tmp_path / "bad")]) == 2
    assert "IPC 3" in capsys.readouterr().err
