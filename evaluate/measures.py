"""The metrics an evaluation measures on each set (`--metrics fid,kid,prdc,privacy,mia,clip`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rsdistill.core.config import EvalConfig
from rsdistill.core.distributed import Processes
from rsdistill.core.errors import RSDistillError
from rsdistill.evaluate.clipscore import clip_metrics, load_clip
from rsdistill.evaluate.metrics import inception_features, inception_network, realism_metrics, split_features
from rsdistill.evaluate.privacy import (
    balanced_sample,
    loss_threshold_auc,
    near_copy_summary,
    nearest_real,
    per_sample_loss,
)
from rsdistill.evaluate.scoring import random_subset_indices
from rsdistill.evaluate.teacher import extract_features, load_feature_extractor

if TYPE_CHECKING:
    from rsdistill.evaluate.context import EvalSet, Evaluation

REALISM = frozenset({"fid", "kid", "prdc"})  # the metrics measured in the Inception space
INCEPTION = "inception"  # the key of `share_realism_features`'s features in `Evaluation.extras`


def load_metric_models(config: EvalConfig, device: str | torch.device) -> dict[str, Any]:
    """Loads the models the requested metrics need before anything is trained, so that missing weights stop an
    evaluation at once: clip's open_clip model (returned under ``"clip"``, for `Evaluation.extras`) and the
    Inception network of fid, kid and prdc.

    Raises:
        RSDistillError: Naming the model and the setting that points at it.
    """
    which = set(config.metrics)
    extras: dict[str, Any] = {}
    if "clip" in which:
        extras["clip"] = load_clip(config.clip_model, config.clip_pretrained, device)
    if which & REALISM:
        inception_network(device)
    return extras


def measure_set(run: Evaluation, entry: EvalSet) -> dict[str, Any]:
    """The requested metrics of one set."""
    which = set(run.config.metrics)
    out: dict[str, Any] = {}
    if which & REALISM:
        out.update(realism(run, entry, which))
    if "privacy" in which:
        out["privacy"] = privacy(run, entry)
    if "mia" in which:
        out["mia"] = membership_inference(run, entry)
    if "clip" in which:
        if "clip" not in run.extras:
            run.extras["clip"] = load_clip(run.config.clip_model, run.config.clip_pretrained, run.scorer.device)
        out["clip"] = clip_metrics(run.extras["clip"], entry.images, entry.labels, run.dataset.classes, entry.texts)
    return out


def share_realism_features(run: Evaluation, sets: Sequence[EvalSet], procs: Processes) -> None:
    """Inception features of the real test split and of every set for fid, kid and prdc, the images of each
    shared among `procs` (every process calls this, before the main process measures); kept in `run.extras`
    for `realism`, the same features as one process computes there."""
    if not set(run.config.metrics) & REALISM:
        return
    device = run.scorer.device
    real = split_features(run.dataset, "test", run.scorer.protocol.resolution, device=device, procs=procs)
    fake = {
        entry.path: inception_features(
            entry.images, device=device, desc=f"inception features ({entry.name})", procs=procs
        )
        for entry in sets
    }
    run.extras[INCEPTION] = {"real": real, "sets": fake}


def realism(run: Evaluation, entry: EvalSet, which: set[str]) -> dict[str, Any]:
    """fid, kid and prdc of one set, from the features `share_realism_features` kept, or computed here."""
    device = run.scorer.device
    shared = run.extras.get(INCEPTION)
    if shared is None:
        shared = {
            "real": split_features(run.dataset, "test", run.scorer.protocol.resolution, device=device),
            "sets": {},
        }
    fake = shared["sets"].get(entry.path)
    if fake is None:
        fake = inception_features(entry.images, device=device, desc=f"inception features ({entry.name})")
    test_labels = run.scorer.test_labels.cpu().numpy()
    return realism_metrics(shared["real"], test_labels, fake, entry.labels, run.dataset.classes, which)


def train_features(run: Evaluation) -> np.ndarray:
    """Full-model features of the real train split, kept beside the reference."""
    path = run.reference.folder / "train-features.npy"
    if path.is_file():
        return np.load(path)
    extractor, _ = load_feature_extractor(run.reference.extractor, run.scorer.device)
    features = extract_features(extractor, run.train.images, device=run.scorer.device)
    np.save(path.with_name(".train-features.tmp.npy"), features)
    path.with_name(".train-features.tmp.npy").replace(path)
    return features


def privacy(run: Evaluation, entry: EvalSet) -> dict[str, Any]:
    extractor, _ = load_feature_extractor(run.reference.extractor, run.scorer.device)
    nearest = nearest_real(
        entry.images,
        extract_features(extractor, entry.images, device=run.scorer.device),
        run.train.images,
        train_features(run),
    )
    run.extras.setdefault("nearest", {})[entry.name] = nearest
    summary = near_copy_summary(nearest, run.train.keys, run.config.near_copy_ssim)
    for item, record in zip(summary["nearest"], entry.records, strict=True):
        item["file_name"] = record["file_name"]
    return summary


def membership_inference(run: Evaluation, entry: EvalSet) -> dict[str, Any]:
    """Loss-threshold attack AUCs on the set's first model and on a same-size random real coreset's."""
    if run.config.train_on != "set":
        raise RSDistillError("The mia metric attacks a classifier trained on the set alone: use --train-on set.")
    trainer, train = run.scorer.trainer, run.train
    test_labels = run.scorer.test_labels.cpu().numpy()
    test_images = run.scorer.test_images.permute(0, 2, 3, 1).cpu().numpy()
    members = balanced_sample(train.labels, run.config.mia_samples, seed=0)
    outsiders = balanced_sample(test_labels, run.config.mia_samples, seed=1)

    def attack(model: Any, index: np.ndarray) -> float:
        inside = per_sample_loss(trainer, model, np.asarray(train.images[index]), train.labels[index])
        outside = per_sample_loss(trainer, model, test_images[outsiders], test_labels[outsiders])
        return loss_threshold_auc(inside, outside)

    set_model = run.models[entry.name]
    result: dict[str, Any] = {
        "members": len(members),
        "non_members": len(outsiders),
        "set_model_auc_train_vs_test": attack(set_model, members),
    }
    position = {key: i for i, key in enumerate(train.keys)}
    sources = sorted({position[r["source_key"]] for r in entry.records if r.get("source_key") in position})
    if sources:
        result["set_model_auc_sources_vs_test"] = attack(set_model, np.asarray(sources))
        result["sources"] = len(sources)
    per_class = {label: count for label, count in enumerate(entry.per_class.values())}
    coreset = random_subset_indices(train.labels, per_class, seed=0)
    model = None if entry.uneven else run.models.get(f"random-{entry.ipc}")
    if model is None:
        model = run.scorer.train(np.asarray(train.images[coreset]), train.labels[coreset], seed=0, desc="mia coreset")
    result["coreset_model_auc_members_vs_test"] = attack(model, coreset)
    result["coreset_model_auc_train_vs_test"] = attack(model, members)
    return result
