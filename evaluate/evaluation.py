"""One evaluation: score sets and baselines by one protocol, measure the requested metrics, write a report.

report.json holds the dataset and its fingerprint, the protocol (dict and label), the options, the `full`
reference (accuracy, passes, steps, protocol; None when not asked for), the real train split's bytes on disk,
and one row per scored training set: ``kind`` (``set``, ``baseline`` or ``real``), ``name``, ``method``,
``ipc``, ``accuracy`` ({mean, std, runs, seeds}, percent, population std), ``ratio_to_full``, ``n_train``,
``timing`` and, for sets, ``per_class``, ``uneven``, ``storage_bytes``, ``storage_ratio`` and ``metrics``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsdistill.core.artifacts import PeakMemory, Stage
from rsdistill.core.config import EvalConfig, to_dict
from rsdistill.core.distributed import Processes, alone, build_stage, processes
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import FolderSource, SceneDataset
from rsdistill.data.imageset import set_digest
from rsdistill.evaluate import report as reporting
from rsdistill.evaluate.context import EvalSet, Evaluation, load_set
from rsdistill.evaluate.measures import load_metric_models, measure_set, share_realism_features
from rsdistill.evaluate.protocol import Protocol, steps_for_passes
from rsdistill.evaluate.runs import RUNS_FOLDER, Task, score_tasks, task_key
from rsdistill.evaluate.scoring import Scorer, fixed, random_draw
from rsdistill.evaluate.teacher import full_passes, full_reference

TRAIN_ON = ("set", "real+set", "real")
METRICS = ("fid", "kid", "prdc", "privacy", "mia", "clip")
BUILTIN_BASELINES = ("random", "full")
REPORT_FILE = "report.json"
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


def evaluation_stage(
    context: RunContext,
    config: EvalConfig,
    out_dir: str | Path,
    set_dirs: Sequence[str | Path],
    protocol: Protocol,
    inputs: dict[str, str] | None = None,
) -> Stage:
    """The report folder as a stage: finished when a report of the same config, sets (their folders and
    contents), dataset and resolved `protocol` (and `inputs`, what a caller adds) is in it."""
    out = Path(out_dir)
    sets = {f"set-{i}": f"{Path(path).resolve()}#{set_digest(path)}" for i, path in enumerate(set_dirs)}
    stage_inputs = {"dataset": context.dataset.fingerprint, "protocol": json.dumps(protocol.to_dict(), sort_keys=True),
                    **sets, **(inputs or {})}
    return Stage(out.parent, out.name, {**to_dict(config), "resolution": context.resolution}, stage_inputs,
                 overwrite=context.overwrite)


def read_report(folder: Path) -> dict[str, Any]:
    """The report.json of a finished report folder."""
    return json.loads((folder / REPORT_FILE).read_text())


def evaluate_sets(
    context: RunContext,
    config: EvalConfig,
    out_dir: str | Path | None,
    set_dirs: Sequence[str | Path] = (),
    inputs: dict[str, str] | None = None,
    finish: Callable[[dict[str, Any], Path], None] | None = None,
) -> dict[str, Any]:
    """Scores every set (and the baselines) by one protocol, measures metrics, writes the report.

    The report folder is a stage (`rsdistill.core.artifacts.Stage`): one that holds the report of the same
    config, sets (their folders and contents), dataset and protocol is kept as it is and its report returned,
    and an interrupted evaluation resumes from the training runs it finished (`rsdistill.evaluate.runs`).
    Under ``accelerate launch`` or ``torchrun`` the runs are shared among the processes (the same accuracies
    as one process: a run's seed fixes it); the main process trains what is trained once (the full-data
    reference), measures the metrics and writes the report.

    Args:
        context: The dataset the sets were made from, the resolution they are scored at, the image cache and
            the training device.
        config: What to run (docs/benchmark.md defaults).
        out_dir: The report folder: report.json, report.md and the pictures (nothing written when None).
        set_dirs: Sets in the common format (ImageFolder + metadata.jsonl).
        inputs: What else identifies the report folder's content (a caller's additions, see `finish`).
        finish: Called on the main process with the report and the partial report folder before the stage
            is finished (e.g. the privacy verdict of ``rsdistill run``).

    Returns:
        The report dict (as written to report.json), on every process.
    """
    dataset = context.dataset
    check_options(config, set_dirs)
    if not set_dirs and not config.ipc and config.train_on == "set" and "full" not in config.baselines:
        raise RSDistillError(
            "Nothing to evaluate: give SET folders, --ipc for the random baseline, or --baselines full."
        )
    procs = processes(context.device)
    protocol = protocol_from_config(config, dataset, context.resolution)
    if out_dir is None:
        return score_sets(context, config, protocol, set_dirs, procs)
    stage = evaluation_stage(context, config, out_dir, set_dirs, protocol.resolved(procs.device), inputs)
    if stage.done:
        print(f"{stage.path} holds the report of these settings and sets; kept as it is.")
        return read_report(stage.path)
    extra: dict[str, Any] = {"processes": procs.count}
    with build_stage(stage, procs, extra) as work:
        report = score_sets(context, config, protocol, set_dirs, procs, work, finish)
        if procs.is_main:
            shutil.rmtree(work / RUNS_FOLDER, ignore_errors=True)
            extra["rows"] = len(report["rows"])
    return report


def score_sets(
    context: RunContext,
    config: EvalConfig,
    protocol: Protocol,
    set_dirs: Sequence[str | Path],
    procs: Processes,
    work: Path | None = None,
    finish: Callable[[dict[str, Any], Path], None] | None = None,
) -> dict[str, Any]:
    """The evaluation itself (see `evaluate_sets`), on every process of `procs`; the report goes into `work`."""
    dataset, cache_dir = context.dataset, context.cache_dir
    metric_models = load_metric_models(config, procs.device) if procs.is_main else {}  # before anything is trained
    start = time.perf_counter()
    with PeakMemory() as memory:
        sets = [load_set(path, dataset, protocol.resolution) for path in set_dirs]
        scorer = Scorer.for_dataset(dataset, protocol, cache_dir, device=procs.device, compile=config.compile)
        run = Evaluation(dataset, config, scorer, dataset.images("train", protocol.resolution, cache_dir=cache_dir))
        run.extras.update(metric_models)
        with procs.main_first():  # trained once, by the main process; the others read it from the cache
            if config.labels == "soft" or "privacy" in config.metrics:
                teacher = Protocol(resolution=protocol.resolution, precision=scorer.protocol.precision)
                run.reference = full_reference(dataset, scorer.with_protocol(teacher), config.full_passes)
                scorer.teacher = run.reference.model if config.labels == "soft" else None
            if "full" in config.baselines:
                run.full = full_reference(dataset, scorer, config.full_passes)
        tasks, rows = training_sets(run, sets)
        scores = score_tasks(scorer, tasks, run.seeds, procs, work)
        share_realism_features(run, sets, procs)  # fid, kid, prdc: every process encodes its share of the images
        if not procs.is_main:
            return procs.share(None)
        for task, row, score in zip(tasks, rows, scores, strict=True):
            row.update(run.accuracy_row(score))
            if score.first_model is not None:
                run.models[task.desc] = score.first_model
            run.rows.append(row)
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
            "real_train_bytes": real_train_bytes(dataset),
            "rows": run.rows,
        }
    report["wall_s"] = time.perf_counter() - start
    report["peak_memory_mb"] = memory.peak_mb
    if work is not None:
        reporting.write_report(report, work, sets, run)
        if finish is not None:
            with alone():
                finish(report, work)
    return procs.share(report)


def training_sets(run: Evaluation, sets: list[EvalSet]) -> tuple[list[Task], list[dict[str, Any]]]:
    """What is trained on, in report order (the sets, the real train split, the random baselines), with the
    start of each one's report row. A task's `desc` is the key of its first model in `Evaluation.models`."""
    config, dataset = run.config, run.dataset
    keep = "mia" in config.metrics
    total_bytes = real_train_bytes(dataset)
    tasks: list[Task] = []
    rows: list[dict[str, Any]] = []
    for entry in sets:
        tasks.append(Task(task_key(len(tasks), entry.name), run.training_draw(entry.images, entry.labels),
                          entry.name, keep))
        rows.append({"name": entry.name, "kind": "set", "path": str(entry.path), "method": entry.method,
                     "ipc": entry.ipc, "per_class": entry.per_class, "uneven": entry.uneven,
                     "n_images": len(entry.labels), "storage_bytes": entry.storage_bytes,
                     "storage_ratio": entry.storage_bytes / total_bytes if total_bytes else None})
    if config.train_on == "real":
        tasks.append(Task(task_key(len(tasks), "real"), fixed(np.asarray(run.train.images), run.train.labels),
                          "real"))
        rows.append({"name": "real", "kind": "real", "method": "real",
                     "ipc": round(len(run.train) / len(dataset.classes))})
    if "random" in config.baselines and config.train_on == "set":
        for ipc in sorted({e.ipc for e in sets if not e.uneven} | set(config.ipc)):
            tasks.append(Task(task_key(len(tasks), f"random-{ipc}"), random_draw(run.train, ipc), f"random-{ipc}",
                              keep))
            rows.append({"name": f"random-ipc{ipc}", "kind": "baseline", "method": "random", "ipc": ipc})
    return tasks, rows
