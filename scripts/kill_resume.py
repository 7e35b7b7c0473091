"""Kill -9 during every stage of a tiny `rsdistill run`, run it again, and compare with an uninterrupted run.

Writes a tiny fake dataset (3 classes of 16-pixel images) under --work, runs ``python -m rsdistill run`` once
uninterrupted, then, for each kill point, starts the same run in a fresh folder, kills it with SIGKILL as soon as
the stage has saved some of its work (a checkpoint, a finished image, a finished training run), runs the same
command again to completion and compares the distilled sets (the bytes of every file of ``synthesis/set`` and
``refine/set``) and the report's scores (``report/report.json``, timings and paths left out) with the uninterrupted
run's. Every run has its own run, shared and cache folders (``RSDISTILL_CACHE``), so nothing is reused between runs.

What the re-run did is read from the re-run itself: the base stage's and fine-tuning's own ``resumed ... (step N)``
lines, the refinement's manifest (``iterations_this_run``), and for synthesis and evaluation whether the files
finished before the kill (``progress/*.json``, ``runs/*/seed-*.json``) were kept untouched while the re-run
worked. The table goes to stdout and to --out.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/kill_resume.py --work /tmp/kill_resume
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "scripts" / "results" / "kill_resume.md"
CLASSES = {"forest": (40, 120, 40), "lake": (30, 60, 160), "town": (150, 150, 150)}
IMAGES_PER_CLASS, TEST_PER_CLASS, SIZE = 10, 3, 16
IPC, RUNS, TASKS = 2, 2, 2  # tasks scored: the set and the random baseline
SETTINGS = [
    "--resolution",
    str(SIZE),
    "--ipc",
    str(IPC),
    "--device",
    "cpu",
    "generator.prompts=class-names",
    "generator.vae_steps=40",
    "generator.classifier_steps=40",
    "generator.checkpointing_steps=5",
    "--max_train_steps",
    "20",
    "generator.train_batch_size=4",
    "generator.progress=false",
    "--num_inference_steps",
    "4",
    "--candidates",
    "2",
    "synthesis.batch_size=2",
    "refine.iterations=100",
    "refine.checkpoint_every=10",
    "refine.width=8",
    "refine.compile=false",
    "--runs",
    str(RUNS),
    "--steps",
    "100",
    "evaluation.compile=false",
    "evaluation.baselines=random",
]
SET_FOLDERS = ("synthesis/set", "refine/set")
LEFT_OUT = {"path", "timing", "wall_s", "peak_memory_mb", "pictures"}
POLL_S = 0.02


@dataclass
class Layout:
    """The folders of one run: its run folder, shared folder and cache."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    def command(self, dataset: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "rsdistill",
            "run",
            "--dataset",
            f"imagefolder:{dataset}",
            "--out",
            str(self.run),
            "--shared-dir",
            str(self.shared),
            *SETTINGS,
        ]

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "RSDISTILL_CACHE": str(self.root / "cache"),
            "PYTHONPATH": str(REPO),
        }

    def start(self, dataset: Path, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                self.command(dataset), cwd=REPO, env=self.environment(), stdout=out, stderr=subprocess.STDOUT
            )

    def partial(self, pattern: str) -> list[Path]:
        """Files or folders under the run or shared folder matching `pattern` (a glob relative to `root`)."""
        return sorted(self.root.glob(pattern))


def write_dataset(root: Path) -> Path:
    """Writes `<root>/<Class>/<Class>_<i>.png` (a colour per class plus noise) and `test.txt`."""
    rng = np.random.default_rng(0)
    test = []
    for name, tint in CLASSES.items():
        for i in range(IMAGES_PER_CLASS):
            pixels = np.clip(np.asarray(tint, np.float32) + rng.normal(0, 25, (SIZE, SIZE, 3)), 0, 255)
            path = root / name / f"{name}_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            if i < TEST_PER_CLASS:
                test.append(f"{name}/{name}_{i:03d}.png")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    return root


def set_digest(run: Path) -> str:
    """One hash of every file's name and bytes in the run's sets."""
    digest = hashlib.sha256()
    for folder in SET_FOLDERS:
        for path in sorted((run / folder).rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(run)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def without_run_specifics(value: Any) -> Any:
    """`value` without timings, paths and pictures (which differ between runs whatever they compute)."""
    if isinstance(value, dict):
        return {key: without_run_specifics(item) for key, item in value.items() if key not in LEFT_OUT}
    if isinstance(value, list):
        return [without_run_specifics(item) for item in value]
    return value


def scores(run: Path) -> dict[str, Any]:
    """The report's rows and full-data score, as compared."""
    report = json.loads((run / "report" / "report.json").read_text())
    return without_run_specifics({"rows": report["rows"], "full": report["full"]})


def step_of(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


class Watch:
    """Records, while a re-run works, which of the files finished before the kill it rewrote."""

    def __init__(self, files: list[Path]) -> None:
        self.before = {path: path.stat().st_mtime_ns for path in files}
        self.rewritten: set[Path] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path, stamp in self.before.items():
                try:
                    if path.stat().st_mtime_ns != stamp:
                        self.rewritten.add(path)
                except FileNotFoundError:
                    continue
            time.sleep(POLL_S)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def kept(self) -> int:
        return len(self.before) - len(self.rewritten)


@dataclass(frozen=True)
class KillPoint:
    """Where a run is killed and how its re-run is described.

    Attributes:
        stage: The stage, as the table names it.
        saved: A glob (relative to the run's root) of what the stage saves as it goes; the run is killed once it
            matches and the stage is still unfinished.
        unfinished: A glob that matches while the stage has not completed (its partial folder).
        progress: Says how far the stage had come, from the matches of `saved` at the kill.
        rerun: Says what the re-run did, from its log, its root and the watch over the files saved before the kill.
    """

    stage: str
    saved: str
    unfinished: str
    progress: Callable[[list[Path]], str]
    rerun: Callable[[str, Path, Watch], str]
    watched: bool = field(default=False)


def resumed_line(pattern: str, what: str) -> Callable[[str, Path, Watch], str]:
    """Describes a re-run by its own `resumed ... (step N)` line."""

    def describe(log: str, root: Path, watch: Watch) -> str:
        found = re.findall(pattern, log)
        return f"resumed {what} from step {found[-1]}" if found else f"redid {what} from step 0"

    return describe


def kept_files(what: str, total: int) -> Callable[[str, Path, Watch], str]:
    """Describes a re-run by whether it kept the files finished before the kill (of `total` in all)."""

    def describe(log: str, root: Path, watch: Watch) -> str:
        finished, kept = len(watch.before), watch.kept()
        if kept < finished:
            return f"rewrote {finished - kept} of the {finished} {what} finished before the kill"
        return f"kept the {finished} {what} finished before the kill untouched; made the other {total - finished}"

    return describe


def refine_rerun(log: str, root: Path, watch: Watch) -> str:
    manifest = json.loads((root / "run" / "refine" / "manifest.json").read_text())
    done = manifest["iterations"] - manifest["iterations_this_run"]
    return f"resumed from iteration {done} (ran {manifest['iterations_this_run']} of {manifest['iterations']})"


KILL_POINTS = [
    KillPoint(
        "base (VAE)",
        "shared/*/.base-*.partial/checkpoints/vae/checkpoint-*/rsdistill_state.json",
        "shared/*/.base-*.partial",
        lambda found: f"VAE training, after its checkpoint of step {step_of(found[-1].parent)}",
        resumed_line(r"resumed the VAE training from \S+ \(step (\d+)\)", "the VAE training"),
    ),
    KillPoint(
        "base (latent classifier)",
        "shared/*/.base-*.partial/checkpoints/latent_classifier/checkpoint-*/rsdistill_state.json",
        "shared/*/.base-*.partial",
        lambda found: f"latent classifier training, after its checkpoint of step {step_of(found[-1].parent)}",
        resumed_line(
            r"resumed the latent classifier's training from \S+ \(step (\d+)\)", "the latent classifier's training"
        ),
    ),
    KillPoint(
        "generator",
        "shared/*/.generator-*.partial/checkpoint-*/rsdistill_state.json",
        "shared/*/.generator-*.partial",
        lambda found: f"fine-tuning, after its checkpoint of step {step_of(found[-1].parent)}",
        resumed_line(r"resumed from \S+ \(step (\d+)\)", "fine-tuning"),
    ),
    KillPoint(
        "synthesis",
        "run/.synthesis.partial/progress/*.json",
        "run/.synthesis.partial",
        lambda found: f"synthesis, {len(found)} of {IPC * len(CLASSES)} images finished",
        kept_files("images", IPC * len(CLASSES)),
        watched=True,
    ),
    KillPoint(
        "refinement",
        "run/.refine.partial/refine_state.pt",
        "run/.refine.partial",
        lambda found: "refinement, after its first checkpoint",
        refine_rerun,
    ),
    KillPoint(
        "evaluation",
        "run/.report.partial/runs/*/seed-*.json",
        "run/.report.partial",
        lambda found: f"evaluation, {len(found)} of {TASKS * RUNS} training runs finished",
        kept_files("training runs", TASKS * RUNS),
        watched=True,
    ),
]


def run_to_end(layout: Layout, dataset: Path, log: Path) -> float:
    """Runs the command to completion; returns its wall time."""
    start = time.perf_counter()
    process = layout.start(dataset, log)
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(layout.command(dataset))} failed; see {log}")
    return time.perf_counter() - start


def kill_during(layout: Layout, dataset: Path, point: KillPoint, log: Path) -> tuple[str, list[Path]] | None:
    """Starts the run and kills it once `point.saved` matches; returns how far the stage had come and what it had
    saved, or None when the run ended first or the stage had completed by the kill."""
    process = layout.start(dataset, log)
    while not (found := layout.partial(point.saved)):
        if process.poll() is not None:
            return None
        time.sleep(POLL_S)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    found = layout.partial(point.saved)
    if not found or not layout.partial(point.unfinished):
        return None
    return point.progress(found), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a folder for the dataset and the runs (emptied)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the markdown table goes")
    parser.add_argument("--stages", nargs="*", help="only these kill points (by stage name)")
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    dataset = write_dataset(args.work / "scenes")
    reference = Layout(args.work / "uninterrupted")
    wall = run_to_end(reference, dataset, args.work / "uninterrupted.log")
    print(f"uninterrupted run: {wall:.0f} s")
    expected_set, expected_scores = set_digest(reference.run), scores(reference.run)
    rows = []
    for index, point in enumerate(KILL_POINTS):
        if args.stages and point.stage not in args.stages:
            continue
        layout = Layout(args.work / f"killed-{index}")
        log = args.work / f"killed-{index}.log"
        killed = kill_during(layout, dataset, point, log)
        if killed is None:
            rows.append([point.stage, "not caught (the stage ended before the kill)", "-", "-", "-"])
            continue
        when, saved = killed
        with log.open("a") as out:
            out.write("\n--- killed with SIGKILL; the same command again ---\n")
        offset = log.stat().st_size
        with Watch(saved if point.watched else []) as watch:
            run_to_end(layout, dataset, log)
        rerun_log = log.read_bytes()[offset:].decode(errors="replace")
        did = point.rerun(rerun_log, layout.root, watch)
        same_set = set_digest(layout.run) == expected_set
        same_scores = scores(layout.run) == expected_scores
        rows.append([point.stage, when, did, "yes" if same_set else "no", "yes" if same_scores else "no"])
        print(" | ".join(rows[-1]), flush=True)
    table = [
        "| stage | when killed (SIGKILL) | what the re-run did | set identical | scores identical |",
        "| --- | --- | --- | --- | --- |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    text = "\n".join(table) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "Measured by `OMP_NUM_THREADS=1 .venv/bin/python scripts/kill_resume.py --work /tmp/kill_resume` "
        "(a tiny run: 3 classes of 16-pixel images, IPC 2, CPU); set: every file of synthesis/set and "
        "refine/set; scores: report/report.json without timings and paths.\n\n" + text
    )


if __name__ == "__main__":
    main()
