"""The training runs of one evaluation: shared among the processes of a launch and kept as they finish.

Every training set an evaluation scores (a set, the real train split, a random baseline at one IPC) is a
`Task`; its runs, one per seed, are the jobs. The jobs left to do are dealt round-robin over the processes
(`rsdistill.core.distributed`). A run's seed alone fixes its initial weights, batch order and augmentation (and
a random baseline's draw), so a run's accuracy is the same whichever process trains it and however many there
are. Each finished run is written at once into the evaluation's partial folder (``runs/<task>/seed-<k>.json``,
with ``seed-<k>.pt``, the weights, for a task's first run when a metric attacks that model), so an interrupted
evaluation resumes from the runs it had finished.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsdistill.core.atomic import replace_atomically, write_text_atomic
from rsdistill.core.distributed import Processes
from rsdistill.evaluate.scoring import Draw, Run, Score, Scorer

RUNS_FOLDER = "runs"
Job = tuple[int, int]  # (task index, seed index)


@dataclass(frozen=True)
class Task:
    """One training set to score over the evaluation's seeds.

    Attributes:
        key: Its folder name under ``runs/`` (unique within the evaluation, the same when it resumes).
        draw: The training set of each seed.
        desc: Progress-bar text.
        keep_first: Keep the first run's model (for the membership-inference attack).
    """

    key: str
    draw: Draw
    desc: str
    keep_first: bool = False


def task_key(index: int, name: str) -> str:
    """A file-name-safe, unique key for the `index`-th task, named `name`."""
    return f"{index:03d}-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


def _files(folder: Path, task: Task, seed: int) -> tuple[Path, Path]:
    base = folder / RUNS_FOLDER / task.key / f"seed-{seed}"
    return base.with_suffix(".json"), base.with_suffix(".pt")


def finished_runs(folder: Path | None, tasks: Sequence[Task], seeds: Sequence[int]) -> dict[Job, dict[str, Any]]:
    """The records of the runs an earlier, interrupted evaluation finished in `folder`."""
    found: dict[Job, dict[str, Any]] = {}
    if folder is None:
        return found
    for t, task in enumerate(tasks):
        for s, seed in enumerate(seeds):
            record, weights = _files(folder, task, seed)
            if record.is_file() and (weights.is_file() or not (task.keep_first and s == 0)):
                found[(t, s)] = json.loads(record.read_text())
    return found


def _keep(folder: Path, task: Task, run: Run, weights: dict[str, torch.Tensor] | None) -> None:
    record, weights_path = _files(folder, task, run.seed)
    if weights is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(weights_path, lambda tmp: torch.save(weights, tmp), "Free space there or choose another "
                           "--out.", what="a finished training run's weights ")
    write_text_atomic(record, json.dumps(run.record()))


def _model(scorer: Scorer, weights: dict[str, torch.Tensor], seed: int) -> nn.Module:
    model = scorer.trainer.new_model(scorer.num_classes, seed)
    model.load_state_dict({name: value.to(scorer.device) for name, value in weights.items()})
    return model.eval()


def score_tasks(
    scorer: Scorer, tasks: Sequence[Task], seeds: Sequence[int], procs: Processes, folder: Path | None = None
) -> list[Score]:
    """Scores every task over `seeds`, the runs shared among `procs` and kept in `folder` as they finish.

    Args:
        scorer: The protocol, test split and device.
        tasks: The training sets.
        seeds: One run per seed for every task.
        procs: The processes of this command (every one of them calls this).
        folder: The evaluation's partial folder (None: nothing kept, nothing resumed).

    Returns:
        On the main process, one score per task (its `first_model` set for a task that keeps it); on the
        others, an empty list.
    """
    finished = procs.share(finished_runs(folder, tasks, seeds) if procs.is_main else None)
    todo = [(t, s) for t in range(len(tasks)) for s in range(len(seeds)) if (t, s) not in finished]
    done: dict[Job, tuple[dict[str, Any], dict[str, torch.Tensor] | None]] = {}
    models: dict[int, nn.Module] = {}
    for t, s in procs.shard(todo):
        task, seed = tasks[t], seeds[s]
        run = scorer.run(task.draw, seed, f"{task.desc} run {s + 1}/{len(seeds)}")
        weights = None
        if task.keep_first and s == 0 and run.model is not None:
            models[t] = run.model
            weights = {name: value.detach().cpu() for name, value in run.model.state_dict().items()}
        if folder is not None:
            _keep(folder, task, run, weights)
        done[(t, s)] = (run.record(), weights if procs.distributed else None)
    for part in procs.gather(done):
        for job, entry in part.items():
            done.setdefault(job, entry)
    if not procs.is_main:
        return []
    scores = []
    for t, task in enumerate(tasks):
        runs = [Run(**(done[(t, s)][0] if (t, s) in done else finished[(t, s)])) for s in range(len(seeds))]
        score = scorer.summary(runs, seeds, sum(run.train_s + run.test_s + run.compile_s for run in runs))
        if task.keep_first and seeds:
            model = models.get(t)
            score.first_model = model if model is not None else _first_model(scorer, task, seeds[0],
                                                                             done.get((t, 0)), folder)
        scores.append(score)
    return scores


def _first_model(
    scorer: Scorer, task: Task, seed: int, entry: tuple[dict[str, Any], Any] | None, folder: Path | None
) -> nn.Module:
    """A task's first model trained by another process (its weights gathered) or by an earlier run (on disk)."""
    if entry is not None and entry[1] is not None:
        return _model(scorer, entry[1], seed)
    assert folder is not None  # a run finished earlier was read from the folder
    weights = torch.load(_files(folder, task, seed)[1], map_location="cpu", weights_only=True)
    return _model(scorer, weights, seed)
