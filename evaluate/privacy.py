"""Privacy of a set: how close each image is to a real train image, and what a membership attack learns.

- Nearest real train image of every set image, searched in the feature space of the full-data ConvNet-3
  (cosine distance), confirmed by SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5, on the three
  channels, averaged) over the `candidates` nearest by feature; a near-copy is an image whose best SSIM
  reaches the threshold.
- Loss-threshold membership inference (Yeom et al. 2018): the attacker scores each image by minus its
  cross-entropy under the classifier; AUC separating real train images (members of the data the set was
  made from) from real test images. It runs on a classifier trained on the set and, for comparison, on one
  trained on a real random coreset of the same size, where the coreset's own images are true members.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from rsdistill.evaluate.protocol import Trainer, to_uint8_tensor


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float = 255.0,
    window: int = 11,
    sigma: float = 1.5,
    chunk: int = 64,
) -> torch.Tensor:
    """Mean SSIM of each image pair of (N, C, H, W) tensors (valid-region windows), shape (N,).

    The Gaussian window is applied as two 1-D passes, `chunk` pairs at a time, in float64."""
    if len(a) > chunk:
        return torch.cat([ssim(a[i : i + chunk], b[i : i + chunk], data_range, window, sigma, chunk)
                          for i in range(0, len(a), chunk)])
    channels = a.shape[1]
    g = _gaussian(window, sigma).to(a.device)
    rows, columns = g.view(1, 1, window, 1).expand(channels, 1, window, 1), g.view(1, 1, 1, window).expand(
        channels, 1, 1, window)
    a, b = a.double(), b.double()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, rows, groups=channels), columns, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.mean(dim=(1, 2, 3)).float()


def _unit(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x, dtype=np.float32))
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class NearestReal:
    """For every set image: its nearest real train image (by SSIM among the feature candidates)."""

    index: np.ndarray  # (N,) index into the real train split
    feature_distance: np.ndarray  # (N,) cosine distance to that image
    ssim: np.ndarray  # (N,)
    nearest_feature_index: np.ndarray  # (N,) nearest by feature alone


def nearest_real(
    set_images: np.ndarray,
    set_features: np.ndarray,
    real_images: np.ndarray,
    real_features: np.ndarray,
    candidates: int = 5,
) -> NearestReal:
    """Searches each set image's nearest real images by feature, then keeps the one with the best SSIM."""
    sims = _unit(set_features) @ _unit(real_features).T
    k = min(candidates, sims.shape[1])
    top_sim, top_index = sims.topk(k, dim=1)
    a = torch.from_numpy(np.asarray(set_images)).permute(0, 3, 1, 2)
    scores = torch.stack(
        [ssim(a, torch.from_numpy(np.asarray(real_images[top_index[:, j].numpy()])).permute(0, 3, 1, 2))
         for j in range(k)],
        dim=1,
    )
    best = scores.argmax(dim=1)
    rows = torch.arange(len(best))
    return NearestReal(
        index=top_index[rows, best].numpy(),
        feature_distance=(1 - top_sim[rows, best]).clamp_min(0).numpy(),
        ssim=scores[rows, best].numpy(),
        nearest_feature_index=top_index[:, 0].numpy(),
    )


def near_copy_summary(nearest: NearestReal, real_keys: list[str], threshold: float) -> dict[str, object]:
    copies = nearest.ssim >= threshold
    return {
        "ssim_threshold": threshold,
        "near_copies": int(copies.sum()),
        "ssim_max": float(nearest.ssim.max()),
        "ssim_mean": float(nearest.ssim.mean()),
        "feature_distance_min": float(nearest.feature_distance.min()),
        "feature_distance_mean": float(nearest.feature_distance.mean()),
        "nearest": [
            {"real_key": real_keys[i], "ssim": float(s), "feature_distance": float(d)}
            for i, s, d in zip(nearest.index.tolist(), nearest.ssim, nearest.feature_distance, strict=True)
        ],
    }


def per_sample_loss(trainer: Trainer, model: nn.Module, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each image (no augmentation) under `model`."""
    logits = trainer.predict(model, to_uint8_tensor(np.asarray(images), trainer.device))
    target = torch.as_tensor(labels, dtype=torch.int64, device=logits.device)
    return F.cross_entropy(logits, target, reduction="none").cpu().numpy()


def loss_threshold_auc(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> float:
    """AUC of the attack that calls an image a member when its loss is low."""
    truth = np.concatenate([np.ones(len(member_loss)), np.zeros(len(nonmember_loss))])
    return float(roc_auc_score(truth, -np.concatenate([member_loss, nonmember_loss])))


def balanced_sample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` indices, drawn evenly over classes (sorted)."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    classes = np.unique(labels)
    per = max(1, limit // len(classes))
    rng = np.random.default_rng(seed)
    picks = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        picks.append(rng.choice(members, min(per, len(members)), replace=False))
    return np.sort(np.concatenate(picks))
