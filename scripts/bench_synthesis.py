"""Synthesis benchmark: a distilled set generated twice with the same seed, and what the kept images are.

Measures, for e.g. eurosat IPC 10 from the from-scratch generator:
- images per class in the set;
- whether the second run's files (PNGs, metadata.jsonl, grid) are byte-identical to the first's;
- the share of kept images the bundle's latent classifier labels with their class, re-measured from the
  written PNGs (encoded again with the bundle's VAE);
- seconds per kept image on this machine (from the stage manifest: sampling, scoring and checks, without
  model loading) and the wall time of each run;
- near copies at the threshold used, and the path of the sample grid.

Usage::

    RSDISTILL_DATA=/work/shared/datasets python scripts/bench_synthesis.py --generator BUNDLE \
        --prototypes PROTOTYPES_STAGE [--prompts CAPTIONS_STAGE] --dataset eurosat --ipc 10 --work /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rsdistill.cli.common import add_config_flags, context_from_args
from rsdistill.data.imageset import read_image_set
from rsdistill.generator.bundle import CLASSIFIER_FOLDER, load_bundle
from rsdistill.generator.latent_classifier import LatentClassifier, predict_logits
from rsdistill.synthesis.synthesize import synthesize, to_pixels


def stage_files(folder: Path) -> dict[str, bytes]:
    """Every file of a stage folder but its manifest (which records times)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


@torch.no_grad()
def classifier_agreement(bundle_dir: str, set_dir: Path, classes: list[str]) -> float:
    """Share of the set's images whose re-encoded latent the bundle's latent classifier puts in their class."""
    written = read_image_set(set_dir, classes)
    bundle = load_bundle(bundle_dir)
    latents = torch.cat([bundle.encode_images(to_pixels(written.images[i : i + 64])).float()
                         for i in range(0, len(written.images), 64)])
    classifier = LatentClassifier.from_pretrained(Path(bundle_dir) / CLASSIFIER_FOLDER)
    predicted = predict_logits(classifier, latents).argmax(dim=1).numpy()
    return float(np.mean(predicted == written.labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", required=True)
    parser.add_argument("--prototypes")
    parser.add_argument("--prompts")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--work", default="/tmp/bench_synthesis", help="where the two runs are written")
    add_config_flags(parser, "seed", "device", "data", "synthesis")
    args = parser.parse_args()
    run_config, context = context_from_args(args)
    dataset, config = context.dataset, run_config.synthesis
    work = Path(args.work)
    walls = []
    for name in ("run1", "run2"):
        start = time.perf_counter()
        synthesize(context, config, work / name, args.generator, args.prototypes, args.prompts, ipc=args.ipc)
        walls.append(time.perf_counter() - start)
    first, second = stage_files(work / "run1"), stage_files(work / "run2")
    manifest = json.loads((work / "run1" / "manifest.json").read_text())
    records = [json.loads(line) for line in (work / "run1" / "set" / "metadata.jsonl").read_text().splitlines()]
    distances = np.array([r["nearest_distance"] for r in records])
    summary = {
        "dataset": dataset.name,
        "ipc": args.ipc,
        "config": vars(config) | {"seed": args.seed},
        "images": manifest["images"],
        "per_class": manifest["per_class"],
        "byte_identical_second_run": first == second,
        "files_compared": len(first),
        "classifier_agreement_from_pngs": classifier_agreement(args.generator, work / "run1" / "set",
                                                               dataset.classes),
        "classifier_agreement_at_selection": manifest["classifier_agreement"],
        "seconds_per_kept_image": manifest["seconds_per_image"],
        "wall_seconds_per_run": [round(w, 1) for w in walls],
        "peak_memory_mb": manifest["peak_memory_mb"],
        "near_copy_space": manifest["near_copy_space"],
        "near_copy_threshold": manifest["near_copy_threshold"],
        "near_copies": manifest["near_copies"],
        "nearest_distance_min_median_max": [round(float(f(distances)), 4) for f in (np.min, np.median, np.max)],
        "prompts_truncated": manifest["prompts_truncated"],
        "sample_grid": str(work / "run1" / "sample_grid.png"),
        "torch_threads": torch.get_num_threads(),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
