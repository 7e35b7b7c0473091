"""What the pixel-space GAN's training checks: its settings (`GanSettings`, each refused by name), divergence
(`GanDiverged`: a loss that is NaN or infinite) and collapse (`collapse_ratios`, `check_collapse`: samples over
different z that are nearly one image), each with what to change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from rsdistill.core.config import GeneratorConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.generator.gan import GanGenerator, check_gan_shape, images_to_pixels
from rsdistill.generator.gan_losses import parse_policy

DEFAULT_GAN_CLASSIFIER_STEPS = 600
COLLAPSE_SAMPLES = 8  # fixed latents per class whose samples' spread is checked
REAL_SPREAD_SAMPLES = 16  # real images per class the spread is compared with
DIVERGED_ADVICE = (
    "lower generator.gan_learning_rate (e.g. halve it), raise generator.gan_r1_gamma (e.g. 1.0), or turn off "
    "generator.gan_uniformity_weight and generator.gan_entropy_weight (0)"
)
COLLAPSE_ADVICE = (
    "keep DiffAugment on (generator.gan_diffaugment=color,translation,cutout), raise generator.gan_r1_gamma (e.g. "
    "1.0), turn on generator.gan_uniformity_weight (e.g. 0.1), or lower generator.gan_learning_rate"
)


@dataclass(frozen=True)
class GanSettings:
    """What trains the GAN, read from `GeneratorConfig` (its ``gan_*`` fields and the shared ones)."""

    steps: int
    batch_size: int
    learning_rate: float
    latent_dim: int
    width: int
    diffaugment: tuple[str, ...]
    r1_gamma: float
    ema_decay: float
    uniformity_weight: float
    uniformity_scope: str
    entropy_weight: float
    consistency_lambda: float
    collapse_fraction: float
    classifier_steps: int
    checkpointing_steps: int
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = "latest"
    progress: bool = True

    @classmethod
    def from_config(cls, g: GeneratorConfig) -> GanSettings:
        """The settings of `g`, each checked, with a message naming the setting when refused."""
        positive = {
            "max_train_steps": g.max_train_steps,
            "train_batch_size": g.train_batch_size,
            "checkpointing_steps": g.checkpointing_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise RSDistillError(f"generator.{name} must be at least 1 for the GAN, not {value}.")
        if g.train_batch_size < 2:
            raise RSDistillError("generator.train_batch_size must be at least 2 for the GAN (batch norm, UR).")
        non_negative = {
            "gan_r1_gamma": g.gan_r1_gamma,
            "gan_uniformity_weight": g.gan_uniformity_weight,
            "gan_entropy_weight": g.gan_entropy_weight,
            "consistency_lambda": g.consistency_lambda,
        }
        for name, value in non_negative.items():
            if not value >= 0:
                raise RSDistillError(f"generator.{name} must be 0 (off) or positive, not {value}.")
        if not 0 < g.gan_learning_rate < 1:
            raise RSDistillError(f"generator.gan_learning_rate must be in (0, 1), not {g.gan_learning_rate}.")
        if not 0 <= g.gan_ema_decay < 1:
            raise RSDistillError(f"generator.gan_ema_decay must be in [0, 1), not {g.gan_ema_decay}.")
        if not 0 <= g.gan_collapse_fraction < 1:
            raise RSDistillError(
                f"generator.gan_collapse_fraction must be in [0, 1) (0: no check), not {g.gan_collapse_fraction}."
            )
        if g.gan_uniformity_scope not in UNIFORMITY_SCOPES:
            raise RSDistillError(
                f"generator.gan_uniformity_scope must be one of {', '.join(UNIFORMITY_SCOPES)}, not "
                f"{g.gan_uniformity_scope!r}."
            )
        if g.mixed_precision != "no":
            raise RSDistillError(
                f"The GAN trains in fp32; generator.mixed_precision={g.mixed_precision} is for the diffusion "
                "generator. Set generator.mixed_precision=no with generator.kind=gan."
            )
        check_gan_shape(16, g.gan_latent_dim, g.gan_width)
        return cls(
            g.max_train_steps,
            g.train_batch_size,
            g.gan_learning_rate,
            g.gan_latent_dim,
            g.gan_width,
            parse_policy(g.gan_diffaugment),
            g.gan_r1_gamma,
            g.gan_ema_decay,
            g.gan_uniformity_weight,
            g.gan_uniformity_scope,
            g.gan_entropy_weight,
            g.consistency_lambda,
            g.gan_collapse_fraction,
            g.classifier_steps or DEFAULT_GAN_CLASSIFIER_STEPS,
            g.checkpointing_steps,
            g.checkpoints_total_limit,
            g.resume_from_checkpoint,
            g.progress,
        )

    def identity(self) -> dict[str, Any]:
        """The settings that decide the trained weights (a checkpoint made with others is not resumed)."""
        skip = {"checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint", "progress"}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k not in skip}


UNIFORMITY_SCOPES = ("class", "batch")


class GanDiverged(RSDistillError):
    """A GAN loss became NaN or infinite."""

    def __init__(self, step: int, loss: str, value: float, where: str = "") -> None:
        self.step, self.loss, self.value = step, loss, value
        kept = f" The last checkpoint is kept in {where}." if where else ""
        super().__init__(
            f"The GAN's {loss} loss is {value} at step {step}: training diverged. To train again, "
            f"{DIVERGED_ADVICE}.{kept}"
        )


def spread(pixels: torch.Tensor) -> float:
    """Mean pairwise L2 distance between images (N, 3, H, W), per pixel value (so sides compare)."""
    flat = pixels.flatten(1).float()
    return float(torch.pdist(flat).mean() / flat.shape[1] ** 0.5) if len(flat) > 1 else 0.0


def real_spreads(images: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float]:
    """`spread` of the first `REAL_SPREAD_SAMPLES` real images of each class (0.0 with fewer than two)."""
    return [
        spread(images_to_pixels(images[np.flatnonzero(labels == c)[:REAL_SPREAD_SAMPLES]])) for c in range(num_classes)
    ]


@torch.no_grad()
def collapse_ratios(generator: GanGenerator, reals: list[float], seed: int) -> list[float]:
    """Per class, the spread of the generator's images over `COLLAPSE_SAMPLES` fixed latents divided by the real
    images' spread: near 0 when the generator makes one image for every z (1.0 for a class with fewer than two
    real images to compare with)."""
    device = next(generator.parameters()).device
    z = torch.randn(COLLAPSE_SAMPLES, generator.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    generator.eval()
    ratios = []
    for label, real in enumerate(reals):
        labels = torch.full((COLLAPSE_SAMPLES,), label, dtype=torch.long)
        made = generator(z.to(device), labels.to(device))
        ratios.append(spread(made) / real if real > 0 else 1.0)
    return ratios


def check_collapse(ratios: list[float], classes: list[str], fraction: float, step: int, where: str) -> None:
    """Raises when a class's `collapse_ratios` entry is below `fraction`."""
    collapsed = [f"{name} ({ratio:.3f})" for name, ratio in zip(classes, ratios, strict=True) if ratio < fraction]
    if collapsed:
        raise RSDistillError(
            f"The GAN collapsed at step {step}: for {', '.join(collapsed)} its samples over different z are "
            f"nearly one image (spread below generator.gan_collapse_fraction={fraction} of the real images'). "
            f"To train again, {COLLAPSE_ADVICE}. The checkpoint is kept in {where}."
        )
