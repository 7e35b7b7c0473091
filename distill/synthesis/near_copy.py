"""Nearest real train image of each synthetic image, in a fixed feature space, and near-copy flags.

Feature spaces (``synthesis.near_copy_space``):

- ``pixels16`` (default, no model): each image is shrunk to 16 x 16 (box filter), each colour channel is
  centred on its own mean and the whole vector is L2-normalised, so the distance below is one minus the
  normalised cross-correlation of the two thumbnails: a brightness or colour shift does not hide a copy, and
  two uniform images of the same colour do not count as copies of each other. On EuroSAT's train split the
  nearest other train image of a real image is at least 0.08 away (1% quantile 0.16, median 0.45; 1000
  images sampled), so the default threshold flags only images far closer than real neighbours are.
- any encoder spec of :func:`prototypes.load_encoder` (e.g. ``efficientnet-lite0``): its features,
  L2-normalised; the train split's features come from (and go to) the prototypes feature cache.

The distance between two images is ``1 - cosine similarity`` of their features (0 for identical images, at
most 2). An image closer than the threshold (``synthesis.near_copy_threshold``, default 0.05) to some real
train image is flagged as a near copy of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rsdistill.data.dataset import ImageArray, SceneDataset, to_rgb_resized

FeatureFn = Callable[[np.ndarray], np.ndarray]
DEFAULT_SPACE = "pixels16"


def pixels16(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> channel-centred, L2-normalised 16 x 16 x 3 vectors (N, 768), float32."""
    pixels = torch.tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0
    small = F.adaptive_avg_pool2d(pixels, 16)
    small = small - small.mean(dim=(2, 3), keepdim=True)
    return F.normalize(small.flatten(1), dim=1, eps=1e-8).numpy()


def normalized(features: np.ndarray) -> np.ndarray:
    return F.normalize(torch.as_tensor(np.asarray(features, dtype=np.float32)), dim=1, eps=1e-8).numpy()


@dataclass
class NearestReal:
    """Features of the real train images, queried for the closest one to each synthetic image.

    Attributes:
        features: L2-normalised train features (N, D).
        keys: Train keys, row-aligned with `features`.
        encode: uint8 images (N, H, W, 3) -> L2-normalised features in the same space.
        space: Name of the feature space.
        resolution: Side the train images were decoded at; queries of another size are resized to it first.
    """

    features: np.ndarray
    keys: list[str]
    encode: FeatureFn
    space: str = DEFAULT_SPACE
    resolution: int | None = None

    @classmethod
    def for_dataset(
        cls,
        dataset: SceneDataset,
        space: str = DEFAULT_SPACE,
        resolution: int = 64,
        cache_dir: str | Path | None = None,
        device: str | torch.device = "auto",
    ) -> NearestReal:
        """Encodes the dataset's train split (decoded at `resolution`) once, in the space named."""
        if space == DEFAULT_SPACE:
            return cls.in_pixels16(dataset.images("train", resolution, cache_dir=cache_dir))
        from rsdistill.prototypes.encoders import load_encoder
        from rsdistill.prototypes.features import encode_split

        encoder = load_encoder(space, device=device)
        found = encode_split(dataset, "train", resolution, encoder, cache_dir=cache_dir)
        return cls(
            normalized(found.features),
            list(found.keys),
            lambda images: normalized(encoder.encode(images, progress=False)),
            space,
            resolution,
        )

    @classmethod
    def in_pixels16(cls, train: ImageArray) -> NearestReal:
        """The default space over train images already decoded (queries must come at their resolution)."""
        features = np.concatenate([pixels16(train.images[i : i + 2048]) for i in range(0, len(train), 2048)])
        return cls(features, list(train.keys), pixels16, DEFAULT_SPACE, train.images.shape[1])

    def query(self, images: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Nearest train key and its distance (1 - cosine) for each uint8 image (N, H, W, 3)."""
        if self.resolution is not None and images.shape[1:3] != (self.resolution, self.resolution):
            images = np.stack([to_rgb_resized(Image.fromarray(image), self.resolution) for image in images])
        similarity = self.encode(images) @ self.features.T
        nearest = similarity.argmax(axis=1)
        distances = 1.0 - similarity[np.arange(len(nearest)), nearest]
        return [self.keys[i] for i in nearest], np.maximum(distances, 0.0).astype(np.float64)
