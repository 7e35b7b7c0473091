"""1 against 2 processes on the CPU: wall time of synthesis and evaluation, and how far fine-tuning moves.

Builds a small fake dataset, a tiny random Stable Diffusion bundle with a latent classifier and pixel-space
prototypes (not timed), then runs the commands as a user would: once launched plainly (one process) and once
under ``torchrun --nproc_per_node 2`` with ``ACCELERATE_USE_CPU=1``, every process with one thread
(``OMP_NUM_THREADS=1``).

- ``--stages synthesis,evaluation`` (the default): ``rsdistill generate`` and ``rsdistill evaluate``. It prints,
  per stage and process count, the command's wall time (imports and model loading included) and the stage's own
  wall time from its manifest, the ratios, and whether the two sets are byte-identical and the two reports'
  accuracies equal.
- ``--stages finetune``: ``rsdistill finetune`` of the tiny bundle's whole UNet, by 2 processes with
  ``--train_batch_size B`` and by one process three ways: ``B`` with ``--gradient_accumulation_steps 2`` (the
  same micro-batches, so the same images, noise and timesteps), ``2B`` (the same images per step, other noise
  and timesteps) and ``2B`` with another seed (another draw of the whole training). It prints, for each
  one-process run against the 2-process run, the max and mean absolute difference of the UNet weights (next to
  the mean absolute change from the starting weights), each run's training loss (the last step, and the mean
  of the last 20 logged steps; the 2-process run logs the main process's micro-batches) and its denoising
  loss on one fixed batch of train latents (fixed noise, timesteps and prompts; also the starting bundle's),
  and the wall times.

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_processes.py --work /tmp/bench_processes
    OMP_NUM_THREADS=1 python scripts/bench_processes.py --work /tmp/bench_processes --stages finetune
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
    prototypes = run_prototypes(RunContext.of(dataset), PrototypeConfig(encoder="pixels", ipc=ipc), work / "prototypes")
    for resolution in (32, 64):  # a warm image cache for every run
        for split in ("train", "test"):
            dataset.images(split, resolution)
    return {"dataset": f"imagefolder:{data}", "bundle": str(bundle), "prototypes": str(prototypes)}


def launched(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "rsdistill"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        "-m",
        "rsdistill",
    ]


def run_command(command: list[str], env: dict[str, str]) -> float:
    """Runs `command`; returns its wall time in seconds."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return time.perf_counter() - start


def timed(command: list[str], env: dict[str, str], manifest: Path) -> dict[str, float]:
    wall = run_command(command, env)
    return {"command_s": round(wall, 1), "stage_s": json.loads(manifest.read_text())["wall_time_s"]}


def bench_synthesis_evaluation(args: argparse.Namespace, inputs: dict[str, str], env: dict[str, str]) -> dict:
    """Wall times of generate and evaluate with 1 and 2 processes; whether the outputs are the same."""
    work, data = Path(args.work), ["--dataset", inputs["dataset"]]
    sampling = f"--ipc {args.ipc} --num_inference_steps {args.inference_steps} --candidates 2 --batch_size 8"
    scoring = f"--resolution 32 --steps {args.eval_steps} --runs {args.runs} --baselines random --no-compile"
    results: dict[str, Any] = {"synthesis": {}, "evaluation": {}}
    for n in (1, 2):
        out = work / f"synthesis-{n}"
        command = [*launched(n), "generate", *data, "--generator", inputs["bundle"], "--prototypes"]
        command += [inputs["prototypes"], "--out", str(out), *sampling.split()]
        results["synthesis"][str(n)] = timed(command, env, out / "manifest.json")
    for n in (1, 2):
        out = work / f"report-{n}"
        command = [*launched(n), "evaluate", str(work / "synthesis-1" / "set"), *data, "--out", str(out)]
        results["evaluation"][str(n)] = timed([*command, *scoring.split()], env, out / "manifest.json")
    for times in results.values():
        times["ratio_1_over_2"] = {key: round(times["1"][key] / times["2"][key], 2) for key in times["1"]}
    sets = [sorted((work / f"synthesis-{n}" / "set").rglob("*")) for n in (1, 2)]
    results["sets_identical"] = all(
        a.relative_to(work / "synthesis-1") == b.relative_to(work / "synthesis-2")
        and (a.is_dir() or a.read_bytes() == b.read_bytes())
        for a, b in zip(*sets, strict=True)
    )
    accuracies = [
        [r["accuracy"] for r in json.loads((work / f"report-{n}" / "report.json").read_text())["rows"]] for n in (1, 2)
    ]
    results["accuracies_equal"] = accuracies[0] == accuracies[1]
    return results


# The fine-tuning runs compared: (processes, train_batch_size in units of --finetune-batch, accumulation, seed).
FINETUNE_RUNS = {
    "two_processes": (2, 1, 1, 0),
    "one_process_accumulating": (1, 1, 2, 0),
    "one_process_double_batch": (1, 2, 1, 0),
    "one_process_double_batch_other_seed": (1, 2, 1, 1),
}


def unet_weights(bundle: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (weights,) = (bundle / "unet").glob("*.safetensors")
    return {name: value.double() for name, value in load_file(weights).items()}


def weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max and mean absolute difference over every UNet weight."""
    difference = torch.cat([(a[name] - b[name]).abs().flatten() for name in sorted(a)])
    return {"max_abs": float(difference.max()), "mean_abs": float(difference.mean())}


@torch.no_grad()
def denoising_loss(bundle_dir: Path, dataset_spec: str, resolution: int, count: int = 64) -> float:
    """MSE of the UNet's prediction on one fixed batch of train latents: the same samples, noise, timesteps
    and class prompts for every bundle (the training loss without its draws)."""
    from rsdistill.generator.bundle import load_bundle
    from rsdistill.generator.diffusion_math import training_target
    from rsdistill.generator.finetune_data import (
        PromptEncoder,
        batch_latents,
        cached_latents,
        latents_tag,
        plan_micro_batch,
        train_prompts,
    )

    dataset = load_dataset(dataset_spec)
    bundle = load_bundle(str(bundle_dir))
    images = dataset.images("train", resolution)
    latents = cached_latents(bundle, images, latents_tag(dataset, "train", resolution), progress=False)
    scheduler = bundle.scheduler
    plan = plan_micro_batch(
        12345,
        0,
        count,
        len(latents),
        tuple(latents.shape[1:]),
        scheduler.config.num_train_timesteps,
        caption_dropout=0.0,
        augment=False,
    )
    clean = batch_latents(latents, plan)
    noisy = scheduler.add_noise(clean, plan.noise, plan.timesteps)
    prompts = train_prompts(images.keys, images.labels, dataset.classes, None)
    hidden = PromptEncoder(bundle)([prompts[i] for i in plan.indices])
    prediction = bundle.unet(
        noisy, plan.timesteps, encoder_hidden_states=hidden, class_labels=bundle.class_labels(count)
    ).sample
    target = training_target(scheduler, clean, plan.noise, plan.timesteps)
    return float(torch.nn.functional.mse_loss(prediction.float(), target.float()))


def bench_finetune(args: argparse.Namespace, inputs: dict[str, str], env: dict[str, str]) -> dict:
    """Fine-tuning with 2 processes against one process trained three ways (see the module docstring)."""
    work, batch = Path(args.work), args.finetune_batch
    results: dict[str, Any] = {"steps": args.finetune_steps, "batch_per_micro_batch": batch, "runs": {}}
    for name, (n, multiple, accumulation, seed) in FINETUNE_RUNS.items():
        out = work / f"finetune-{name}"
        settings = f"--resolution 32 --train_batch_size {batch * multiple} --gradient_accumulation_steps "
        settings += f"{accumulation} --max_train_steps {args.finetune_steps} --checkpointing_steps "
        settings += f"{args.finetune_steps} --learning_rate {args.finetune_lr} --seed {seed} --no-progress"
        command = [*launched(n), "finetune", "--dataset", inputs["dataset"], "--pretrained_model_name_or_path"]
        command += [inputs["bundle"], "--output_dir", str(out), *settings.split(), "generator.validation_steps=null"]
        wall = run_command(command, env)
        log = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
        losses = [record["diffusion_loss"] for record in log]
        results["runs"][name] = {
            "processes": n,
            "train_batch_size": batch * multiple,
            "gradient_accumulation_steps": accumulation,
            "seed": seed,
            "command_s": round(wall, 1),
            "last_step_loss": round(losses[-1], 6),
            "last_20_steps_mean_loss": round(float(np.mean(losses[-20:])), 6),
            "denoising_loss_fixed_batch": round(denoising_loss(out, inputs["dataset"], 32), 6),
        }
    results["starting_bundle_denoising_loss_fixed_batch"] = round(
        denoising_loss(Path(inputs["bundle"]), inputs["dataset"], 32), 6
    )
    start = unet_weights(Path(inputs["bundle"]))
    reference = unet_weights(work / "finetune-two_processes")
    results["two_processes_change_from_start"] = weight_difference(reference, start)
    for name in FINETUNE_RUNS:
        if name != "two_processes":
            results["runs"][name]["against_two_processes"] = weight_difference(
                unet_weights(work / f"finetune-{name}"), reference
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/bench_processes")
    parser.add_argument("--stages", default="synthesis,evaluation", help="synthesis,evaluation and/or finetune")
    parser.add_argument("--per-class", type=int, default=24, help="real images per class (4 of them test)")
    parser.add_argument("--ipc", type=int, default=6)
    parser.add_argument("--inference-steps", type=int, default=20)
    parser.add_argument("--eval-steps", type=int, default=200)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--finetune-batch", type=int, default=8, help="images per process and micro-batch")
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    args = parser.parse_args()
    stages = set(args.stages.split(","))
    work = Path(args.work)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "RSDISTILL_CACHE": str(work / "cache")}
    os.environ["RSDISTILL_CACHE"] = env["RSDISTILL_CACHE"]
    torch.set_num_threads(1)
    inputs = make_inputs(work, args.per_class, args.ipc)
    results: dict[str, Any] = {}
    if stages & {"synthesis", "evaluation"}:
        results.update(bench_synthesis_evaluation(args, inputs, env))
    if "finetune" in stages:
        results["finetune"] = bench_finetune(args, inputs, env)
    results["cores"] = os.cpu_count()
    results["load_average"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
