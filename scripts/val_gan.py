"""What a pixel-space GAN (generator.kind: gan) makes of a dataset, on the validation split of `val_refine.py`.

Trains the GAN (rsdistill.generator.gan_training) on the train images kept for matching (the held-out share of
train is the test set here; the test split is never read), then writes an IPC-k set per class from its EMA
generator, the best of `--candidates` per image by the GAN's pixel classifier (the pipeline's selection,
rsdistill.synthesis.gan_synthesis), from random z or, with `--guidance prototype`, near the inversion of k-means
prototypes' representative images. The set is scored by the benchmark's classifier protocol on the validation
images over `--runs` seeds, next to a random real coreset of the same IPC.

The training resumes from `OUT/gan`'s latest checkpoint (same settings only), so a killed run continues and a
second command with other set settings reuses the trained GAN. UR, ER, DiffAugment and R1 are flags, so every
ablation is one command into its own OUT:

    python scripts/val_gan.py /work/tmp/gan/base --dataset eurosat --ipc 10
    python scripts/val_gan.py /work/tmp/gan/ur --dataset eurosat --ipc 10 --uniformity 0.1
    python scripts/val_gan.py /work/tmp/gan/er --dataset eurosat --ipc 10 --entropy 0.1

Writes `OUT/gan/` (the training folder), `OUT/set/` (the set, rsdistill.data.imageset format), `OUT/grid.png`
(one row per class) and `OUT/val_gan.json` (arguments, training seconds and losses, scores).
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
from PIL import Image
from tqdm.auto import tqdm
from val_refine import validation_split

from rsdistill.core.config import GeneratorConfig, SynthesisConfig
from rsdistill.data.dataset import ImageArray, SceneDataset
from rsdistill.data.imageset import sample_grid, write_image_set
from rsdistill.data.names import class_prompt
from rsdistill.evaluate.scoring import fixed, random_draw
from rsdistill.generator.gan_checks import GanSettings
from rsdistill.generator.gan_training import REPORT_FILE, train_gan
from rsdistill.prototypes.coreset import select_coreset
from rsdistill.prototypes.encoders import load_encoder
from rsdistill.synthesis.gan_synthesis import GanSelection, check_gan_synthesis, load_gan
from rsdistill.synthesis.near_copy import DEFAULT_SPACE, NearestReal
from rsdistill.synthesis.synthesize import Target

DEFAULT_STEPS = 2000  # meant to train in 15 to 20 minutes at 64 px, batch 32, on one core of a shared CPU


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder (the GAN trains into OUT/gan and resumes there)")
    parser.add_argument("--dataset", default="eurosat")
    parser.add_argument("--data_root", default=os.environ.get("RSDISTILL_DATA"))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="GAN optimiser steps")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=GeneratorConfig.gan_learning_rate)
    parser.add_argument("--width", type=int, default=GeneratorConfig.gan_width)
    parser.add_argument("--latent_dim", type=int, default=GeneratorConfig.gan_latent_dim)
    parser.add_argument("--diffaugment", default=GeneratorConfig.gan_diffaugment, help="policy, or none")
    parser.add_argument("--r1", type=float, default=GeneratorConfig.gan_r1_gamma, help="R1 gamma (0: off)")
    parser.add_argument("--uniformity", type=float, default=0.0, help="UR weight (0: off)")
    parser.add_argument("--uniformity_scope", choices=("class", "batch"), default=GeneratorConfig.gan_uniformity_scope,
                        help="UR over each class's images (the generator's batch in same-class pairs) or the batch")
    parser.add_argument("--entropy", type=float, default=0.0, help="ER weight (0: off)")
    parser.add_argument(
        "--consistency", type=float, default=GeneratorConfig.consistency_lambda, help="consistency_lambda (0: off)"
    )
    parser.add_argument("--classifier_steps", type=int, help="pixel classifier steps (default: the GAN's)")
    parser.add_argument("--checkpointing_steps", type=int, default=200)
    parser.add_argument("--collapse_fraction", type=float, default=GeneratorConfig.gan_collapse_fraction)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=4, help="candidates per image, best by the classifier")
    parser.add_argument("--guidance", choices=("none", "prototype"), default="none")
    parser.add_argument("--encoder", default="pixels", help="prototype encoder spec (--guidance prototype)")
    parser.add_argument("--prototype_spread", type=float, default=GeneratorConfig.gan_prototype_spread)
    parser.add_argument("--inversion_steps", type=int, default=GeneratorConfig.gan_inversion_steps)
    parser.add_argument("--runs", type=int, default=3, help="scoring runs (seeds 0..runs-1)")
    parser.add_argument("--seed", type=int, default=0, help="GAN training and sampling seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no_reference", action="store_true", help="skip scoring the random real coreset")
    return parser.parse_args()


def generator_config(args: argparse.Namespace) -> GeneratorConfig:
    """The GeneratorConfig the flags describe (the pipeline's defaults for the rest)."""
    return GeneratorConfig(
        kind="gan", max_train_steps=args.steps, train_batch_size=args.batch_size, gan_learning_rate=args.learning_rate,
        gan_width=args.width, gan_latent_dim=args.latent_dim, gan_diffaugment=args.diffaugment,
        gan_r1_gamma=args.r1, gan_uniformity_weight=args.uniformity,
        gan_uniformity_scope=args.uniformity_scope, gan_entropy_weight=args.entropy,
        consistency_lambda=args.consistency, classifier_steps=args.classifier_steps,
        checkpointing_steps=args.checkpointing_steps, gan_collapse_fraction=args.collapse_fraction,
        gan_prototype_spread=args.prototype_spread, gan_inversion_steps=args.inversion_steps,
    )  # fmt: skip


def targets_for(args: argparse.Namespace, dataset: SceneDataset, matched: ImageArray) -> list[Target]:
    """IPC slots per class; with `--guidance prototype`, each the k-means medoid (in `--encoder` space) of one
    cluster of its class's matched images."""
    keys: list[str | None] = [None] * (len(dataset.classes) * args.ipc)
    if args.guidance == "prototype":
        encoder = load_encoder(args.encoder, device="cpu")
        features = encoder.encode(matched.images)
        chosen = select_coreset(
            "kmeans", features, matched.labels, args.ipc, seed=args.seed, keys=matched.keys, classes=dataset.classes
        )
        keys = [matched.keys[i] for i in chosen]
    return [Target(label * args.ipc + i, f"{name}/{i}", label, name, class_prompt(name), keys[label * args.ipc + i])
            for label, name in enumerate(dataset.classes) for i in range(args.ipc)]  # fmt: skip


def make_set(args: argparse.Namespace, dataset: SceneDataset, matched: ImageArray, gan_dir: Path,
             g: GeneratorConfig) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:  # fmt: skip
    """The kept candidate of every slot, with its metadata record."""
    synthesis = replace(SynthesisConfig(), guidance=args.guidance, candidates=args.candidates)
    check_gan_synthesis(synthesis, g)
    generator, classifier = load_gan(gan_dir, dataset.classes, args.resolution)
    nearest = NearestReal.for_dataset(dataset, DEFAULT_SPACE, args.resolution, None, "cpu")
    selection = GanSelection(generator, classifier, nearest, dataset, synthesis, g, args.seed)
    targets = targets_for(args, dataset, matched)
    per_chunk = max(1, synthesis.batch_size // synthesis.candidates)
    kept: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
    for start in tqdm(range(0, len(targets), per_chunk), desc="set", unit="batch"):
        for target, candidate, stats in selection.make(targets[start : start + per_chunk]):
            record = {"class": target.class_name, "text": target.prompt, "prototype": target.id,
                      "source_key": target.source_key, "seed": candidate.seed, "score": candidate.score,
                      "nearest_distance": candidate.nearest_distance, **stats}  # fmt: skip
            kept[target.index] = (candidate.image, record)
    images = np.stack([kept[t.index][0] for t in targets])
    return images, np.array([t.label for t in targets]), [kept[t.index][1] for t in targets]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    g = generator_config(args)
    settings = GanSettings.from_config(g)
    dataset, matched, scorer = validation_split(args.dataset, args.data_root, args.resolution, args.val_fraction)
    gan_dir = args.out / "gan"
    start = time.perf_counter()
    train_gan(
        matched.images,
        matched.labels,
        dataset.classes,
        settings,
        gan_dir,
        seed=args.seed,
        device="cpu",
        val_fraction=args.val_fraction,
    )
    train_s = time.perf_counter() - start
    images, labels, records = make_set(args, dataset, matched, gan_dir, g)
    stems = [f"{r['class']}_{i:05d}" for i, r in enumerate(records)]
    write_image_set(args.out / "set", images, labels, dataset.classes, records, stems)
    grid = sample_grid(images, labels, len(dataset.classes), columns=min(args.ipc, 10))
    Image.fromarray(grid).save(args.out / "grid.png")
    seeds = list(range(args.runs))
    rows: list[dict[str, Any]] = []

    def report(name: str, score: Any) -> None:
        rows.append({"name": name, "val_accuracy_mean": score.mean, "val_accuracy_std": score.std,
                     "runs": score.runs, "seeds": seeds})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)

    report(f"GAN set ({args.guidance} guidance)", scorer.score(fixed(images, labels), seeds=seeds, desc="GAN set"))
    if not args.no_reference:
        report("random real coreset", scorer.score(random_draw(matched, args.ipc), seeds=seeds, desc="random"))
    training = json.loads((gan_dir / REPORT_FILE).read_text())
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "torch_threads": torch.get_num_threads(), "train_s_this_invocation": round(train_s, 1),
              "classifier_val_accuracy": training["classifier_val_accuracy"],
              "last_losses": training["history"][-1] if training["history"] else None,
              "collapse_checks": training["collapse_checks"][-1:], "rows": rows}  # fmt: skip
    (args.out / "val_gan.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out / 'val_gan.json'}, {args.out / 'grid.png'} and {args.out / 'set'}")


if __name__ == "__main__":
    main()
