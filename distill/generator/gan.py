"""A pixel-space conditional GAN (``generator.kind: gan``): a DCGAN-shaped generator conditioned on the class,
a projection discriminator with spectral norm, and the pixel classifier of its consistency loss.

The generator maps a latent ``z`` (``latent_dim``) and a class to an image in [-1, 1] (3, R, R): the latent and a
learned class embedding, concatenated, become a 4 x 4 map of ``8 x width`` channels (fewer below 64 pixels), and
each 4 x 4 transposed convolution of stride 2 doubles the side and halves the channels, down to ``width`` before
the last one, which makes the RGB image (tanh). The discriminator mirrors it with strided 4 x 4 convolutions
from ``width`` channels up, sums its last map over space into a feature vector ``h`` and scores
``w . h + embed(y) . h`` (Miyato & Koyama's projection); every layer is spectrally normalised.

Saved like a ``from_pretrained`` folder: ``config.json`` + ``model.safetensors`` (`GanGenerator.save_pretrained`).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.errors import RSDistillError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
GENERATOR_FOLDER = "generator"
CLASSIFIER_FOLDER = "classifier"
MAX_WIDTH_FACTOR = 8
CLASSIFIER_SIDE = 32  # the consistency classifier sees images average-pooled to this side


@dataclass
class GanConfig:
    """Shape of the generator (and of its discriminator), and the classes it was trained on."""

    num_classes: int
    resolution: int = 64
    latent_dim: int = 128
    width: int = 32
    classes: list[str] = field(default_factory=list)

    @property
    def levels(self) -> int:
        """Doublings from 4 x 4 to the resolution."""
        return int(np.log2(self.resolution // 4))

    def channels(self) -> list[int]:
        """Channels of the generator's maps from 4 x 4 up to half the resolution (the discriminator's reversed)."""
        return [self.width * min(2 ** (self.levels - 1 - i), MAX_WIDTH_FACTOR) for i in range(self.levels)]


def check_gan_shape(resolution: int, latent_dim: int, width: int) -> None:
    """Refuses a resolution that is not 4 x a power of two (at least 16) and non-positive sizes."""
    if resolution < 16 or resolution & (resolution - 1):
        raise RSDistillError(
            f"The GAN generator makes images whose side is a power of two from 16 on; data.resolution is "
            f"{resolution}. Use 16, 32, 64 or 128."
        )
    if latent_dim < 1 or width < 1:
        raise RSDistillError("generator.gan_latent_dim and generator.gan_width must be at least 1.")


class GanGenerator(nn.Module):
    """(z, class) -> image in [-1, 1]; see the module docstring."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        check_gan_shape(config.resolution, config.latent_dim, config.width)
        self.config = config
        channels = config.channels()
        self.embed = nn.Embedding(config.num_classes, config.latent_dim)
        self.project = nn.Linear(2 * config.latent_dim, channels[0] * 16)
        self.start = nn.Sequential(nn.BatchNorm2d(channels[0]), nn.ReLU())
        blocks: list[nn.Module] = []
        for inner, outer in itertools.pairwise(channels):
            blocks += [nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer), nn.ReLU()]
        blocks += [nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Latents (N, latent_dim) and class indices (N,) -> pixels (N, 3, R, R) in [-1, 1]."""
        hidden = self.project(torch.cat([z, self.embed(labels)], dim=1))
        return self.blocks(self.start(hidden.view(len(z), -1, 4, 4)))

    def save_pretrained(self, folder: str | Path) -> None:
        """Writes ``config.json`` and ``model.safetensors`` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS_NAME)
        write_text_atomic(folder / CONFIG_NAME, json.dumps(asdict(self.config), indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> GanGenerator:
        """The generator saved in `folder` (a GAN stage folder's ``generator/``), in eval mode."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise RSDistillError(
                f"{folder} is not a GAN generator folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}); train one with "
                "`rsdistill run` and generator.kind=gan."
            )
        try:
            config = GanConfig(**json.loads((folder / CONFIG_NAME).read_text()))
        except (TypeError, json.JSONDecodeError) as error:
            raise RSDistillError(f"{folder / CONFIG_NAME} is not a GAN generator config: {error}") from None
        model = cls(config)
        model.load_state_dict(load_file(folder / WEIGHTS_NAME))
        return model.eval()


class GanDiscriminator(nn.Module):
    """Projection discriminator with spectral norm: (image, class) -> (logit (N,), features h (N, C))."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        channels = [3, *reversed(config.channels())]
        layers: list[nn.Module] = []
        for inner, outer in itertools.pairwise(channels):
            layers += [spectral_norm(nn.Conv2d(inner, outer, 4, 2, 1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(channels[-1], 1))
        self.embed = spectral_norm(nn.Embedding(config.num_classes, channels[-1]))

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(pixels).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(1), h


def classifier_view(pixels: torch.Tensor) -> torch.Tensor:
    """What the consistency classifier sees of pixels (N, 3, R, R): their average pool to `CLASSIFIER_SIDE`."""
    return F.adaptive_avg_pool2d(pixels, min(CLASSIFIER_SIDE, pixels.shape[-1]))


def images_to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, 3) -> float pixels in [-1, 1] (N, 3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
