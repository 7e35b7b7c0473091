"""Diffusion bundles, the clean-latent estimate and the latent classifier, on tiny random components."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from rsdistill.core.errors import RSDistillError
from rsdistill.generator.bundle import load_bundle, save_bundle
from rsdistill.generator.diffusion_math import min_snr_weights, predicted_original, snr, training_target
from rsdistill.generator.latent_classifier import (
    LatentClassifier,
    LatentClassifierConfig,
    accuracy,
    dihedral,
    dihedral_average,
    predict_logits,
    train_latent_classifier,
)
from rsdistill.generator.tiny import tiny_sd_folder
from tests.generator_helpers import one_thread


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sd_folder(tmp_path_factory.mktemp("bundles") / "tiny-sd")


def test_load_bundle_parts_work_together(sd_folder: Path) -> None:
    bundle = load_bundle(str(sd_folder))
    assert bundle.prediction_type == "epsilon"
    assert bundle.latent_size == 16
    assert bundle.class_labels(3) is None
    hidden, truncated = bundle.encode_prompt(["forest", "a satellite image of a very long river bank"])
    assert hidden.shape == (2, bundle.tokenizer.model_max_length, 32)
    assert truncated == 1
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = bundle.encode_images(pixels)
        decoded = bundle.decode_latents(latents)
    assert latents.shape == (2, 4, 16, 16)
    assert decoded.shape == pixels.shape and decoded.abs().max() <= 1


def test_save_bundle_round_trip_keeps_weights(sd_folder: Path, tmp_path: Path) -> None:
    bundle = load_bundle(str(sd_folder))
    save_bundle(bundle, tmp_path / "copy", preset="test")
    again = load_bundle(str(tmp_path / "copy"))
    for name, value in bundle.unet.state_dict().items():
        assert torch.equal(value, again.unet.state_dict()[name])
    assert json.loads((tmp_path / "copy" / "rsdistill.json").read_text())["preset"] == "test"


def test_missing_component_is_named(sd_folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(RSDistillError, match=r"lacks its unet/ component"):
        load_bundle(str(broken))


def test_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(RSDistillError, match="not a diffusers bundle"):
        load_bundle(str(tmp_path / "photos"))
    with pytest.raises(RSDistillError, match="does not exist"):
        load_bundle(str(tmp_path / "nowhere"))


def test_unloadable_weights_are_named(sd_folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "noweights"
    shutil.copytree(sd_folder, broken)
    for weights in (broken / "vae").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(RSDistillError, match="vae/ component"):
        load_bundle(str(broken))


def test_hub_id_goes_through_from_pretrained_offline() -> None:
    with pytest.raises(RSDistillError, match="needs network access"):
        load_bundle("no-such-org/no-such-model")


def test_class_label_unet(tmp_path: Path) -> None:
    folder = tiny_sd_folder(tmp_path / "labels", num_class_embeds=4)
    with pytest.raises(RSDistillError, match="--class_labels_value"):
        load_bundle(str(folder)).class_labels(2)
    with pytest.raises(RSDistillError, match="outside the UNet's 4 class embeddings"):
        load_bundle(str(folder), class_labels_value=7)
    bundle = load_bundle(str(folder), class_labels_value=3)
    assert bundle.class_labels(2).tolist() == [3, 3]
    save_bundle(bundle, tmp_path / "saved")
    assert load_bundle(str(tmp_path / "saved")).class_labels_value == 3


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predicted_original_inverts_the_forward_process(prediction_type: str) -> None:
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    clean, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    timesteps = torch.tensor([0, 250, 600, 999])
    noisy = scheduler.add_noise(clean, noise, timesteps)
    target = training_target(scheduler, clean, noise, timesteps).requires_grad_()
    estimate = predicted_original(scheduler, noisy, target, timesteps)
    torch.testing.assert_close(estimate, clean, atol=2e-3, rtol=1e-3)
    estimate.sum().backward()
    assert target.grad is not None and target.grad.abs().sum() > 0
    scalar = predicted_original(scheduler, noisy[:1], target[:1].detach(), 0)
    torch.testing.assert_close(scalar, clean[:1], atol=2e-3, rtol=1e-3)


def test_min_snr_weights() -> None:
    scheduler = DDPMScheduler()
    timesteps = torch.tensor([1, 500, 999])
    ratio = snr(scheduler, timesteps)
    assert ratio[0] > ratio[1] > ratio[2]
    weights = min_snr_weights(scheduler, timesteps, gamma=5.0)
    torch.testing.assert_close(weights, torch.clamp(ratio, max=5.0) / ratio)
    assert weights[0] < 1 and weights[2] == 1


def test_dihedral_ops_are_the_eight_symmetries() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    images = [dihedral(x, torch.tensor([op])) for op in range(8)]
    assert torch.equal(images[0], x)
    assert len({tuple(im.flatten().tolist()) for im in images}) == 8


def test_eight_view_prediction_is_orientation_free_and_a_distribution() -> None:
    torch.manual_seed(0)
    model = LatentClassifier(LatentClassifierConfig(4, 3, width=8)).eval()
    latents = torch.randn(5, 4, 8, 8)
    turned = torch.rot90(latents.flip(-1), 1, dims=(-2, -1))
    with torch.no_grad():
        averaged = dihedral_average(model, latents)
        torch.testing.assert_close(dihedral_average(model, turned), averaged)
        assert not torch.allclose(model(turned), model(latents))  # a single view does depend on orientation
    torch.testing.assert_close(averaged.exp().sum(dim=1), torch.ones(5))
    torch.testing.assert_close(predict_logits(model, latents, views=8), averaged)
    torch.testing.assert_close(predict_logits(model, latents, views=1), model(latents).detach())
    with pytest.raises(RSDistillError, match="views must be 1 or 8"):
        predict_logits(model, latents, views=4)


def test_latent_classifier_learns_and_round_trips(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(40)
    latents = torch.randn(120, 4, 8, 8, generator=generator) * 0.5
    latents[:, 0] += labels[:, None, None].float() - 1  # class = mean level of channel 0 (rotation-invariant)
    model, history = train_latent_classifier(
        latents[:90], labels[:90], ["a", "b", "c"], latents[90:], labels[90:], steps=60, batch_size=32,
        width=8, eval_every=20, progress=False,
    )
    assert accuracy(model, latents[90:], labels[90:]) >= 0.9
    assert model.config.val_accuracy == max(history["val_accuracy"])
    model.save_pretrained(tmp_path / "clf")
    again = LatentClassifier.from_pretrained(tmp_path / "clf")
    torch.testing.assert_close(again(latents[:5]), model(latents[:5]))
    assert again.config.classes == ["a", "b", "c"]
    with pytest.raises(RSDistillError, match="not a latent classifier folder"):
        LatentClassifier.from_pretrained(tmp_path)
