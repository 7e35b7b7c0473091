"""Augmentation policies of the evaluation's training: shapes, seeds, soft targets, the protocol's label."""

from __future__ import annotations

import pytest
import torch

from rsdistill.core.config import EvalConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.evaluate.policies import POLICIES, Policy
from rsdistill.evaluate.protocol import Normalizer, Protocol, Trainer

NUM_CLASSES = 3


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return images, torch.tensor([0, 1, 2, 0, 1, 2])


def _normalize(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0 - 0.5


def _apply(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _batch()
    return Policy(name, NUM_CLASSES)(images, labels, _normalize, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", POLICIES)
def test_each_policy_keeps_the_shape_and_is_fixed_by_its_seed(name: str) -> None:
    state = torch.get_rng_state()
    x, target = _apply(name, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    again, target_again = _apply(name, seed=1)
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x, again) and torch.equal(target, target_again)
    if name != "none":
        assert not torch.equal(x, _apply(name, seed=2)[0])


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mixup_and_cutmix_give_soft_targets_that_keep_the_labels(name: str) -> None:
    _, labels = _batch()
    _, target = _apply(name, seed=3)
    assert target.shape == (6, NUM_CLASSES) and torch.allclose(target.sum(dim=1), torch.ones(6))
    # Each image keeps its own label's mass (lambda >= the partner's share, or its partner has the same label).
    own = target[torch.arange(6), labels]
    partner = target[torch.arange(6), labels.roll(1)]
    assert bool((own > 0).all()) and torch.allclose(own + partner, torch.ones(6))
    assert Policy(name, NUM_CLASSES).soft_targets


def test_hard_policies_keep_class_indices() -> None:
    _, labels = _batch()
    for name in ("none", "geometric", "geometric+colour", "trivialaugment", "erasing"):
        assert torch.equal(_apply(name, seed=0)[1], labels)


def test_the_default_policy_is_the_benchmark_and_named_otherwise() -> None:
    assert EvalConfig().augmentation == Protocol().augmentation == "geometric"
    assert "aug" not in Protocol(precision="fp32").label and "augmentation" not in Protocol().to_dict()
    assert Protocol(augmentation="cutmix", precision="fp32").label.endswith("aug-cutmix-fp32")
    assert "noaug" in Protocol(augmentation="none").label
    with pytest.raises(RSDistillError, match=r"evaluation\.augmentation"):
        Protocol(augmentation="blur")


def test_the_trainer_learns_through_soft_targets() -> None:
    images, labels = _batch()
    normalizer = Normalizer.from_stats(torch.full((3,), 0.5), torch.full((3,), 0.25), torch.device("cpu"))
    protocol = Protocol(resolution=16, steps=2, batch_size=4, augmentation="mixup", precision="fp32")
    trainer = Trainer(protocol, normalizer, torch.device("cpu"), compile=False)
    model = trainer.train(images, labels, NUM_CLASSES, seed=0)
    assert trainer.predict(model, images).shape == (6, NUM_CLASSES)
