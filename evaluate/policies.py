"""Augmentation policies for the evaluation's training, chosen by name (``evaluation.augmentation``).

Every policy maps a uint8 (N, 3, H, W) batch on the device and its int64 labels to the normalised float
batch the network sees and the training target:

- ``none``: no augmentation.
- ``geometric``: docs/benchmark.md's flips, quarter turns and resized crop (`rsdistill.evaluate.augment`), the
  default; its batches are exactly those of the benchmark.
- ``geometric+colour``: colour jitter (brightness, contrast, saturation 0.4, hue 0.05) per image, then geometric.
- ``randaugment`` / ``trivialaugment``: torchvision's RandAugment (2 ops, magnitude 9) / TrivialAugmentWide per
  image on the uint8 pixels, then geometric.
- ``mixup`` / ``cutmix``: geometric, then torchvision's MixUp / CutMix (alpha 1) over the batch: the target
  is soft, (N, classes) probabilities, and the loss is the cross-entropy against them.
- ``erasing``: geometric, then torchvision's RandomErasing (p 0.5, erased to the mean) per image.

All but ``none`` and ``geometric`` run torchvision.transforms.v2 on the device tensors. Those transforms draw
their parameters from torch's global generator, and one draw serves a whole call, so the per-image policies
call them image by image inside a forked global generator seeded from the training generator: a run's seed
fixes its augmentation, and the global generator is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from rsdistill.core.errors import RSDistillError
from rsdistill.evaluate.augment import augment

POLICIES = ("none", "geometric", "geometric+colour", "randaugment", "trivialaugment", "mixup", "cutmix", "erasing")
DEFAULT_POLICY = "geometric"

Normalize = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def seeded_global_rng(generator: torch.Generator) -> Iterator[None]:
    """Runs the block with torch's global generator seeded from `generator`, restoring it afterwards."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def per_image(transform: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """`transform` applied to each image of a (N, C, H, W) batch on its own (its own random parameters)."""
    return torch.stack([transform(image) for image in images])


def check_policy(name: str) -> str:
    """`name` when it is a known policy; a clear error otherwise."""
    if name not in POLICIES:
        raise RSDistillError(
            f"Unknown evaluation.augmentation {name!r}; use one of {', '.join(POLICIES)} (--augmentation NAME)."
        )
    return name


@dataclass(frozen=True)
class Policy:
    """One named augmentation policy for `num_classes` classes (see the module docstring).

    Attributes:
        name: One of `POLICIES`.
        num_classes: Classes of the labels (mixup and cutmix write soft targets over them).
    """

    name: str = DEFAULT_POLICY
    num_classes: int = 2

    def __post_init__(self) -> None:
        check_policy(self.name)

    @property
    def soft_targets(self) -> bool:
        """Whether the policy's targets are (N, classes) probabilities instead of class indices."""
        return self.name in ("mixup", "cutmix")

    def pixels(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The policy's per-image pixel changes of a uint8 batch (before normalisation)."""
        transforms = {
            "geometric+colour": v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05),
            "randaugment": v2.RandAugment(num_ops=2, magnitude=9),
            "trivialaugment": v2.TrivialAugmentWide(),
        }
        if self.name not in transforms:
            return images
        with seeded_global_rng(generator):
            return per_image(transforms[self.name], images)

    def batch(
        self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's changes of a normalised batch after the geometric ones, and the target."""
        if self.name == "erasing":
            with seeded_global_rng(generator):
                return per_image(v2.RandomErasing(p=0.5, value=0), x), labels
        if self.soft_targets:
            mix = v2.MixUp if self.name == "mixup" else v2.CutMix
            with seeded_global_rng(generator):
                return mix(alpha=1.0, num_classes=self.num_classes)(x, labels)
        return x, labels

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, normalize: Normalize, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised augmented batch, target) of uint8 `images` and their int64 `labels`."""
        if self.name == "none":
            return normalize(images), labels
        x = augment(normalize(self.pixels(images, generator)), generator)
        return self.batch(x, labels, generator)
