"""The networks of refinement: functional ConvNets, drawn at random or trained on real images (the teacher).

A network is a plain list of tensors (conv weight and bias per block, then optionally a linear head), so one
compiled graph serves a fresh random network every iteration and a teacher is checkpointed as tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

Weights = list[torch.Tensor]


def random_weights(width: int, depth: int, generator: torch.Generator) -> Weights:
    """Conv weights and biases of a `depth`-block ConvNet, drawn like PyTorch's default init from `generator`."""
    weights, channels = [], 3
    for _ in range(depth):
        bound = 1 / math.sqrt(channels * 9)
        weights.append(torch.empty(width, channels, 3, 3).uniform_(-bound, bound, generator=generator))
        weights.append(torch.empty(width).uniform_(-bound, bound, generator=generator))
        channels = width
    return weights


def random_head(features: int, num_classes: int, generator: torch.Generator) -> Weights:
    """Weight and bias of a linear classifier head, PyTorch's default init."""
    bound = 1 / math.sqrt(features)
    return [torch.empty(num_classes, features).uniform_(-bound, bound, generator=generator),
            torch.empty(num_classes).uniform_(-bound, bound, generator=generator)]


def embed(images: torch.Tensor, weights: Weights) -> torch.Tensor:
    """Flattened features of a ConvNet (conv 3x3, instance norm, ReLU, 2x2 average pool per block)."""
    x = images
    for weight, bias in zip(weights[::2], weights[1::2], strict=True):
        x = F.avg_pool2d(F.relu(F.group_norm(F.conv2d(x, weight, bias, padding=1), weight.shape[0])), 2)
    return x.flatten(1)


def siamese_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random flip, quarter turn and resized crop (scale 0.8-1), the same for the whole batch."""
    if torch.rand((), generator=generator) < 0.5:
        images = images.flip(-1)
    images = torch.rot90(images, int(torch.randint(0, 4, (), generator=generator)), dims=(-2, -1))
    side = images.shape[-1]
    crop = round(side * math.sqrt(0.8 + 0.2 * float(torch.rand((), generator=generator))))
    top, left = torch.randint(0, side - crop + 1, (2,), generator=generator).tolist()
    images = images[..., top : top + crop, left : left + crop]
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)


def logits(images: torch.Tensor, network: Weights) -> torch.Tensor:
    """Class logits of a network made of conv blocks (see `embed`) and a linear head (its last two tensors)."""
    return F.linear(embed(images, network[:-2]), *network[-2:])


def train_teacher(
    sample: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    width: int,
    depth: int,
    side: int,
    steps: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[Weights, list[float]]:
    """A ConvNet trained on real images: SGD (momentum 0.9, lr 0.01, weight decay 5e-4, cosine), augmented.

    Args:
        sample: Draws a batch of normalised real images and their labels.
        num_classes: Classes of the head.
        width: Channels of every conv block.
        depth: Conv blocks.
        side: Side of the images (fixes the head's input size).
        steps: Training steps.
        generator: Draws the initial weights and the augmentation (a CPU generator).
        device: Where the network trains (where `sample` puts its batches).
        progress: Show a progress bar.

    Returns:
        The trained weights (conv blocks, then the head) and the loss of every step.
    """
    features = width * (side // 2**depth) ** 2
    network = [w.to(device).requires_grad_(True) for w in random_weights(width, depth, generator)
               + random_head(features, num_classes, generator)]
    optimizer = torch.optim.SGD(network, lr=0.01, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    for _ in tqdm(range(steps), desc="training the refinement teacher", disable=not progress, leave=False):
        images, labels = sample()
        loss = F.cross_entropy(logits(siamese_augment(images, generator), network), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return [w.detach() for w in network], losses
