"""Benchmark of the from-scratch generator on a real dataset (default eurosat), written as JSON.

Measures: VAE reconstruction PSNR on the test split, latent classifier test accuracy, UNet training
throughput (images/s), wall time and peak memory of each part, and the effect of the classifier-consistency
loss: from one base UNet (trained with lambda = 0), two continuations that differ only in lambda; their
class-conditioned samples are classified by the latent classifier and by a pixel classifier trained on real
train images (EfficientNet-Lite0 features + logistic regression). The test split only scores, it never chooses.

    python scripts/bench_generator.py --out /tmp/bench-generator --threads 1 --base_steps 500 \
        --branch_steps 150 --json /tmp/bench-generator/report.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from rsdistill.core.artifacts import PeakMemory
from rsdistill.core.config import GeneratorConfig, SynthesisConfig
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import SceneDataset
from rsdistill.data.sources import load_dataset
from rsdistill.generator.bundle import CLASSIFIER_FOLDER, load_bundle
from rsdistill.generator.finetune import finetune
from rsdistill.generator.finetune_data import PromptEncoder, class_prompt, stream_seed
from rsdistill.generator.finetune_models import to_uint8_grid
from rsdistill.generator.latent_classifier import LatentClassifier, predict_logits
from rsdistill.generator.sampling import SamplerSettings, sample_latents
from rsdistill.generator.scratch import get_preset, init_scratch


def timed_part(report: dict[str, Any], name: str, fn: Any) -> Any:
    with PeakMemory() as memory:
        start = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - start
    report["parts"][name] = {"wall_s": round(wall, 1), "peak_rss_mb": round(memory.peak_mb, 1)}
    print(f"[{name}] {wall:.0f}s, peak {memory.peak_mb:.0f} MB", flush=True)
    return result


def train_unet(bundle: Path, out: Path, dataset: SceneDataset, steps: int, lam: float, args: argparse.Namespace,
               **extra: Any) -> Path:
    config = GeneratorConfig(
        pretrained_model_name_or_path=str(bundle), output_dir=str(out), train_batch_size=args.train_batch_size,
        max_train_steps=steps, learning_rate=args.learning_rate, checkpointing_steps=max(50, steps // 4),
        checkpoints_total_limit=1, consistency_lambda=lam, consistency_max_timestep=args.consistency_max_timestep,
        mixed_precision=args.mixed_precision, validation_steps=None,
    )
    context = RunContext.of(dataset, resolution=args.resolution, seed=args.seed)
    return finetune(context, replace(config, **extra))


@torch.no_grad()
def class_samples(folder: Path, classes: list[str], per_class: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """`per_class` samples per class from class-name prompts (DDIM 25 steps, CFG 3): latents and labels."""
    bundle = load_bundle(str(folder))
    encoder = PromptEncoder(bundle)
    settings = SamplerSettings.from_config(SynthesisConfig(guidance="none", num_inference_steps=25, guidance_scale=3.0))
    latents, labels = [], []
    for label, name in enumerate(classes):
        seeds = [stream_seed(seed, "bench", label, i) for i in range(per_class)]
        prompts = encoder([class_prompt(name)] * per_class)
        latents.append(sample_latents(bundle, prompts, encoder([""]), seeds, settings))
        labels += [label] * per_class
    return torch.cat(latents), np.asarray(labels)


def pixel_classifier(dataset: SceneDataset, resolution: int, per_class: int, seed: int) -> tuple[Any, Any]:
    """EfficientNet-Lite0 features + logistic regression on `per_class` real train images per class."""
    from rsdistill.prototypes.encoders import load_encoder

    train = dataset.images("train", resolution)
    rng = np.random.default_rng(seed)
    chosen = np.sort(np.concatenate([rng.permutation(np.flatnonzero(train.labels == c))[:per_class]
                                     for c in range(len(dataset.classes))]))
    encoder = load_encoder("efficientnet-lite0", device="cpu", batch_size=128)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(encoder.encode(np.array(train.images[chosen]), progress=False), train.labels[chosen])
    return model, encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="eurosat")
    parser.add_argument("--data_root", default=os.environ.get("RSDISTILL_DATA"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--json")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--vae_steps", type=int, help="default: the scratch-cpu preset's")
    parser.add_argument("--classifier_steps", type=int, help="default: the scratch-cpu preset's")
    parser.add_argument("--base_steps", type=int, default=600)
    parser.add_argument("--branch_steps", type=int, default=200)
    parser.add_argument("--train_batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--consistency_lambda", type=float, default=0.5)
    parser.add_argument("--consistency_max_timestep", type=int, default=600)
    parser.add_argument("--mixed_precision", default="no")
    parser.add_argument("--samples_per_class", type=int, default=20)
    parser.add_argument("--pixel_train_per_class", type=int, default=200)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    dataset = load_dataset(args.dataset, root=args.data_root)
    report: dict[str, Any] = {"args": vars(args), "torch_threads": torch.get_num_threads(),
                              "load_average_start": os.getloadavg(), "parts": {}}

    bundle_dir = out / "bundle"
    preset = get_preset("scratch-cpu", vae_steps=args.vae_steps, classifier_steps=args.classifier_steps,
                        resolution=args.resolution)
    if (bundle_dir / "scratch_report.json").is_file():
        scratch = json.loads((bundle_dir / "scratch_report.json").read_text())
    else:
        scratch = timed_part(report, "init_scratch", lambda: init_scratch(
            RunContext.of(dataset, seed=args.seed, resolution=preset.resolution), preset, bundle_dir,
            psnr_samples=None))
    report["scratch"] = {k: v for k, v in scratch.items() if k != "latent_classifier_history"}

    base = timed_part(report, "unet_base", lambda: train_unet(bundle_dir, out / "unet-base", dataset,
                                                               args.base_steps, 0.0, args, lr_warmup_steps=50))
    report["unet_base_training"] = json.loads((base / "logs" / "summary.json").read_text())
    branches = {}
    for lam in (args.consistency_lambda, 0.0):
        name = f"branch-lambda-{lam:g}"
        branches[lam] = timed_part(report, name, lambda lam=lam, name=name: train_unet(
            base, out / name, dataset, args.branch_steps, lam, args, learning_rate=args.learning_rate / 2))
        report[f"{name}_training"] = json.loads((branches[lam] / "logs" / "summary.json").read_text())

    classifier = LatentClassifier.from_pretrained(bundle_dir / CLASSIFIER_FOLDER)
    pixel_model, pixel_encoder = timed_part(report, "pixel_classifier", lambda: pixel_classifier(
        dataset, args.resolution, args.pixel_train_per_class, args.seed))
    test = dataset.images("test", args.resolution)
    pick = np.random.default_rng(args.seed).permutation(len(test.labels))[:1000]
    report["pixel_classifier_test_accuracy"] = float(
        (pixel_model.predict(pixel_encoder.encode(np.array(test.images[np.sort(pick)]), progress=False))
         == test.labels[np.sort(pick)]).mean())
    report["consistency_effect"] = {}
    for lam, folder in branches.items():
        latents, labels = timed_part(report, f"sampling-lambda-{lam:g}", lambda folder=folder: class_samples(
            folder, dataset.classes, args.samples_per_class, args.seed))
        latent_hits = predict_logits(classifier, latents).argmax(1).numpy() == labels
        bundle = load_bundle(str(folder))
        with torch.no_grad():
            pixels = torch.cat([bundle.decode_latents(latents[i : i + 100]) for i in range(0, len(latents), 100)])
        images = ((pixels.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        pixel_hits = pixel_model.predict(pixel_encoder.encode(images, progress=False)) == labels
        grid = to_uint8_grid(pixels[:: max(1, args.samples_per_class // 4)], columns=8)
        from PIL import Image

        Image.fromarray(grid).save(out / f"samples-lambda-{lam:g}.png")
        report["consistency_effect"][f"lambda={lam:g}"] = {
            "latent_classifier_accuracy": float(latent_hits.mean()),
            "pixel_classifier_accuracy": float(pixel_hits.mean()), "samples": len(labels),
        }
    report["load_average_end"] = os.getloadavg()
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
