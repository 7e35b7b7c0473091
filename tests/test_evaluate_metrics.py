"""Realism, coverage, privacy and CLIP metrics on synthetic features and tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rsdistill.evaluate.clipscore import clip_metrics, load_clip
from rsdistill.evaluate.metrics import fid, inception_features, intra_class_coverage, kid, prdc
from rsdistill.evaluate.privacy import balanced_sample, loss_threshold_auc, nearest_real, ssim


def test_fid_is_zero_for_one_distribution_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 8))
    assert fid(real, real) == pytest.approx(0.0, abs=1e-6)
    near, far = fid(real, rng.normal(size=(400, 8))), fid(real, rng.normal(size=(400, 8)) + 2.0)
    assert near < 1.0 < far and far == pytest.approx(32.0, rel=0.15)  # |mean shift|^2 = 8 * 2^2


def test_kid_is_near_zero_for_one_distribution_and_positive_after_a_shift() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16))
    same, _ = kid(real, rng.normal(size=(300, 16)), subsets=20, subset_size=100)
    shifted, _ = kid(real, rng.normal(size=(300, 16)) + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 0.05 < shifted


def test_prdc_separates_faithful_from_collapsed_sets() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 4))
    faithful = prdc(real, rng.normal(size=(200, 4)))
    collapsed = prdc(real, rng.normal(size=(200, 4)) * 0.05)  # all near the mean
    assert faithful["precision"] > 0.8 and faithful["recall"] > 0.8 and faithful["coverage"] > 0.8
    assert collapsed["precision"] > 0.9 and collapsed["recall"] < 0.2 and collapsed["coverage"] < 0.2


def test_intra_class_coverage_sees_a_missing_class_mode() -> None:
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.normal(size=(50, 2)), rng.normal(size=(50, 2)) + 10])
    real_labels = np.repeat([0, 1], 50)
    fake = real[::5] + 0.01
    fake_labels = real_labels[::5]
    full = intra_class_coverage(real, real_labels, fake, fake_labels, ["a", "b"])
    half = intra_class_coverage(real, real_labels, fake[fake_labels == 0], fake_labels[fake_labels == 0], ["a", "b"])
    assert full["mean"] > 0.6 and half["per_class"]["b"] == 0.0 and half["mean"] < full["mean"]


def _naive_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of single-channel images by the definition, window by window (11x11 Gaussian, sigma 1.5)."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_its_definition() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 40, a.shape), 0, 255)
    value = ssim(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])
    assert value.item() == pytest.approx(_naive_ssim(a, b), abs=1e-5)
    assert ssim(torch.from_numpy(a)[None, None], torch.from_numpy(a)[None, None]).item() == pytest.approx(1.0)


def test_nearest_real_finds_a_copied_image_and_scores_it_one() -> None:
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    features = real.reshape(20, -1).astype(np.float32)
    fakes = np.stack([real[7], rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)])
    found = nearest_real(fakes, fakes.reshape(2, -1).astype(np.float32), real, features, candidates=3)
    assert found.index[0] == 7 and found.ssim[0] == pytest.approx(1.0) and found.ssim[1] < 0.2


def test_loss_threshold_auc() -> None:
    assert loss_threshold_auc(np.array([0.1, 0.2]), np.array([1.0, 2.0])) == 1.0
    assert loss_threshold_auc(np.array([1.0, 2.0]), np.array([0.1, 0.2])) == 0.0
    index = balanced_sample(np.repeat([0, 1, 2], 100), 30, seed=0)
    assert len(index) == 30 and np.bincount(np.repeat([0, 1, 2], 100)[index]).tolist() == [10, 10, 10]


def test_inception_features_come_from_the_offline_fid_network() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    features = inception_features(images)
    assert features.shape == (2, 2048) and np.isfinite(features).all() and features.std() > 0


def _tiny_clip(folder: Path) -> Path:
    """A randomly initialised open_clip model saved as a local-dir folder (no weights exist offline)."""
    import open_clip
    from safetensors.torch import save_file

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    model = open_clip.CLIP(**config)
    folder.mkdir()
    save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    preprocess = {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": preprocess}))
    return folder


def test_clip_metrics_with_a_tiny_open_clip_model(tmp_path: Path) -> None:
    folder = _tiny_clip(tmp_path / "clip")
    clip = load_clip(f"local-dir:{folder}")
    images = np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
    out = clip_metrics(clip, images, np.array([0, 1, 0, 1]), ["forest", "lake"], texts=["dense trees", "", "", ""])
    assert 0.0 <= out["clip_score"] <= 100.0 and 0.0 <= out["zero_shot_accuracy"] <= 100.0
    assert out["texts_from_metadata"] == 1
    from safetensors.torch import load_file

    saved = load_file(folder / "open_clip_model.safetensors")
    loaded = clip[0].state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)  # the folder's weights, not a fresh init
