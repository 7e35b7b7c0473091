"""Encoded splits, cached on disk per (dataset fingerprint, split, resolution, encoder id).

The cache lives under ``<cache root>/features/<dataset>-<fingerprint>/``. Encoding is written in chunks, so an
interrupted run resumes from the last finished chunk instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rsdistill.core.atomic import save_npy_atomic, write_text_atomic
from rsdistill.data.dataset import SceneDataset, default_cache_root
from rsdistill.prototypes.encoders import Encoder, VAEEncoder

CHUNK = 2048


@dataclass
class Features:
    """Features of one split, aligned with `dataset.images(split, resolution)`."""

    features: np.ndarray  # float32, (N, D)
    labels: np.ndarray  # int64, (N,)
    keys: list[str]


def pool_cached_latents(
    dataset: SceneDataset, split: str, resolution: int, encoder: VAEEncoder, count: int
) -> np.ndarray | None:
    """VAE features from the split's latents that generator training cached for the same VAE, or None.

    The base generator stage encodes the train split once; pooling those latents gives exactly what
    encoding the images again would (the same posterior means), without running the encoder.
    """
    from rsdistill.generator.finetune_data import latents_cache_path, latents_tag

    encoder.ensure_loaded()
    path = latents_cache_path(encoder.vae, latents_tag(dataset, split, resolution))
    if not path.is_file():
        return None
    latents = np.load(path, mmap_mode="r")
    if len(latents) != count:  # made from another selection of readable images
        return None
    chunks = [encoder.pool_latents(torch.from_numpy(np.array(latents[start : start + CHUNK]))).numpy()
              for start in range(0, count, CHUNK)]
    return np.concatenate(chunks).astype(np.float32, copy=False)


def features_path(dataset: SceneDataset, split: str, resolution: int, encoder: Encoder) -> Path:
    """Where the features of a split are cached (`.npy`; the keys go next to it as `.json`)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.name).strip("_")[-40:]
    encoder_slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.name.split(":", 1)[0])
    tag = hashlib.sha256(encoder.id.encode()).hexdigest()[:12]
    folder = default_cache_root() / "features" / f"{slug}-{dataset.fingerprint}"
    return folder / f"{split}-{resolution}px-{encoder_slug}-{tag}.npy"


def encode_split(
    dataset: SceneDataset,
    split: str,
    resolution: int,
    encoder: Encoder,
    cache_dir: str | Path | None = None,
    on_bad_image: str = "stop",
) -> Features:
    """Features of every image of `split`, from the cache when present.

    Args:
        dataset: The dataset.
        split: ``train`` (or ``test`` for metrics; no selection ever uses it).
        resolution: Side the images are decoded at (the encoder may resize further).
        encoder: From :func:`prototypes.load_encoder`.
        cache_dir: Decoded-image cache folder (``--cache-dir``); features go under the cache root.
        on_bad_image: ``stop`` or ``skip`` for unreadable images.
    """
    path = features_path(dataset, split, resolution, encoder)
    index_path = path.with_suffix(".json")
    if path.is_file() and index_path.is_file():
        index = json.loads(index_path.read_text())
        return Features(np.load(path), np.asarray(index["labels"], dtype=np.int64), index["keys"])
    images = dataset.images(split, resolution, cache_dir=cache_dir, on_bad_image=on_bad_image)
    if isinstance(encoder, VAEEncoder):
        pooled = pool_cached_latents(dataset, split, resolution, encoder, len(images))
        if pooled is not None:
            return Features(pooled, images.labels, list(images.keys))
    partial = path.with_name(f".{path.stem}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(images), CHUNK)
    chunks = []
    for number, start in enumerate(tqdm(starts, desc=f"features {split} ({encoder.name})", unit="chunk")):
        chunk_path = partial / f"chunk-{number:05d}.npy"
        if chunk_path.is_file():
            chunks.append(np.load(chunk_path))
            continue
        chunks.append(encoder.encode(images.images[start : start + CHUNK]))
        save_npy_atomic(chunk_path, chunks[-1])
    features = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    save_npy_atomic(path, features)
    write_text_atomic(
        index_path,
        json.dumps(
            {
                "encoder": encoder.name,
                "encoder_id": encoder.id,
                "keys": images.keys,
                "labels": images.labels.tolist(),
            }
        ),
    )
    shutil.rmtree(partial, ignore_errors=True)
    return Features(features, np.asarray(images.labels, dtype=np.int64), list(images.keys))
