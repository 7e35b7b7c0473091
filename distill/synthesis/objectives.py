"""What refinement minimises between real and synthetic embeddings of one random network, class by class.

``mean`` is distribution matching's (Zhao & Bilen, WACV 2023): the squared distance between the class means.
``m3d`` is M3D's (Zhang et al., AAAI 2024): the maximum mean discrepancy under Gaussian kernels, which matches
every moment of the two embedding distributions, not only the first. It uses the multi-bandwidth Gaussian kernel
of the MMD literature (bandwidths h * 2^k, k = -2..2, h the mean pairwise squared distance of the pooled sample,
held constant in the gradient). Each bandwidth's MMD^2 is multiplied by h_k / 2 and the five are averaged: for a
kernel much wider than the sample the Gaussian MMD^2 tends to (2 / h_k) |mean_real - mean_synthetic|^2, so the
scaled loss is of the order of ``mean``'s (about 0.4 of it for a small shift at the sample's own bandwidths) and
the refinement's step size serves both objectives without retuning (M3D's own code tunes its own step instead;
this scaling is rsdistill's and untuned).
"""

from __future__ import annotations

import torch

from rsdistill.core.errors import RSDistillError

OBJECTIVES = ("mean", "m3d")
KERNEL_POWERS = (-2, -1, 0, 1, 2)


def check_objective(name: str) -> None:
    """Refuses an unknown `refine.objective`."""
    if name not in OBJECTIVES:
        raise RSDistillError(f"refine.objective must be one of {', '.join(OBJECTIVES)}, not {name!r}.")


def gaussian_mmd2(real: torch.Tensor, fake: torch.Tensor, scaled: bool = True) -> torch.Tensor:
    """Biased MMD^2 between two samples (N, D) and (M, D) under the multi-bandwidth Gaussian kernel.

    Args:
        real: Embeddings of real images.
        fake: Embeddings of synthetic images.
        scaled: Multiply each bandwidth's MMD^2 by h_k / 2 (first-order equal to the mean-matching loss).

    Returns:
        A scalar, zero when the two samples are the same multiset.
    """
    pooled = torch.cat([real, fake])
    distances = torch.cdist(pooled, pooled).pow(2)
    count = len(pooled)
    base = (distances.sum() / max(count * count - count, 1)).detach().clamp_min(1e-12)
    n = len(real)
    total = pooled.new_zeros(())
    for power in KERNEL_POWERS:
        bandwidth = base * 2.0**power
        kernel = torch.exp(-distances / bandwidth)
        mmd2 = kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()
        total = total + (mmd2 * bandwidth / 2 if scaled else mmd2)
    return total / len(KERNEL_POWERS)


def matching_loss(objective: str, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor,
                  class_means: torch.Tensor) -> torch.Tensor:
    """The loss of one iteration, summed over classes.

    Args:
        objective: One of :data:`OBJECTIVES`.
        real: Real embeddings (C, R, D), `R` per class, class by class.
        fake: Synthetic embeddings (N, D).
        labels: The synthetic images' classes (N,).
        class_means: (C, N) averaging matrix (row c: 1 / count over the images of class c).
    """
    if objective == "mean":
        return (real.mean(dim=1) - class_means @ fake).pow(2).sum()
    check_objective(objective)
    total = fake.new_zeros(())
    for label in labels.unique().tolist():
        total = total + gaussian_mmd2(real[label], fake[labels == label])
    return total
