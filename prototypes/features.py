"""Encoded splits, cached on disk per (dataset fingerprint, split, resolution, encoder id).

The cache lives under ``<cache root>/features/<dataset>-<fingerprint>/``. Encoding is written in chunks, so an
interrupted run resumes from the last finished chunk instead of starting over. Several processes of a launch
share the encoding of each chunk (`encode_split`).
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
from rsdistill.core.distributed import Processes
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
    chunks = [
        encoder.pool_latents(torch.from_numpy(np.array(latents[start : start + CHUNK]))).numpy()
        for start in range(0, count, CHUNK)
    ]
    return np.concatenate(chunks).astype(np.float32, copy=False)


def features_path(dataset: SceneDataset, split: str, resolution: int, encoder: Encoder) -> Path:
    """Where the features of a split are cached (`.npy`; the keys go next to it as `.json`)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.name).strip("_")[-40:]
    encoder_slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.name.split(":", 1)[0])
    tag = hashlib.sha256(encoder.id.encode()).hexdigest()[:12]
    folder = default_cache_root() / "features" / f"{slug}-{dataset.fingerprint}"
    return folder / f"{split}-{resolution}px-{encoder_slug}-{tag}.npy"


def read_features(path: Path) -> Features | None:
    """The features cached at `path` (with its keys and labels beside it), or None when they are not there."""
    index_path = path.with_suffix(".json")
    if not (path.is_file() and index_path.is_file()):
        return None
    index = json.loads(index_path.read_text())
    return Features(np.load(path), np.asarray(index["labels"], dtype=np.int64), index["keys"])


def encode_images(images: np.ndarray, encoder: Encoder, procs: Processes) -> np.ndarray:
    """Features of `images`, the encoder's batches (counted from the first image) dealt to the processes.

    Every batch holds the images one process would put in it, so the features do not depend on the number of
    processes (on a device whose kernels are deterministic). Every process gets all of them.
    """
    starts = range(0, len(images), encoder.batch_size)
    encoded = procs.map_sharded(
        lambda start: encoder.encode(images[start : start + encoder.batch_size], progress=False), starts
    )
    return np.concatenate(encoded) if encoded else np.zeros((0, 0), dtype=np.float32)


def encode_split(
    dataset: SceneDataset,
    split: str,
    resolution: int,
    encoder: Encoder,
    cache_dir: str | Path | None = None,
    on_bad_image: str = "stop",
    procs: Processes | None = None,
) -> Features:
    """Features of every image of `split`, from the cache when present.

    Under several processes (`procs`, every one of them calls this) the main process decodes the split and
    looks for cached features first; the batches of every chunk of `CHUNK` images are then dealt to the
    processes and gathered in order, and the main process alone writes the chunks and the cache. Every
    process gets the features, the same as one process's.

    Args:
        dataset: The dataset.
        split: ``train`` (or ``test`` for metrics; no selection ever uses it).
        resolution: Side the images are decoded at (the encoder may resize further).
        encoder: From :func:`prototypes.load_encoder`.
        cache_dir: Decoded-image cache folder (``--cache-dir``); features go under the cache root.
        on_bad_image: ``stop`` or ``skip`` for unreadable images.
        procs: The processes of this command (None: this one alone).
    """
    procs = procs or Processes()
    path = features_path(dataset, split, resolution, encoder)
    cached = procs.found_on_main(lambda: read_features(path), f"the cached features {path}")
    if cached is not None:
        return cached
    with procs.main_first():  # the main process decodes the split into the image cache, the others read it
        images = dataset.images(split, resolution, cache_dir=cache_dir, on_bad_image=on_bad_image)
    labels, keys = np.asarray(images.labels, dtype=np.int64), list(images.keys)
    if isinstance(encoder, VAEEncoder):
        pooled = procs.found_on_main(
            lambda: pool_cached_latents(dataset, split, resolution, encoder, len(images)),
            f"the cached latents of {split}",
        )
        if pooled is not None:
            return Features(pooled, labels, keys)
    partial = path.with_name(f".{path.stem}.partial")
    if procs.is_main:
        partial.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(images), CHUNK)
    finished = procs.share(
        {number for number in range(len(starts)) if (partial / f"chunk-{number:05d}.npy").is_file()}
        if procs.is_main
        else None
    )
    chunks = []
    progress = tqdm(
        total=len(images), desc=f"features {split} ({encoder.name})", unit="image", disable=not procs.is_main
    )
    for number, start in enumerate(starts):
        chunk_path = partial / f"chunk-{number:05d}.npy"
        if number in finished:
            chunks.append(np.load(chunk_path))
        else:
            chunks.append(encode_images(images.images[start : start + CHUNK], encoder, procs))
            if procs.is_main:
                save_npy_atomic(chunk_path, chunks[-1])
        progress.update(len(chunks[-1]))
    progress.close()
    features = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    if procs.is_main:
        save_npy_atomic(path, features)
        write_text_atomic(
            path.with_suffix(".json"),
            json.dumps({"encoder": encoder.name, "encoder_id": encoder.id, "keys": keys, "labels": labels.tolist()}),
        )
        shutil.rmtree(partial, ignore_errors=True)
    return Features(features, labels, keys)
