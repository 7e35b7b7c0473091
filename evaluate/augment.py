"""docs/benchmark.md's training augmentation, drawn per image and applied to a whole batch in one resampling.

Random horizontal flip, random vertical flip, random 90-degree rotation and a random resized crop with scale
(0.8, 1) and aspect ratio (3/4, 4/3) back to the input size. The flips and rotations are exact pixel
permutations of the square grid, so all four compose into one affine map per image and a single bilinear
`grid_sample` applies them (no per-image Python, no PIL). The crop box is continuous (sub-pixel), clipped to
the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALE = (0.8, 1.0)
RATIO = (3 / 4, 4 / 3)

# The eight symmetries of the square as 2x2 matrices: rotation by k * 90 degrees after an optional flip.
_ROT90 = torch.tensor([[0.0, -1.0], [1.0, 0.0]])


def dihedral(rotations: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor) -> torch.Tensor:
    """(N, 2, 2) matrices R^k V H for k = `rotations`, H/V = flips where the masks are true."""
    n = rotations.shape[0]
    matrices = torch.eye(2).repeat(n, 1, 1)
    matrices[:, 0, 0] = torch.where(hflip, -1.0, 1.0)
    matrices[:, 1, 1] = torch.where(vflip, -1.0, 1.0)
    powers = torch.stack([torch.linalg.matrix_power(_ROT90, k) for k in range(4)])
    return powers[rotations] @ matrices


def augmentation_params(n: int, generator: torch.Generator) -> torch.Tensor:
    """(N, 2, 3) affine matrices (output grid -> input coordinates in [-1, 1]) for `augment`."""
    hflip = torch.rand(n, generator=generator) < 0.5
    vflip = torch.rand(n, generator=generator) < 0.5
    rotations = torch.randint(0, 4, (n,), generator=generator)
    area = torch.empty(n).uniform_(*SCALE, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=generator)
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    # Box centre, uniform where the box stays inside the image ([-1, 1] coordinates).
    centre_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    theta = torch.zeros(n, 2, 3)
    theta[:, :, :2] = torch.diag_embed(torch.stack([width, height], dim=1)) @ dihedral(rotations, hflip, vflip)
    theta[:, 0, 2] = centre_x
    theta[:, 1, 2] = centre_y
    return theta


def apply_affine(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resamples each image of (N, C, H, W) `images` through its (2, 3) map, bilinear, same size."""
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random flip/rotation/resized crop per image of a (N, C, H, W) float batch."""
    return apply_affine(images, augmentation_params(images.shape[0], generator))
