"""Distribution-matching refinement: the matching itself, its resume, the stage folder and the command."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsdistill.cli.main import main
from rsdistill.core.artifacts import read_manifest
from rsdistill.core.config import RefineConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import ImageArray
from rsdistill.data.imageset import read_image_set, write_image_set
from rsdistill.data.sources import load_dataset
from rsdistill.synthesis.matching_networks import logits, random_head, random_weights, train_teacher
from rsdistill.synthesis.refine import DistributionMatcher, refine_images, refine_set, step_size

TINY = RefineConfig(iterations=6, width=8, depth=2, real_per_class=4, checkpoint_every=2, compile=False)


def tinted(label: int, n: int, seed: int) -> np.ndarray:
    """Noisy 16 px images whose mean colour depends on the class."""
    rng = np.random.default_rng(seed)
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]][label], dtype=np.float32)
    return np.clip(base + rng.normal(0, 30, (n, 16, 16, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def real() -> ImageArray:
    images = np.concatenate([tinted(label, 8, label) for label in range(3)])
    labels = np.repeat(np.arange(3), 8)
    return ImageArray(images, labels, [f"k{i}" for i in range(len(labels))])


def grey_set() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(9)
    return rng.integers(100, 156, (6, 16, 16, 3), dtype=np.uint8), np.repeat(np.arange(3), 2)


def test_matching_lowers_the_loss_and_moves_images_toward_their_class(real: ImageArray) -> None:
    images, labels = grey_set()
    config = replace(TINY, iterations=40, learning_rate=10.0)  # a step of 2 at 2 images per class
    refined, report = refine_images(images, labels, real, 3, config, seed=0, progress=False)
    assert report["step_size"] == 2.0
    assert refined.shape == images.shape and refined.dtype == np.uint8
    assert report["loss_last_10_mean"] < report["loss_first"]
    # The red class's images became redder than the blue class's.
    red = refined[labels == 0].astype(float).mean(axis=(0, 1, 2))
    blue = refined[labels == 2].astype(float).mean(axis=(0, 1, 2))
    assert red[0] - red[2] > blue[0] - blue[2]


def test_bf16_matching_moves_the_images_like_fp32_but_is_its_own_run(real: ImageArray) -> None:
    images, labels = grey_set()
    config = replace(TINY, iterations=20, learning_rate=10.0)
    full, _ = refine_images(images, labels, real, 3, config, seed=0, progress=False)
    bf16 = replace(config, mixed_precision="bf16")
    half, report = refine_images(images, labels, real, 3, bf16, seed=0, progress=False)
    again, _ = refine_images(images, labels, real, 3, bf16, seed=0, progress=False)
    assert np.array_equal(half, again)
    assert not np.array_equal(half, full)
    assert report["loss_last_10_mean"] < report["loss_first"]
    moved_full = full.astype(float) - images
    moved_half = half.astype(float) - images
    # The same direction and nearly the same size of step, image by image.
    cosine = (moved_full * moved_half).sum() / np.sqrt((moved_full**2).sum() * (moved_half**2).sum())
    assert cosine > 0.9
    assert np.abs(moved_half).mean() == pytest.approx(np.abs(moved_full).mean(), rel=0.2)
    with pytest.raises(RSDistillError, match=r"refine\.mixed_precision"):
        refine_images(images, labels, real, 3, replace(config, mixed_precision="fp16"), progress=False)


def test_step_scales_with_images_per_class_so_each_image_moves_alike(real: ImageArray) -> None:
    config = replace(TINY, learning_rate=1.0)
    assert step_size(config, np.repeat(np.arange(3), 1)) == 0.1
    assert step_size(config, np.repeat(np.arange(3), 10)) == 1.0
    assert step_size(config, np.repeat(np.arange(3), 50)) == 5.0
    # The first step of a set and of the same set repeated 5 times moves every image by the same amount.
    images, labels = grey_set()
    one_step = replace(config, iterations=1, momentum=0.0)
    once, _ = refine_images(images, labels, real, 3, one_step, seed=0, progress=False)
    repeated, _ = refine_images(np.tile(images, (5, 1, 1, 1)), np.tile(labels, 5), real, 3, one_step, seed=0,
                                progress=False)
    moved = np.abs(once.astype(int) - images).mean()
    assert moved > 0.5
    assert np.abs(repeated.astype(int) - np.tile(images, (5, 1, 1, 1))).mean() == pytest.approx(moved, rel=0.05)


@pytest.mark.parametrize("teacher_steps", [0, 5], ids=["random-networks", "with-teacher"])
def test_same_seed_same_images_and_interrupted_run_resumes_to_them(
    real: ImageArray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, teacher_steps: int
) -> None:
    config = replace(TINY, teacher_steps=teacher_steps, teacher_width=8)
    images, labels = grey_set()
    first, _ = refine_images(images, labels, real, 3, config, seed=3, progress=False)
    again, _ = refine_images(images, labels, real, 3, config, seed=3, progress=False)
    assert np.array_equal(first, again)
    other, _ = refine_images(images, labels, real, 3, config, seed=4, progress=False)
    assert not np.array_equal(first, other)

    original = DistributionMatcher.loss

    def interrupt_at_four(self: DistributionMatcher, synthetic: torch.Tensor, labels: torch.Tensor,
                          means: torch.Tensor, iteration: int) -> torch.Tensor:
        if iteration == 4:
            raise KeyboardInterrupt
        return original(self, synthetic, labels, means, iteration)

    state = tmp_path / "state.pt"
    monkeypatch.setattr(DistributionMatcher, "loss", interrupt_at_four)
    with pytest.raises(KeyboardInterrupt):
        refine_images(images, labels, real, 3, config, seed=3, state_path=state, progress=False)
    assert torch.load(state)["iteration"] == 4
    monkeypatch.setattr(DistributionMatcher, "loss", original)
    resumed, report = refine_images(images, labels, real, 3, config, seed=3, state_path=state, progress=False)
    assert report["iterations_this_run"] == 2
    assert np.array_equal(resumed, first)


def test_stage_writes_a_set_with_its_records_and_is_kept_when_done(
    make_imagefolder: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_imagefolder(size=16)
    dataset = load_dataset(f"imagefolder:{root}")
    images, labels = grey_set()
    records = [{"method": "synthesized", "text": f"prompt {i}"} for i in range(len(labels))]
    source = write_image_set(tmp_path / "synthesis" / "set", images, labels, dataset.classes, records,
                             [f"{dataset.classes[label]}_{i:05d}" for i, label in enumerate(labels)])
    out = refine_set(RunContext.of(dataset, resolution=16), TINY, tmp_path / "refine", source)
    refined = read_image_set(out, dataset.classes)
    assert np.array_equal(refined.labels, labels) and not np.array_equal(refined.images, images)
    assert [r["text"] for r in refined.records] == [r["text"] for r in records]
    assert all(r["refined"] == "distribution-matching" for r in refined.records)
    manifest = read_manifest(tmp_path / "refine")
    assert manifest["iterations"] == 6 and manifest["images"] == 6
    assert manifest["near_copies"] == 0  # grey noise is no copy of the tinted train images
    assert all(r["nearest_real_distance"] > manifest["near_copy_threshold"] for r in refined.records)
    assert (tmp_path / "refine" / "sample_grid.png").is_file()
    assert not (tmp_path / "refine" / "refine_state.pt").exists()
    assert refine_set(RunContext.of(dataset, resolution=16), TINY, tmp_path / "refine", source) == out
    assert read_manifest(tmp_path / "refine")["finished_at"] == manifest["finished_at"]

    argv = ["refine", str(source), "--out", str(tmp_path / "cli"), "--dataset", f"imagefolder:{root}",
            "--resolution", "16", "--iterations", "2", "--width", "8", "--depth", "2", "--real_per_class", "4",
            "--no-compile"]
    assert main(argv) == 0
    assert "refined set:" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["iterations"] == 2


def test_stage_flags_refined_images_that_still_copy_a_train_image(
    make_imagefolder: Callable[..., Path], tmp_path: Path
) -> None:
    dataset = load_dataset(f"imagefolder:{make_imagefolder(size=16)}")
    train = dataset.images("train", 16)
    picks = np.array([0, 8, 16])  # one train image of each class, copied into the set
    source = write_image_set(tmp_path / "set", train.images[picks], train.labels[picks], dataset.classes,
                             [{"method": "copied"} for _ in picks], [f"copy_{i}" for i in range(len(picks))])
    out = refine_set(RunContext.of(dataset, resolution=16), replace(TINY, iterations=2, learning_rate=0.1),
                     tmp_path / "refine", source)
    assert read_manifest(tmp_path / "refine")["near_copies"] == 3
    assert [r["nearest_real"] for r in read_image_set(out, dataset.classes).records] == \
        [train.keys[i] for i in picks]


def test_bad_settings_are_named(
    real: ImageArray, make_imagefolder: Callable[..., Path], tmp_path: Path
) -> None:
    images, labels = grey_set()
    dataset = load_dataset(f"imagefolder:{make_imagefolder(size=16)}")
    with pytest.raises(RSDistillError, match=r"refine\.iterations"):
        refine_set(RunContext.of(dataset), replace(TINY, iterations=0), tmp_path / "x", tmp_path)
    missing = ImageArray(real.images[:16], real.labels[:16], real.keys[:16])  # class 2 has no real image
    with pytest.raises(RSDistillError, match="class 2 has none"):
        refine_images(images, labels, missing, 3, TINY, progress=False)


def test_teacher_learns_the_real_classes(real: ImageArray) -> None:
    pixels = torch.from_numpy(real.images).permute(0, 3, 1, 2).float() / 255 - 0.5
    labels = torch.as_tensor(real.labels)
    generator = torch.Generator().manual_seed(0)
    untrained = random_weights(8, 2, generator) + random_head(8 * 4 * 4, 3, generator)
    teacher, losses = train_teacher(lambda: (pixels, labels), 3, width=8, depth=2, side=16, steps=40,
                                    generator=torch.Generator().manual_seed(0), progress=False)
    assert len(losses) == 40 and np.mean(losses[-5:]) < losses[0]
    assert (logits(pixels, teacher).argmax(dim=1) == labels).float().mean() >= 0.9
    assert F.cross_entropy(logits(pixels, teacher), labels) < F.cross_entropy(logits(pixels, untrained), labels)


def test_refinement_with_a_teacher_makes_the_set_more_recognisable(real: ImageArray) -> None:
    images, labels = grey_set()
    config = replace(TINY, iterations=20, teacher_steps=40, teacher_width=8, teacher_weight=5.0)
    refined, report = refine_images(images, labels, real, 3, config, seed=0, progress=False)
    assert report["teacher_seconds"] >= 0 and report["teacher_loss_last_20_mean"] < np.log(3)
    red = refined[labels == 0].astype(float).mean(axis=(0, 1, 2))
    assert red[0] > red[2]


def test_teacher_settings_are_checked(
    make_imagefolder: Callable[..., Path], tmp_path: Path
) -> None:
    dataset = load_dataset(f"imagefolder:{make_imagefolder(size=16)}")
    with pytest.raises(RSDistillError, match=r"refine\.teacher_steps"):
        refine_set(RunContext.of(dataset), replace(TINY, teacher_steps=-1), tmp_path / "x", tmp_path)
