"""The `full` reference: one classifier trained on the whole real train split, cached.

It is the upper reference of every report (accuracy ratio distilled / full), the soft-label teacher, and,
exported as TorchScript, the feature extractor of the benchmark's herding and k-center baselines
(CONTRACTS.md: ``model.pt`` maps float32 (N, 3, H, W) images in [0, 1] to penultimate features (N, D), with
the normalisation baked in; ``config.json`` holds resolution, dim and the dataset fingerprint).

docs/benchmark.md trains it for 30 passes over the train split at batch 64 (10 for eurosat). It is trained
once per (dataset fingerprint, protocol, passes, seed) and kept under ``$RSDISTILL_CACHE/evaluate``.
It never sees a test image: the test split only scores it.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rsdistill.core.artifacts import Stage
from rsdistill.core.errors import RSDistillError
from rsdistill.data.dataset import SceneDataset, default_cache_root
from rsdistill.evaluate.networks import build_network, penultimate
from rsdistill.evaluate.protocol import Protocol, steps_for_passes
from rsdistill.evaluate.scoring import Scorer, fixed

FULL_PASSES = {"eurosat": 10}
DEFAULT_PASSES = 30
CLASSIFIER = "classifier.pt"
RESULT = "result.json"
EXTRACTOR = "extractor"


def full_passes(dataset_name: str) -> int:
    """docs/benchmark.md: 30 passes over the train split, 10 for eurosat."""
    return FULL_PASSES.get(dataset_name, DEFAULT_PASSES)


@dataclass
class FullReference:
    """A classifier trained on the whole real train split.

    Attributes:
        accuracy: Top-1 on the real test split, percent (one run).
        model: The trained classifier, in eval mode, on the scorer's device.
        folder: The cache folder holding it.
        record: What `result.json` says (protocol, passes, steps, wall time...).
    """

    accuracy: float
    model: nn.Module
    folder: Path
    record: dict[str, Any]

    @property
    def extractor(self) -> Path:
        """The TorchScript feature-extractor folder (CONTRACTS.md)."""
        return self.folder / EXTRACTOR


class FeatureExtractor(nn.Module):
    """[0, 1] images -> penultimate features of `model`, normalising with the train split's statistics."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.reshape(1, 3, 1, 1).float().clone())
        self.register_buffer("std", std.reshape(1, 3, 1, 1).float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return penultimate(self.model, (x - self.mean) / self.std).flatten(1)


def export_feature_extractor(
    model: nn.Module,
    mean: torch.Tensor,
    std: torch.Tensor,
    folder: str | Path,
    resolution: int,
    dataset_fingerprint: str,
) -> Path:
    """Writes `model.pt` (TorchScript, CPU, float32) and `config.json` into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = FeatureExtractor(copy.deepcopy(model).cpu().float(), mean.cpu(), std.cpu()).eval()
    example = torch.rand(2, 3, resolution, resolution)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; CONTRACTS.md asks for it
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # a batch-size check traced as a constant
        traced = torch.jit.trace(wrapper, example)
        dim = int(traced(example).shape[1])
        torch.jit.save(traced, str(folder / "model.pt"))
    config = {"resolution": resolution, "dim": dim, "dataset_fingerprint": dataset_fingerprint,
              "input": "float32 (N, 3, H, W) in [0, 1]", "normalisation": "baked in"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def load_feature_extractor(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The exported extractor and its config."""
    folder = Path(folder)
    if not (folder / "model.pt").is_file() or not (folder / "config.json").is_file():
        raise RSDistillError(f"{folder} is not an exported feature extractor (needs model.pt and config.json).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(folder / "model.pt"), map_location=device)
    return module.eval(), json.loads((folder / "config.json").read_text())


@torch.no_grad()
def extract_features(
    extractor: nn.Module, images: np.ndarray, batch_size: int = 64, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Features of uint8 (N, H, W, 3) images through an exported extractor, float32 (N, D)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        out.append(extractor(chunk.permute(0, 3, 1, 2).float() / 255.0).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def full_stage(dataset: SceneDataset, protocol: Protocol, passes: int, seed: int, root: Path) -> Stage:
    config = {"protocol": protocol.to_dict(), "passes": passes, "seed": seed}
    stage = Stage(root, "full", config, {"dataset": dataset.fingerprint})
    slug = dataset.name.replace(":", "_").replace("/", "_").strip("_")[-40:]
    return Stage(root, f"full-{slug}-{stage.fingerprint}", config, {"dataset": dataset.fingerprint})


def full_reference(
    dataset: SceneDataset,
    scorer: Scorer,
    passes: int | None = None,
    seed: int = 0,
    cache_root: str | Path | None = None,
) -> FullReference:
    """Trains (once) and returns the full-data reference for `scorer`'s protocol.

    Args:
        dataset: The dataset whose train split is used (whole) and whose test split scores it.
        scorer: Supplies the protocol (model, resolution, optimiser, augmentation, precision), the device and
            the test split; the reference trains `passes` passes over the train split with hard labels.
        passes: Passes over the train split (default: docs/benchmark.md's, 10 for eurosat, else 30).
        seed: Training seed.
        cache_root: Where references are kept (default ``$RSDISTILL_CACHE/evaluate``).
    """
    root = Path(cache_root) if cache_root is not None else default_cache_root() / "evaluate"
    passes = passes or full_passes(dataset.name)
    resolution = scorer.protocol.resolution
    n_train = len(dataset.train)
    p = scorer.protocol
    protocol = Protocol(model=p.model, resolution=resolution, steps=steps_for_passes(n_train, passes, p.batch_size),
                        batch_size=p.batch_size, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
                        augment=p.augment, precision=p.precision)
    stage = full_stage(dataset, protocol, passes, seed, root)
    if not stage.done:
        train = dataset.images("train", resolution)
        full_scorer = scorer.with_protocol(protocol)
        extra: dict[str, Any] = {}
        with stage.build(extra) as work:
            score = full_scorer.score(fixed(np.asarray(train.images), train.labels), seeds=(seed,), desc="full",
                                      keep_first=True)
            model = score.first_model
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, work / CLASSIFIER)
            record = {"accuracy": score.mean, "passes": passes, "steps": protocol.steps, "n_train": len(train),
                      "protocol": protocol.to_dict(), "protocol_label": protocol.label, "seed": seed,
                      "train_s": score.train_s[0], "test_s": score.test_s[0], "compile_s": score.compile_s,
                      "dataset_fingerprint": dataset.fingerprint}
            (work / RESULT).write_text(json.dumps(record, indent=2))
            export_feature_extractor(model, scorer.normalizer.mean, scorer.normalizer.std, work / EXTRACTOR,
                                     resolution, dataset.fingerprint)
            extra["accuracy"] = score.mean
    record = json.loads((stage.path / RESULT).read_text())
    model = build_network(protocol.model, len(dataset.classes), resolution)
    model.load_state_dict(torch.load(stage.path / CLASSIFIER, map_location="cpu", weights_only=True))
    model = model.to(scorer.device).eval()
    if scorer.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return FullReference(record["accuracy"], model, stage.path, record)
