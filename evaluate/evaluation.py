"""One evaluation: score sets and baselines by one protocol, measure the requested metrics, write a report.

report.json holds the dataset and its fingerprint, the protocol (dict and label), the options, the `full`
reference (accuracy, passes, steps, protocol; None when not asked for), the real train split's bytes on disk,
and one row per scored training set: ``kind`` (``set``, ``baseline`` or ``real``), ``name``, ``method``,
``ipc``, ``accuracy`` ({mean, std, runs, seeds}, percent, population std), ``ratio_to_full``, ``n_train``,
``timing`` and, for sets, ``per_class``, ``uneven``, ``storage_bytes``, ``storage_ratio`` and ``metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsdistill.core.artifacts import PeakMemory
from rsdistill.core.config import EvalConfig, to_dict
from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import resolve_device
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import FolderSource, SceneDataset
from rsdistill.evaluate import report as reporting
from rsdistill.evaluate.context import Evaluation, load_set
from rsdistill.evaluate.measures import load_metric_models, measure_set
from rsdistill.evaluate.protocol import Protocol, steps_for_passes
from rsdistill.evaluate.scoring import Scorer, fixed, random_draw
from rsdistill.evaluate.teacher import full_passes, full_reference

TRAIN_ON = ("set", "real+set", "real")
METRICS = ("fid", "kid", "prdc", "privacy", "mia", "clip")
BUILTIN_BASELINES = ("random", "full")
CORESET_METHODS = ("herding", "kcenter", "kmeans")


def real_train_bytes(dataset: SceneDataset) -> int | None:
    """Bytes of the real train split's image files on disk (None when the source is not a folder)."""
    if not isinstance(dataset.source, FolderSource):
        return None
    return sum((dataset.source.root / sample.key).stat().st_size for sample in dataset.train)


def protocol_from_config(config: EvalConfig, dataset: SceneDataset, resolution: int) -> Protocol:
    """The scoring protocol of `config` at `resolution` (the run's ``data.resolution``); with real data in
    training, `steps` defaults to the full schedule."""
    if config.train_on not in TRAIN_ON:
        raise RSDistillError(f"evaluation.train_on must be one of {', '.join(TRAIN_ON)}, not {config.train_on!r}.")
    steps = config.steps
    if steps is None:
        steps = 500
        if config.train_on != "set":
            steps = steps_for_passes(len(dataset.train), config.full_passes or full_passes(dataset.name))
    return Protocol(model=config.model, resolution=resolution, steps=steps, labels=config.labels,
                    temperature=config.temperature, precision=config.precision, augmentation=config.augmentation)


def check_options(config: EvalConfig, set_dirs: Sequence[str | Path]) -> None:
    if config.runs < 1:
        raise RSDistillError("evaluation.runs (--runs) must be at least 1.")
    unknown = sorted(set(config.metrics) - set(METRICS))
    if unknown:
        raise RSDistillError(f"Unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}.")
    coresets = sorted(set(config.baselines) & set(CORESET_METHODS))
    if coresets:
        raise RSDistillError(
            f"Baseline(s) {', '.join(coresets)} are sets: write them with `rsdistill coreset --method NAME "
            "--ipc K --out DIR` and pass their folders as SET arguments (they are scored and plotted by method)."
        )
    unknown = sorted(set(config.baselines) - set(BUILTIN_BASELINES))
    if unknown:
        raise RSDistillError(f"Unknown baseline(s) {', '.join(unknown)}; built in: {', '.join(BUILTIN_BASELINES)}.")
    if config.train_on == "real" and (set_dirs or config.metrics):
        raise RSDistillError("--train-on real trains on the real train split alone: give no SET and no --metrics.")
    if "clip" in config.metrics and not config.clip_model:
        raise RSDistillError("The clip metric needs --clip-model (an open_clip name, hf-hub:ID or local-dir:PATH).")


def evaluate_sets(
    context: RunContext,
    config: EvalConfig,
    out_dir: str | Path | None,
    set_dirs: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Scores every set (and the baselines) by one protocol, measures metrics, writes the report.

    Args:
        context: The dataset the sets were made from, the resolution they are scored at, the image cache and
            the training device.
        config: What to run (docs/benchmark.md defaults).
        out_dir: Where report.json, report.md and the pictures go (nothing written when None).
        set_dirs: Sets in the common format (ImageFolder + metadata.jsonl).

    Returns:
        The report dict (as written to report.json).
    """
    dataset, cache_dir = context.dataset, context.cache_dir
    check_options(config, set_dirs)
    metric_models = load_metric_models(config, resolve_device(context.device))  # before anything is trained
    if not set_dirs and not config.ipc and config.train_on == "set" and "full" not in config.baselines:
        raise RSDistillError(
            "Nothing to evaluate: give SET folders, --ipc for the random baseline, or --baselines full."
        )
    start = time.perf_counter()
    with PeakMemory() as memory:
        protocol = protocol_from_config(config, dataset, context.resolution)
        sets = [load_set(path, dataset, protocol.resolution) for path in set_dirs]
        scorer = Scorer.for_dataset(dataset, protocol, cache_dir, device=context.device, compile=config.compile)
        run = Evaluation(dataset, config, scorer, dataset.images("train", protocol.resolution, cache_dir=cache_dir))
        run.extras.update(metric_models)
        if config.labels == "soft" or "privacy" in config.metrics:
            teacher = Protocol(resolution=protocol.resolution, precision=scorer.protocol.precision)
            benchmark = scorer.with_protocol(teacher)
            run.reference = full_reference(dataset, benchmark, config.full_passes)
            scorer.teacher = run.reference.model if config.labels == "soft" else None
        if "full" in config.baselines:
            run.full = full_reference(dataset, scorer, config.full_passes)
        keep = "mia" in config.metrics
        total_bytes = real_train_bytes(dataset)
        for entry in sets:
            score = run.score(run.training_draw(entry.images, entry.labels), entry.name, keep)
            row = {"name": entry.name, "kind": "set", "path": str(entry.path), "method": entry.method,
                   "ipc": entry.ipc, "per_class": entry.per_class, "uneven": entry.uneven,
                   "n_images": len(entry.labels), "storage_bytes": entry.storage_bytes,
                   "storage_ratio": entry.storage_bytes / total_bytes if total_bytes else None,
                   **run.accuracy_row(score)}
            run.models[entry.name] = score.first_model
            run.rows.append(row)
        if config.train_on == "real":
            score = run.score(fixed(np.asarray(run.train.images), run.train.labels), "real", False)
            run.rows.append({"name": "real", "kind": "real", "method": "real",
                             "ipc": round(len(run.train) / len(dataset.classes)), **run.accuracy_row(score)})
        if "random" in config.baselines and config.train_on == "set":
            ipcs = sorted({e.ipc for e in sets if not e.uneven} | set(config.ipc))
            for ipc in ipcs:
                score = run.score(random_draw(run.train, ipc), f"random IPC {ipc}", keep)
                run.models[f"random-{ipc}"] = score.first_model
                run.rows.append({"name": f"random-ipc{ipc}", "kind": "baseline", "method": "random", "ipc": ipc,
                                 **run.accuracy_row(score)})
        for entry, row in zip(sets, run.rows, strict=False):
            row["metrics"] = measure_set(run, entry)
        report = {
            "dataset": dataset.name,
            "dataset_fingerprint": dataset.fingerprint,
            "classes": dataset.classes,
            "protocol": scorer.protocol.to_dict(),
            "protocol_label": scorer.protocol.label,
            "options": {**to_dict(config), "device": str(scorer.device), "seeds": run.seeds},
            "full": None if run.full is None else {**run.full.record, "folder": str(run.full.folder)},
            "real_train_bytes": total_bytes,
            "rows": run.rows,
        }
    report["wall_s"] = time.perf_counter() - start
    report["peak_memory_mb"] = memory.peak_mb
    if out_dir is not None:
        reporting.write_report(report, Path(out_dir), sets, run)
    return report
