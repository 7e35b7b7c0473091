"""Coreset baselines: k real train images per class, chosen at random or in an encoder's feature space.

- ``random``: a seeded uniform draw per class.
- ``herding``: greedy mean matching (Welling 2009): each pick brings the running mean closest to the class
  mean.
- ``kcenter``: greedy farthest point, starting from the image nearest the class mean.
- ``kmeans``: faiss k-means with k = IPC, the medoid (member nearest its centroid) of each cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist

from rsdistill.core.config import PrototypeConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.imageset import check_set_destination, write_image_set
from rsdistill.prototypes.checks import check_ipc, note_small_classes
from rsdistill.prototypes.encoders import load_encoder
from rsdistill.prototypes.features import encode_split
from rsdistill.prototypes.kmeans import cluster, faiss_gpu
from rsdistill.prototypes.representatives import choose_representatives

METHODS = ("random", "herding", "kcenter", "kmeans")
DEFAULT_ENCODER = "efficientnet-lite0"


def herding(x: np.ndarray, n: int) -> list[int]:
    """Indices of `n` rows of `x` picked by greedy mean matching (ties: the lowest index)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    total = np.zeros_like(mean)
    available = np.ones(len(x), dtype=bool)
    chosen: list[int] = []
    for step in range(n):
        gap = np.sum((x - (mean * (step + 1) - total)) ** 2, axis=1)
        gap[~available] = np.inf
        index = int(np.argmin(gap))
        chosen.append(index)
        total += x[index]
        available[index] = False
    return chosen


def kcenter(x: np.ndarray, n: int) -> list[int]:
    """Indices of `n` rows of `x` by greedy farthest point from the row nearest the mean."""
    x = np.asarray(x, dtype=np.float64)
    first = int(np.argmin(cdist(x, x.mean(axis=0, keepdims=True))[:, 0]))
    chosen = [first]
    nearest = cdist(x, x[first : first + 1])[:, 0]
    nearest[first] = -1.0
    for _ in range(n - 1):
        index = int(np.argmax(nearest))
        chosen.append(index)
        nearest = np.minimum(nearest, cdist(x, x[index : index + 1])[:, 0])
        nearest[chosen] = -1.0
    return chosen


def select_coreset(
    method: str,
    features: np.ndarray | None,
    labels: np.ndarray,
    ipc: int,
    seed: int = 0,
    keys: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    niter: int = 25,
    nredo: int = 1,
    gpu: bool | None = None,
) -> np.ndarray:
    """Indices (into `labels`) of `ipc` samples per class, class by class in label order.

    Args:
        method: One of ``random``, ``herding``, ``kcenter``, ``kmeans``.
        features: (N, D) features aligned with `labels` (unused by ``random``, may be None there).
        labels: Class index of every sample.
        ipc: Samples per class.
        seed: Seed of ``random`` and of k-means.
        keys: Sample keys (k-means tie rule); default the indices' order.
        classes: Class names for messages; default ``class <label>``.
        niter, nredo: k-means iterations and restarts.
        gpu: Run k-means on the GPU (None: when faiss sees one; see `faiss_gpu`).
    """
    if method not in METHODS:
        raise RSDistillError(f"Unknown coreset method {method!r}; use one of {', '.join(METHODS)}.")
    if method != "random" and features is None:
        raise RSDistillError(f"Coreset method {method!r} needs features (choose an --encoder).")
    labels = np.asarray(labels)
    keys = list(keys) if keys is not None else [f"{i:012d}" for i in range(len(labels))]
    present = np.unique(labels)
    names = [classes[label] if classes else f"class {label}" for label in present]
    counts = {name: int(np.sum(labels == label)) for name, label in zip(names, present, strict=True)}
    check_ipc(counts, ipc)
    if method == "kmeans":
        note_small_classes(counts, ipc)
    rng = np.random.default_rng(seed)
    selected: list[np.ndarray] = []
    for label in present:
        members = np.flatnonzero(labels == label)
        members = members[np.argsort([keys[i] for i in members], kind="stable")]
        if method == "random":
            picks = rng.choice(len(members), size=ipc, replace=False)
        elif method == "herding":
            picks = herding(features[members], ipc)
        elif method == "kcenter":
            picks = kcenter(features[members], ipc)
        else:
            member_keys = [keys[i] for i in members]
            clustering = cluster(features[members], member_keys, ipc, niter=niter, nredo=nredo, seed=seed, gpu=gpu)
            picks, _ = choose_representatives(clustering, member_keys, "medoid")
        selected.append(members[np.asarray(picks, dtype=np.int64)])
    return np.concatenate(selected)


def write_coreset(
    context: RunContext,
    config: PrototypeConfig,
    out_dir: str | Path,
    method: str,
    ipc: int,
    encoder: str | None = DEFAULT_ENCODER,
) -> Path:
    """Selects a coreset of the train split and writes it in the common set format.

    Each `metadata.jsonl` line carries `source_key`, `method`, `encoder` (None for ``random``), `seed`, `ipc`.

    Returns:
        `out_dir`.
    """
    out_dir = Path(out_dir)
    check_set_destination(out_dir, overwrite=context.overwrite)
    if method not in METHODS:
        raise RSDistillError(f"Unknown coreset method {method!r}; use one of {', '.join(METHODS)}.")
    dataset = context.dataset
    check_ipc(dataset.class_counts("train"), ipc)
    images = context.images("train")
    features = None
    encoder_name = None
    if method != "random":
        if not encoder:
            raise RSDistillError(f"Coreset method {method!r} needs an --encoder.")
        model = load_encoder(
            encoder,
            device=context.device,
            batch_size=config.batch_size,
            pool=config.pool,
            image_size=config.encoder_size,
        )
        encoded = encode_split(
            dataset, "train", context.resolution, model, cache_dir=context.cache_dir, on_bad_image=context.on_bad_image
        )
        if encoded.keys != images.keys:
            raise RSDistillError("Cached features do not match the decoded images; clear the feature cache.")
        features, encoder_name = encoded.features, model.name
    index = select_coreset(
        method,
        features,
        images.labels,
        ipc,
        seed=context.seed,
        keys=images.keys,
        classes=dataset.classes,
        niter=config.niter,
        nredo=config.nredo,
        gpu=faiss_gpu(config.faiss_device) if method == "kmeans" else None,
    )
    chosen = images.subset(index)
    records = [
        {"source_key": key, "method": method, "encoder": encoder_name, "seed": context.seed, "ipc": ipc}
        for key in chosen.keys
    ]
    return write_image_set(out_dir, np.asarray(chosen.images), chosen.labels, dataset.classes, records)
