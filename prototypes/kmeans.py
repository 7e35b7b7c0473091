"""Seeded faiss k-means with a stable cluster order: clusters numbered by decreasing size, ties broken by
their smallest member key."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
from scipy.spatial.distance import cdist

from rsdistill.core.errors import RSDistillError

# faiss warns when a clustering gets fewer points than this per centroid; we say so once ourselves instead.
FAISS_MIN_POINTS_PER_CENTROID = 39
FAISS_DEVICES = ("auto", "cpu", "gpu")


@dataclass
class Clustering:
    """k-means of one class's features.

    Attributes:
        centroids: float32 (k, D); row j is cluster j.
        assignment: int64 (n,), the cluster of each point (its nearest centroid).
        distances: float64 (n, k), Euclidean distance of each point to each centroid.
    """

    centroids: np.ndarray
    assignment: np.ndarray
    distances: np.ndarray

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.assignment, minlength=len(self.centroids))

    @property
    def inertia(self) -> float:
        """Sum of squared distances of the points to their own centroid."""
        own = self.distances[np.arange(len(self.assignment)), self.assignment]
        return float(np.sum(own**2))


def faiss_has_gpu() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def faiss_gpu(setting: str = "auto") -> bool:
    """Whether k-means runs on the GPU for the ``prototypes.faiss_device`` setting: ``auto`` when faiss sees a
    GPU (faiss-gpu installed and a CUDA device), ``cpu`` never, ``gpu`` always.

    Raises:
        RSDistillError: For an unknown setting, or ``gpu`` where faiss sees none.
    """
    if setting not in FAISS_DEVICES:
        raise RSDistillError(f"prototypes.faiss_device {setting!r} is unknown; use {', '.join(FAISS_DEVICES)}.")
    if setting == "cpu":
        return False
    if setting == "gpu" and not faiss_has_gpu():
        raise RSDistillError(
            "prototypes.faiss_device gpu: faiss sees no GPU (faiss-cpu is installed, or there is no CUDA device). "
            'Install faiss-gpu (pip install -e ".[gpu]") on a GPU machine, or use faiss_device auto or cpu.'
        )
    return faiss_has_gpu()


def faiss_kmeans(
    x: np.ndarray, k: int, niter: int = 25, nredo: int = 1, seed: int = 0, gpu: bool | None = None
) -> np.ndarray:
    """Centroids (k, D) of faiss k-means over all of `x` (no subsampling, no too-few-points warning)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    kmeans = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        nredo=nredo,
        seed=seed,
        gpu=faiss_has_gpu() if gpu is None else gpu,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=math.ceil(len(x) / k) + 1,
    )
    kmeans.train(x)
    return np.asarray(kmeans.centroids, dtype=np.float32).reshape(k, x.shape[1])


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-centroid assignment and (n, k) Euclidean distances, in float64.

    A cluster left empty (possible only with duplicate points) gets the point farthest from its own
    centroid among clusters of two or more, and that point becomes its centroid (`centroids` is updated in
    place), so there are always exactly k non-empty clusters.
    """
    distances = cdist(x, centroids.astype(np.float64))
    forced: dict[int, int] = {}
    while True:
        assignment = distances.argmin(axis=1)
        for point, j in forced.items():
            assignment[point] = j
        sizes = np.bincount(assignment, minlength=len(centroids))
        empty = np.flatnonzero(sizes == 0)
        if not len(empty):
            return assignment, distances
        own = distances[np.arange(len(x)), assignment]
        movable = sizes[assignment] > 1
        movable[list(forced)] = False
        point = int(np.flatnonzero(movable)[np.argmax(own[movable])])
        centroids[empty[0]] = x[point]
        distances[:, empty[0]] = cdist(x, x[point : point + 1])[:, 0]
        forced[point] = int(empty[0])


def cluster(
    x: np.ndarray,
    keys: Sequence[str],
    k: int,
    niter: int = 25,
    nredo: int = 1,
    seed: int = 0,
    gpu: bool | None = None,
) -> Clustering:
    """k-means of `x` into `k` clusters, numbered by decreasing size (ties: smallest member key).

    Args:
        x: Features (n, D) of one class, n >= k.
        keys: Sample keys aligned with `x` (for the tie rule).
        k: Number of clusters.
        niter: k-means iterations.
        nredo: Restarts; the one with the lowest objective is kept.
        seed: faiss seed.
        gpu: Use faiss on GPU (None: when faiss sees one).
    """
    if len(x) < k:
        raise ValueError(f"cannot make {k} clusters of {len(x)} points")
    x64 = np.asarray(x, dtype=np.float64)
    centroids = faiss_kmeans(x, k, niter=niter, nredo=nredo, seed=seed, gpu=gpu)
    assignment, distances = assign(x64, centroids)
    sizes = np.bincount(assignment, minlength=k)
    first_key = [min(keys[i] for i in np.flatnonzero(assignment == j)) for j in range(k)]
    order = sorted(range(k), key=lambda j: (-sizes[j], first_key[j]))
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return Clustering(centroids[order], rank[assignment], distances[:, order])
