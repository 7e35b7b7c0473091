"""Stage 2: per-class k-means (k = IPC) in an encoder's space and one real representative per cluster."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from rsdistill.core.artifacts import Stage
from rsdistill.core.config import PrototypeConfig
from rsdistill.core.distributed import build_stage, processes
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.prototypes.checks import check_ipc, note_small_classes
from rsdistill.prototypes.encoders import load_encoder
from rsdistill.prototypes.features import Features, encode_split
from rsdistill.prototypes.kmeans import cluster, faiss_gpu
from rsdistill.prototypes.representatives import RULES, choose_representatives
from rsdistill.prototypes.schema import Prototype, PrototypeSet


def class_indices(features: Features, label: int) -> np.ndarray:
    """Indices of one class's samples, ordered by key."""
    members = np.flatnonzero(features.labels == label)
    return members[np.argsort([features.keys[i] for i in members], kind="stable")]


def stage_settings(config: PrototypeConfig) -> dict[str, object]:
    """The settings that identify a prototypes stage: all of them, `faiss_device` only when it is forced (so the
    stages made before the setting existed stay valid)."""
    settings = asdict(config)
    if settings["faiss_device"] == "auto":
        del settings["faiss_device"]
    return settings


def build_prototypes(
    features: Features,
    classes: list[str],
    config: PrototypeConfig,
    seed: int = 0,
    dataset: str = "",
    dataset_fingerprint: str = "",
    resolution: int = 64,
) -> PrototypeSet:
    """Clusters every class into `config.ipc` clusters and picks each cluster's representative.

    Args:
        features: Train features from :func:`prototypes.encode_split`.
        classes: Class names (labels index them).
        config: Encoder name, IPC, k-means and rule settings.
        seed: k-means seed.
        dataset, dataset_fingerprint, resolution: Recorded in the result.
    """
    if config.rule not in RULES:
        raise RSDistillError(f"Unknown representative rule {config.rule!r} (--rule); use one of {', '.join(RULES)}.")
    counts = {name: int(np.sum(features.labels == label)) for label, name in enumerate(classes)}
    check_ipc(counts, config.ipc)
    note_small_classes(counts, config.ipc)
    gpu = faiss_gpu(config.faiss_device)
    prototypes: list[Prototype] = []
    centroids, representatives = [], []
    for label, name in enumerate(classes):
        index = class_indices(features, label)
        x = features.features[index]
        keys = [features.keys[i] for i in index]
        clustering = cluster(x, keys, config.ipc, niter=config.niter, nredo=config.nredo, seed=seed, gpu=gpu)
        chosen, scores = choose_representatives(clustering, keys, config.rule, config.alpha)
        for j in range(config.ipc):
            members = np.flatnonzero(clustering.assignment == j)
            members = sorted(members, key=lambda i: (clustering.distances[i, j], keys[i]))
            prototypes.append(
                Prototype(
                    id=f"{name}/{j}",
                    class_name=name,
                    label=label,
                    cluster=j,
                    source_key=keys[chosen[j]],
                    cluster_size=len(members),
                    members=[keys[i] for i in members],
                    member_distances=[round(float(clustering.distances[i, j]), 6) for i in members],
                    score=round(float(scores[chosen[j]]), 6),
                )
            )
            centroids.append(clustering.centroids[j])
            representatives.append(x[chosen[j]])
    return PrototypeSet(
        dataset=dataset,
        dataset_fingerprint=dataset_fingerprint,
        ipc=config.ipc,
        encoder=config.encoder,
        rule=config.rule,
        alpha=float(config.alpha),
        seed=seed,
        resolution=resolution,
        classes=list(classes),
        prototypes=prototypes,
        centroids=np.stack(centroids).astype(np.float32),
        representatives=np.stack(representatives).astype(np.float32),
    )


def run_prototypes(
    context: RunContext,
    config: PrototypeConfig,
    out: str | Path,
    vae: str | None = None,
) -> Path:
    """Runs the prototypes stage into the stage folder `out` (skipped when already done); returns it.

    Under ``accelerate launch`` or ``torchrun`` every process calls this: the processes share the encoding of
    the train split (`encode_split`, each on its own device) and the main process, which holds the stage,
    clusters and writes the prototypes while the others wait. The prototypes are those of one process.

    Args:
        context: The dataset (only its train split is read), resolution, cache, device and seed (k-means).
        config: The stage's settings.
        out: The stage folder (``<run_dir>/prototypes`` in a run).
        vae: The folder a bare ``vae`` encoder means (the run's generator bundle).
    """
    dataset, seed, resolution = context.dataset, context.seed, context.resolution
    check_ipc(dataset.class_counts("train"), config.ipc)
    faiss_gpu(config.faiss_device)  # refused before anything is encoded
    spec = f"vae:{vae}" if config.encoder == "vae" and vae else config.encoder
    config = PrototypeConfig(**{**asdict(config), "encoder": spec})
    procs = processes(context.device)
    encoder = load_encoder(
        spec, device=procs.device, batch_size=config.batch_size, pool=config.pool, image_size=config.encoder_size
    )
    out = Path(out)
    stage = Stage(
        out.parent,
        out.name,
        config={**stage_settings(config), "seed": seed, "resolution": resolution},
        inputs={"data": dataset.fingerprint, "encoder": encoder.id},
        overwrite=context.overwrite,
    )
    if stage.done:
        return stage.path
    extra: dict[str, float | int] = {}
    with build_stage(stage, procs, extra) as work:
        start = time.perf_counter()
        features = encode_split(
            dataset,
            "train",
            resolution,
            encoder,
            cache_dir=context.cache_dir,
            on_bad_image=context.on_bad_image,
            procs=procs,
        )
        if procs.is_main:
            extra["encode_s"] = round(time.perf_counter() - start, 3)
            start = time.perf_counter()
            prototypes = build_prototypes(
                features, dataset.classes, config, seed, dataset.name, dataset.fingerprint, resolution
            )
            extra["kmeans_s"] = round(time.perf_counter() - start, 3)
            extra["prototypes"] = len(prototypes.prototypes)
            extra["feature_dim"] = int(features.features.shape[1])
            extra["processes"] = procs.count
            prototypes.save(work)
    return stage.path
