"""Wall time of 1 against 2 processes for synthesis and evaluation of a small set, on the CPU.

Builds a small fake dataset, a tiny random Stable Diffusion bundle with a latent classifier and pixel-space
prototypes (not timed), then runs ``rsdistill generate`` and ``rsdistill evaluate`` as a user would: once
launched plainly (one process) and once under ``torchrun --nproc_per_node 2`` with ``ACCELERATE_USE_CPU=1``,
every process with one thread (``OMP_NUM_THREADS=1``). It prints, per stage and process count, the command's
wall time (imports and model loading included) and the stage's own wall time from its manifest, the ratios,
and whether the two sets are byte-identical and the two reports' accuracies equal.

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_processes.py --work /tmp/bench_processes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rsdistill.core.config import PrototypeConfig
from rsdistill.data.context import RunContext
from rsdistill.data.sources import load_dataset
from rsdistill.generator.latent_classifier import LatentClassifier, LatentClassifierConfig
from rsdistill.generator.tiny import tiny_sd_folder
from rsdistill.prototypes import run_prototypes

CLASSES = ["field", "forest", "lake", "town"]
TINTS = [(150, 150, 60), (40, 120, 40), (30, 60, 160), (150, 150, 150)]


def make_inputs(work: Path, per_class: int, ipc: int) -> dict[str, str]:
    """The dataset (64 px, 4 test images per class), the bundle and the prototypes, written once."""
    rng = np.random.default_rng(0)
    data = work / "scenes"
    test = []
    for label, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.asarray(TINTS[label]) + rng.normal(0, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(data / name / f"{name}_{i:03d}.png")
            if i < 4:
                test.append(f"{name}/{name}_{i:03d}.png")
    (data / "test.txt").write_text("\n".join(test) + "\n")
    bundle = tiny_sd_folder(work / "bundle", latent_size=16)
    torch.manual_seed(0)
    config = LatentClassifierConfig(in_channels=4, num_classes=len(CLASSES), width=8, stages=2, classes=CLASSES)
    LatentClassifier(config).save_pretrained(bundle / "latent_classifier")
    dataset = load_dataset(f"imagefolder:{data}")
    prototypes = run_prototypes(RunContext.of(dataset), PrototypeConfig(encoder="pixels", ipc=ipc),
                                work / "prototypes")
    for resolution in (32, 64):  # a warm image cache for every run
        for split in ("train", "test"):
            dataset.images(split, resolution)
    return {"dataset": f"imagefolder:{data}", "bundle": str(bundle), "prototypes": str(prototypes)}


def launched(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "rsdistill"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "-m",
            "rsdistill"]


def timed(command: list[str], env: dict[str, str], manifest: Path) -> dict[str, float]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return {"command_s": round(wall, 1), "stage_s": json.loads(manifest.read_text())["wall_time_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/bench_processes")
    parser.add_argument("--per-class", type=int, default=24, help="real images per class (4 of them test)")
    parser.add_argument("--ipc", type=int, default=6)
    parser.add_argument("--inference-steps", type=int, default=20)
    parser.add_argument("--eval-steps", type=int, default=200)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    work = Path(args.work)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "RSDISTILL_CACHE": str(work / "cache")}
    os.environ["RSDISTILL_CACHE"] = env["RSDISTILL_CACHE"]
    inputs = make_inputs(work, args.per_class, args.ipc)
    data = ["--dataset", inputs["dataset"]]
    results: dict[str, dict[str, dict[str, float]]] = {"synthesis": {}, "evaluation": {}}
    for n in (1, 2):
        out = work / f"synthesis-{n}"
        results["synthesis"][str(n)] = timed(
            [*launched(n), "generate", *data, "--generator", inputs["bundle"], "--prototypes", inputs["prototypes"],
             "--ipc", str(args.ipc), "--out", str(out), "--num_inference_steps", str(args.inference_steps),
             "--candidates", "2", "--batch_size", "8"], env, out / "manifest.json")
    for n in (1, 2):
        out = work / f"report-{n}"
        results["evaluation"][str(n)] = timed(
            [*launched(n), "evaluate", str(work / "synthesis-1" / "set"), *data, "--out", str(out), "--resolution",
             "32", "--steps", str(args.eval_steps), "--runs", str(args.runs), "--baselines", "random",
             "--no-compile"], env, out / "manifest.json")
    for times in results.values():
        times["ratio_1_over_2"] = {key: round(times["1"][key] / times["2"][key], 2) for key in times["1"]}
    sets = [sorted((work / f"synthesis-{n}" / "set").rglob("*")) for n in (1, 2)]
    results["sets_identical"] = all(a.relative_to(work / "synthesis-1") == b.relative_to(work / "synthesis-2")
                                    and (a.is_dir() or a.read_bytes() == b.read_bytes())
                                    for a, b in zip(*sets, strict=True))
    reports = [json.loads((work / f"report-{n}" / "report.json").read_text()) for n in (1, 2)]
    results["accuracies_equal"] = [r["accuracy"] for r in reports[0]["rows"]] == [r["accuracy"] for r in
                                                                                  reports[1]["rows"]]
    results["cores"] = os.cpu_count()
    results["load_average"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
