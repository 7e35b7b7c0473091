"""The pixel-space GAN's losses and augmentation: hinge loss, R1, DiffAugment, and Causal-RSGAN's uniformity (UR)
and entropy (ER) regularisers as this project defines them (docs/generator.md, "Pixel-space GAN").

Every random draw takes an explicit `torch.Generator`, so a training run is a function of its seed and a resumed
run replays the draws of an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rsdistill.core.errors import RSDistillError

DIFFAUGMENT_POLICIES = ("color", "translation", "cutout")
UNIFORMITY_TEMPERATURE = 2.0  # t of Wang & Isola (2020)
TRANSLATION_SHARE = 0.125  # DiffAugment's translation: up to 1/8 of the side
CUTOUT_SHARE = 0.5  # DiffAugment's cutout: a square of half the side


def parse_policy(text: str) -> tuple[str, ...]:
    """``color,translation,cutout`` -> its parts; ``none`` or empty -> (). Unknown parts are refused."""
    parts = tuple(part.strip() for part in text.split(",") if part.strip() and part.strip() != "none")
    unknown = [part for part in parts if part not in DIFFAUGMENT_POLICIES]
    if unknown:
        raise RSDistillError(
            f"generator.gan_diffaugment {text!r}: unknown part(s) {', '.join(unknown)}; use a comma list of "
            f"{', '.join(DIFFAUGMENT_POLICIES)}, or none."
        )
    return parts


def _uniform(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, generator=generator).to(device)


def color(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DiffAugment's colour: brightness +-0.5, saturation x0..2, contrast x0.5..1.5 (pixels in [-1, 1])."""
    n, device = len(x), x.device
    x = x + (_uniform(n, generator, device) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(n, generator, device) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(n, generator, device) + 0.5) + mean


def translation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DiffAugment's translation: each image shifted by up to 1/8 of its side, zeros where it moved in from."""
    n, _, height, width = x.shape
    shift_h, shift_w = int(height * TRANSLATION_SHARE + 0.5), int(width * TRANSLATION_SHARE + 0.5)
    dy = torch.randint(-shift_h, shift_h + 1, (n, 1, 1), generator=generator).to(x.device)
    dx = torch.randint(-shift_w, shift_w + 1, (n, 1, 1), generator=generator).to(x.device)
    rows = torch.arange(height, device=x.device)[None, :, None]
    cols = torch.arange(width, device=x.device)[None, None, :]
    rows = (rows + dy + 1).clamp(0, height + 1).expand(n, height, width)
    cols = (cols + dx + 1).clamp(0, width + 1).expand(n, height, width)
    padded = F.pad(x, [1, 1, 1, 1])  # the zero border is what clamped indices read
    batch = torch.arange(n, device=x.device)[:, None, None].expand(n, height, width)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DiffAugment's cutout: a square of half the side, at a random centre, set to 0 (mid grey)."""
    n, _, height, width = x.shape
    size_h, size_w = int(height * CUTOUT_SHARE + 0.5), int(width * CUTOUT_SHARE + 0.5)
    top = torch.randint(0, height + (1 - size_h % 2), (n, 1, 1), generator=generator).to(x.device)
    left = torch.randint(0, width + (1 - size_w % 2), (n, 1, 1), generator=generator).to(x.device)
    rows = torch.arange(height, device=x.device)[None, :, None]
    cols = torch.arange(width, device=x.device)[None, None, :]
    inside = ((rows - top + size_h // 2) >= 0) & ((rows - top + size_h // 2) < size_h)
    inside = inside & ((cols - left + size_w // 2) >= 0) & ((cols - left + size_w // 2) < size_w)
    return x * (~inside)[:, None].to(x.dtype)


AUGMENTS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020): the same differentiable augmentation for real and generated images."""
    for name in policy:
        x = AUGMENTS[name](x, generator)
    return x


def hinge_discriminator(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_generator(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]."""
    return -fake_logits.mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """E[||grad_x D(x)||^2] on real images (Mescheder et al. 2018); the caller weighs it by gamma / 2."""
    (gradient,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return gradient.pow(2).flatten(1).sum(1).mean()


def uniformity_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = UNIFORMITY_TEMPERATURE
                    ) -> torch.Tensor:
    """UR: Wang & Isola's (2020) uniformity, log E_{i != j} exp(-t ||f_i - f_j||^2) over the L2-normalised features
    of the generated images of one class, averaged over the classes with at least two images in the batch. Lowest
    when a class's images spread evenly over the discriminator's feature sphere: it acts against the within-class
    collapse (one image for every z) that grows as a class has fewer images; spread across classes needs no help."""
    normalised = F.normalize(features.float(), dim=1)
    per_class = []
    for label in torch.unique(labels):
        group = normalised[labels == label]
        if len(group) < 2:
            continue
        pairs = torch.triu_indices(len(group), len(group), offset=1, device=group.device)
        squared = (group[pairs[0]] - group[pairs[1]]).pow(2).sum(1)  # differentiable at 0, unlike pdist
        per_class.append(torch.logsumexp(-temperature * squared, dim=0) - torch.log(squared.new_tensor(len(squared))))
    return torch.stack(per_class).mean() if per_class else features.new_zeros(())


def entropy_loss(features: torch.Tensor) -> torch.Tensor:
    """ER: minus the mean entropy (in nats, divided by log of the feature count, so in [-1, 0]) of each generated
    image's softmax over its discriminator features. Lowest when every image spreads its evidence over many
    features rather than a few."""
    log_p = F.log_softmax(features.float(), dim=1)
    entropy = -(log_p.exp() * log_p).sum(1)
    return -(entropy / torch.log(entropy.new_tensor(features.shape[1]))).mean()
