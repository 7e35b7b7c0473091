"""The adversarial autoencoder option of the from-scratch generator, at toy sizes (seconds on one thread)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from rsdistill.core.errors import RSDistillError
from rsdistill.generator.adversarial import (
    MAX_ADAPTIVE_WEIGHT,
    PatchDiscriminator,
    adaptive_weight,
    hinge_discriminator_loss,
)
from rsdistill.generator.scratch import get_preset, train_vae
from tests.generator_helpers import one_thread

TOY = {"resolution": 16, "vae_channels": (16, 16, 16), "vae_steps": 6, "vae_batch_size": 8, "vae_crop": 16}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)


def train(images: np.ndarray, history: list[dict[str, float]] | None = None, **settings: object) -> AutoencoderKL:
    preset = get_preset("scratch-cpu", **{**TOY, **settings})
    return train_vae(images, preset, seed=3, progress=False, history=history)


def same_weights(first: AutoencoderKL, second: AutoencoderKL) -> bool:
    other = second.state_dict()
    return all(torch.equal(value, other[name]) for name, value in first.state_dict().items())


def test_unknown_autoencoder_is_refused() -> None:
    assert get_preset("scratch-cpu").autoencoder == "kl"
    assert get_preset("scratch-cpu", autoencoder="adversarial").autoencoder == "adversarial"
    with pytest.raises(RSDistillError, match=r"autoencoder 'vqgan' \(setting `autoencoder`\).*kl, adversarial"):
        get_preset("scratch-cpu", autoencoder="vqgan")


def test_patch_discriminator_and_hinge_loss() -> None:
    logits, features = PatchDiscriminator()(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 1, 6, 6) and [f.shape[1] for f in features] == [32, 64, 128]
    sure = hinge_discriminator_loss(torch.full((4,), 2.0), torch.full((4,), -2.0))
    assert sure.item() == 0.0
    assert hinge_discriminator_loss(torch.zeros(4), torch.zeros(4)).item() == 1.0


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(2, 3, 3, padding=1)
    out = layer(torch.randn(2, 2, 5, 5))
    rec, adv = out.pow(2).mean(), -5.0 * out.mean()
    weight = adaptive_weight(rec, adv, layer.weight)
    rec_grad, adv_grad = (torch.autograd.grad(loss, layer.weight, retain_graph=True)[0] for loss in (rec, adv))
    assert torch.isfinite(weight) and weight.item() > 0 and not weight.requires_grad
    assert weight.item() == pytest.approx((rec_grad.norm() / (adv_grad.norm() + 1e-4)).item(), rel=1e-6)
    flat = 0.0 * out.sum()  # no adversarial gradient: finite thanks to the 1e-4, and clamped
    assert adaptive_weight(rec, flat, layer.weight).item() == pytest.approx(rec_grad.norm().item() / 1e-4, rel=1e-6)
    assert adaptive_weight(1e3 * rec, flat, layer.weight).item() == MAX_ADAPTIVE_WEIGHT


def test_the_discriminator_joins_only_after_its_warm_up(images: np.ndarray) -> None:
    history: list[dict[str, float]] = []
    train(images, history, autoencoder="adversarial", vae_disc_start=3, vae_perceptual_weight=0.1)
    assert len(history) == 6
    for stats in history[:3]:
        assert stats["disc_loss"] == stats["adv_loss"] == stats["adaptive_weight"] == stats["feature_loss"] == 0.0
    for stats in history[3:]:
        assert stats["disc_loss"] > 0 and stats["feature_loss"] > 0 and stats["adv_loss"] != 0
        assert np.isfinite(stats["adaptive_weight"]) and stats["adaptive_weight"] > 0


def test_adversarial_training_is_seeded_and_moves_the_vae_its_own_way(images: np.ndarray) -> None:
    kl = train(images)
    first, second = (train(images, autoencoder="adversarial", vae_disc_start=2, vae_perceptual_weight=0.1)
                     for _ in range(2))
    assert same_weights(first, second)
    assert not torch.equal(first.decoder.conv_out.weight, kl.decoder.conv_out.weight)
    assert not torch.equal(first.encoder.conv_in.weight, kl.encoder.conv_in.weight)
    # A discriminator that never starts leaves the training exactly the kl one: it draws on no shared randomness.
    assert same_weights(train(images, autoencoder="adversarial", vae_disc_start=6), kl)


def test_kl_training_is_what_it_was(images: np.ndarray) -> None:
    """Figures of this toy VAE from the code before the adversarial option existed (bit-identical there on this
    machine; a tolerance, as another CPU may round differently)."""
    vae = train(images)
    assert vae.config.scaling_factor == pytest.approx(3.272293885148976, rel=1e-5)
    assert vae.decoder.conv_out.weight.sum().item() == pytest.approx(0.27383941411972046, rel=1e-4)
    assert vae.encoder.conv_in.weight.abs().sum().item() == pytest.approx(41.66825866699219, rel=1e-5)
