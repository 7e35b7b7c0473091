"""The denoising loop on tiny random SD components: determinism, guidance modes, CFG, v-prediction."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rsdistill.core.config import SynthesisConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.generator.bundle import DiffusionBundle, load_bundle
from rsdistill.generator.sampling import SamplerSettings, sample_latents
from rsdistill.generator.tiny import tiny_sd_folder

LATENT = 8
DEFAULTS = SamplerSettings.from_config(SynthesisConfig())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> DiffusionBundle:
    return load_bundle(str(tiny_sd_folder(tmp_path_factory.mktemp("sd") / "bundle", latent_size=LATENT)))


def run(
    bundle: DiffusionBundle, seeds: list[int], prototype: torch.Tensor | None = None, **settings
) -> torch.Tensor:
    embeds, _ = bundle.encode_prompt(["a satellite image of forest"] * len(seeds))
    negative, _ = bundle.encode_prompt([""])
    settings = {"num_inference_steps": 4, **settings}
    return sample_latents(bundle, embeds, negative, seeds, replace(DEFAULTS, **settings), prototype)


def prototypes(count: int) -> torch.Tensor:
    return torch.randn(count, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(7))


def test_same_seed_same_latents_other_seed_differs(bundle: DiffusionBundle) -> None:
    first = run(bundle, [1, 2], mode="none")
    again = run(bundle, [1, 2], mode="none")
    other = run(bundle, [3, 2], mode="none")
    assert first.shape == (2, 4, LATENT, LATENT)
    assert torch.equal(first, again)
    assert not torch.allclose(first[0], other[0])
    assert torch.allclose(first[1], other[1], atol=1e-5)


def test_full_pull_lands_on_the_prototype(bundle: DiffusionBundle) -> None:
    """Strength 1 at every step replaces the clean estimate by the prototype; DDIM's last step returns it."""
    target = prototypes(2)
    out = run(bundle, [1, 2], target, mode="prototype", prototype_fraction=1.0, prototype_strength=1.0)
    assert torch.allclose(out, target, atol=1e-4)


def test_zero_strength_is_plain_sampling_and_some_strength_moves_toward_prototype(
    bundle: DiffusionBundle,
) -> None:
    target = prototypes(2)
    plain = run(bundle, [1, 2], mode="none")
    zero = run(bundle, [1, 2], target, mode="prototype", prototype_strength=0.0)
    pulled = run(bundle, [1, 2], target, mode="prototype", prototype_strength=0.5, prototype_fraction=0.5)
    assert torch.allclose(plain, zero, atol=1e-5)
    assert (pulled - target).norm() < (plain - target).norm()


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_img2img_strength(bundle: DiffusionBundle, scheduler: str) -> None:
    target = prototypes(2)
    untouched = run(bundle, [1, 2], target, mode="img2img", img2img_strength=0.0, scheduler=scheduler)
    light = run(bundle, [1, 2], target, mode="img2img", img2img_strength=0.3, scheduler=scheduler)
    full = run(bundle, [1, 2], target, mode="img2img", img2img_strength=1.0, scheduler=scheduler)
    assert torch.equal(untouched, target)
    assert torch.isfinite(light).all() and torch.isfinite(full).all()
    assert (light - target).norm() < (full - target).norm()


def test_guidance_scale_changes_the_sample(bundle: DiffusionBundle) -> None:
    assert not torch.allclose(
        run(bundle, [1], mode="none", guidance_scale=1.0), run(bundle, [1], mode="none", guidance_scale=5.0)
    )


def test_v_prediction_and_class_labels(tmp_path: Path) -> None:
    folder = tiny_sd_folder(
        tmp_path / "v", prediction_type="v_prediction", num_class_embeds=3, latent_size=LATENT
    )
    with pytest.raises(RSDistillError, match="requires class labels"):
        run(load_bundle(str(folder)), [1], mode="none")
    bundle = load_bundle(str(folder), class_labels_value=2)
    assert bundle.prediction_type == "v_prediction"
    target = prototypes(1)
    out = run(
        bundle, [1], target, mode="prototype", prototype_fraction=1.0, prototype_strength=1.0, scheduler="dpm"
    )
    assert torch.isfinite(out).all()
    ddim = run(bundle, [1], target, mode="prototype", prototype_fraction=1.0, prototype_strength=1.0)
    assert torch.allclose(ddim, target, atol=1e-4)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "sketch"}, "guidance"),
        ({"scheduler": "euler"}, "scheduler"),
        ({"prototype_strength": 1.5}, "prototype_strength"),
        ({"img2img_strength": -0.1}, "img2img_strength"),
    ],
)
def test_settings_are_checked(settings: dict, message: str) -> None:
    with pytest.raises(RSDistillError, match=message):
        replace(DEFAULTS, **settings)
