"""The adversarial autoencoder option of the from-scratch generator (VQGAN, Esser et al. 2021; the autoencoder of
Stable Diffusion, Rombach et al. 2022).

A PatchGAN discriminator (pix2pix) learns to tell real crops from their reconstructions with the hinge loss; from
step `start` on, the VAE is also trained to fool it, with a weight that adapts to the gradient norms at the
decoder's last layer, and to match the discriminator's intermediate features of the real crop (feature
matching, a perceptual term that needs no pretrained network). Before `start` nothing here runs, so the VAE
trains exactly as the ``kl`` autoencoder does.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

AUTOENCODERS = ("kl", "adversarial")
MAX_ADAPTIVE_WEIGHT = 1e4


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN: strided 4 x 4 convolutions, one logit per overlapping patch.

    With two strided layers (the default) each logit sees 34 x 34 pixels, about half of a 64-pixel image, and a
    32-pixel crop gives 6 x 6 logits.

    Args:
        width: Channels of the first layer; each further layer doubles them.
        layers: Strided (stride 2) layers before the stride-1 layer and the logit layer.
    """

    def __init__(self, width: int = 32, layers: int = 2) -> None:
        super().__init__()
        channels = [3] + [width * 2**i for i in range(layers + 1)]
        blocks = []
        for i in range(layers + 1):
            stride = 2 if i < layers else 1
            conv = nn.Conv2d(channels[i], channels[i + 1], 4, stride, 1, bias=i == 0)
            norm = nn.Identity() if i == 0 else nn.BatchNorm2d(channels[i + 1])
            blocks.append(nn.Sequential(conv, norm, nn.LeakyReLU(0.2)))
        self.blocks = nn.ModuleList(blocks)
        self.logits = nn.Conv2d(channels[-1], 1, 4, 1, 1)
        for module in self.modules():  # VQGAN's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Patch logits (N, 1, h, w) of pixels in [-1, 1], and each block's output (for feature matching)."""
        features = []
        x = pixels
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return self.logits(x), features


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 (E[max(0, 1 - D(x))] + E[max(0, 1 + D(x_rec))])."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def feature_matching_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the discriminator's blocks of the L1 distance between real and reconstructed features."""
    return torch.stack([(f.float() - r.float()).abs().mean() for r, f in zip(real, fake, strict=True)]).mean()


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """||grad_last L_rec|| / (||grad_last L_adv|| + 1e-4), clamped to [0, 1e4] and detached (VQGAN).

    Both gradients are taken with respect to `last_layer` (the decoder's output convolution), so the
    adversarial term pushes on the decoder about as hard as the reconstruction term does.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (adv_grad.norm() + 1e-4)
    return torch.nan_to_num(weight.clamp(0.0, MAX_ADAPTIVE_WEIGHT), nan=0.0).detach()


class Adversary:
    """The discriminator, its optimiser and what they add to each VAE training step.

    Args:
        start: The first step (0-based) at which the discriminator trains and the VAE's loss gains its terms.
        disc_weight: Factor on the adaptive weight of the adversarial term.
        perceptual_weight: Weight of the feature-matching term (0: none).
        learning_rate: The discriminator's Adam learning rate (betas 0.5, 0.9, as VQGAN).
        seed: Seeds the discriminator's initialisation without touching the global random stream.
        device: Where the discriminator lives.
        autocast: Returns the forward passes' autocast context (the VAE's mixed precision).
        scaled: Whether the discriminator's loss goes through a gradient scaler (fp16).
    """

    def __init__(
        self,
        start: int,
        disc_weight: float,
        perceptual_weight: float,
        learning_rate: float,
        seed: int,
        device: torch.device,
        autocast: Callable[[], AbstractContextManager[object]],
        scaled: bool = False,
        width: int = 32,
        layers: int = 2,
    ) -> None:
        self.start = start
        self.disc_weight = disc_weight
        self.perceptual_weight = perceptual_weight
        self.autocast = autocast
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.discriminator = PatchDiscriminator(width, layers).to(device).train()
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=learning_rate, betas=(0.5, 0.9))
        self.scaler = torch.amp.GradScaler(device.type, enabled=scaled)

    def training_state(self) -> dict[str, Any]:
        """The optimiser's and gradient scaler's state, for a checkpoint (the weights are
        `discriminator.state_dict()`)."""
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def restore(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Sets the discriminator's weights and what `training_state` recorded."""
        self.discriminator.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])

    def generator_loss(
        self,
        step: int,
        pixels: torch.Tensor,
        reconstruction: torch.Tensor,
        rec_loss: torch.Tensor,
        last_layer: torch.Tensor,
    ) -> tuple[torch.Tensor | float, dict[str, float]]:
        """The terms to add to the VAE's loss at `step`: lambda * disc_weight * L_adv + w_p * L_fm.

        Returns 0 and zero statistics before `start`.
        """
        if step < self.start:
            return 0.0, {"adv_loss": 0.0, "adaptive_weight": 0.0, "feature_loss": 0.0}
        self.discriminator.requires_grad_(False)
        with self.autocast():
            fake_logits, fake_features = self.discriminator(reconstruction)
        adv_loss = -fake_logits.float().mean()
        feature_loss = torch.zeros((), device=pixels.device)
        if self.perceptual_weight:
            with torch.no_grad(), self.autocast():
                _, real_features = self.discriminator(pixels)
            feature_loss = feature_matching_loss(real_features, fake_features)
        perceptual = self.perceptual_weight * feature_loss
        weight = self.disc_weight * adaptive_weight(rec_loss + perceptual, adv_loss, last_layer)
        stats = {"adv_loss": adv_loss.item(), "adaptive_weight": weight.item(), "feature_loss": feature_loss.item()}
        return weight * adv_loss + perceptual, stats

    def discriminator_step(self, step: int, pixels: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, float]:
        """One hinge-loss update of the discriminator on real crops and (detached) reconstructions."""
        if step < self.start:
            return {"disc_loss": 0.0}
        self.discriminator.requires_grad_(True)
        with self.autocast():
            real_logits, _ = self.discriminator(pixels)
            fake_logits, _ = self.discriminator(reconstruction.detach())
        loss = hinge_discriminator_loss(real_logits.float(), fake_logits.float())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {
            "disc_loss": loss.item(),
            "logits_real": real_logits.float().mean().item(),
            "logits_fake": fake_logits.float().mean().item(),
        }
