"""What the generator's VAE costs a distilled set, on the validation split of `val_refine.py`.

A random real coreset (drawn from the train images kept for matching) is scored as it is, after a round trip
through the VAE (encode, posterior mean, decode) and after that round trip and refinement. The first two bound
what any image the generator decodes can be worth; the third shows how much of the gap refinement closes.

The classifier trained on the round trips is tested twice: on the real validation images (the bound) and on
the validation images sent through the same VAE (`val_accuracy_round_trip`: what the round trips still teach
when train and test look alike). The gap between the two is the shift from decoded to real images; what is left
below the real set is information the VAE loses. The classifier trained on the real set is also tested on each
VAE's round-tripped validation images (`real_set_on_round_trip`).

Several generator folders may be given: each VAE's round trip is scored against the same real coreset.
`--train_vae` first trains a from-scratch VAE into the (single, new) generator folder, on the train images kept
for matching only, so the validation images are never seen; `--preset_setting` changes the preset.
`--grid PATH` draws one real image per class above its round trip through each VAE (and, with `--grid_set
LABEL=DIR`, a set's first image of each class, such as a GAN's from `val_gan.py`).

    python scripts/val_vae.py GENERATOR --dataset eurosat --ipc 10 \
        --variant iterations=150 --json vae.json
    python scripts/val_vae.py /work/tmp/adv/adv --train_vae --mixed_precision bf16 \
        --preset_setting vae_steps=1600,autoencoder=adversarial --ipc 50 --json adv.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw
from torch import nn
from tqdm.auto import tqdm
from val_refine import parse_variant, validation_split

from rsdistill.data.dataset import SceneDataset
from rsdistill.data.imageset import read_image_set
from rsdistill.evaluate.protocol import to_uint8_tensor
from rsdistill.evaluate.scoring import Scorer, fixed, random_draw
from rsdistill.generator.scratch import PRESETS, ScratchPreset, get_preset, train_vae
from rsdistill.synthesis.refine import refine_images
from rsdistill.synthesis.synthesize import to_pixels, to_uint8


@torch.no_grad()
def round_trip(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 images (N, H, W, 3) encoded to their posterior mean and decoded again."""
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="VAE round trip", leave=False):
        latents = vae.encode(to_pixels(images[start : start + batch_size])).latent_dist.mean
        out.append(to_uint8(vae.decode(latents).sample))
    return np.concatenate(out)


def parse_preset(name: str, texts: list[str]) -> ScratchPreset:
    """`vae_steps=1600,autoencoder=adversarial` -> the named preset with those (scalar) fields replaced."""
    kinds = {f.name: type(getattr(PRESETS[name], f.name)) for f in fields(ScratchPreset)}
    pairs = dict(item.split("=", 1) for text in texts for item in text.split(",") if item)
    unknown = sorted(k for k in pairs if kinds.get(k) not in (int, float, str))
    if unknown:
        raise SystemExit(f"unknown or non-scalar preset setting(s) {unknown}")
    return get_preset(name, **{key: kinds[key](value) for key, value in pairs.items()})


def train_into(folder: Path, images: np.ndarray, preset: ScratchPreset, seed: int, mixed_precision: str) -> None:
    """Trains a VAE on `images` and saves it as `folder/vae`, with `folder/vae_report.json` (settings, time,
    every 10th step's losses)."""
    if (folder / "vae").exists():
        raise SystemExit(f"{folder / 'vae'} exists already; --train_vae needs a new folder")
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    vae = train_vae(images, preset, seed=seed, mixed_precision=mixed_precision, history=history)
    seconds = time.perf_counter() - start
    vae.save_pretrained(folder / "vae")
    report = {"settings": asdict(preset), "seed": seed, "mixed_precision": mixed_precision, "images": len(images),
              "torch_threads": torch.get_num_threads(), "vae_train_s": seconds, "history": history[::10]}
    (folder / "vae_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({"trained": str(folder / "vae"), "vae_train_s": round(seconds, 1)}), flush=True)


def score_models(scorer: Scorer, images: np.ndarray, labels: np.ndarray, seeds: list[int],
                 desc: str) -> tuple[dict[str, Any], list[nn.Module]]:
    """`scorer.score` of a fixed set, keeping every seed's classifier (tested on the real validation images)."""
    scores = [scorer.score(fixed(images, labels), seeds=[seed], desc=desc, keep_first=True) for seed in seeds]
    result = scores[0].to_dict()
    runs = [run for score in scores for run in score.runs]
    result.update(mean=float(np.mean(runs)), std=float(np.std(runs)), runs=runs, seeds=seeds,
                  train_s=[s for score in scores for s in score.train_s],
                  test_s=[s for score in scores for s in score.test_s],
                  wall_s=sum(score.wall_s for score in scores))
    return result, [score.first_model for score in scores]


def accuracy_on(scorer: Scorer, models: list[nn.Module], images: np.ndarray) -> dict[str, Any]:
    """Accuracy of each classifier on `images` carrying the validation labels (mean and population std)."""
    pixels = to_uint8_tensor(images, scorer.device)
    runs = [scorer.trainer.accuracy(model, pixels, scorer.test_labels) for model in models]
    return {"mean": float(np.mean(runs)), "std": float(np.std(runs)), "runs": runs}


def draw_grid(path: Path, sets: dict[str, np.ndarray], labels: np.ndarray, zoom: int = 2) -> None:
    """One row per image set under a line naming it, one column per class (the set's first image of it)."""
    columns = [int(np.flatnonzero(labels == label)[0]) for label in np.unique(labels)]
    side = next(iter(sets.values())).shape[1] * zoom
    header, gap = 14, 4
    sheet = Image.new("RGB", (len(columns) * (side + gap), len(sets) * (header + side + gap)), "white")
    pen = ImageDraw.Draw(sheet)
    for y, (name, images) in enumerate(sets.items()):
        top = y * (header + side + gap)
        pen.text((2, top + 1), name, fill="black")
        for x, index in enumerate(columns):
            tile = Image.fromarray(images[index]).resize((side, side), Image.NEAREST)
            sheet.paste(tile, (x * (side + gap), top + header))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    print(json.dumps({"grid": str(path), "rows": list(sets)}), flush=True)


def grid_sets(specs: list[str], dataset: SceneDataset, resolution: int, labels: np.ndarray) -> dict[str, np.ndarray]:
    """`--grid_set LABEL=DIR` rows: each set's first image of every class, placed where `draw_grid` reads
    that class's first image in `labels`."""
    rows = {}
    for spec in specs:
        label, _, folder = spec.partition("=")
        image_set = read_image_set(folder, dataset.classes, resolution=resolution)
        row = np.zeros((len(labels), resolution, resolution, 3), dtype=np.uint8)
        for cls in np.unique(labels):
            row[np.flatnonzero(labels == cls)[0]] = image_set.images[np.flatnonzero(image_set.labels == cls)[0]]
        rows[label] = row
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generator", nargs="+", help="generator folder(s) (their `vae/` is used)")
    parser.add_argument("--dataset", default="eurosat")
    parser.add_argument("--data_root", default=os.environ.get("RSDISTILL_DATA"))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--variant", action="append", default=[], help="refine settings, e.g. iterations=150")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--train_vae", action="store_true", help="train the generator folder's VAE first")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="scratch-cpu")
    parser.add_argument("--preset_setting", action="append", default=[],
                        help="preset fields for --train_vae, e.g. vae_steps=1600,autoencoder=adversarial")
    parser.add_argument("--mixed_precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--vae_seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--grid", type=Path, help="PNG: one real image per class above each VAE's round trip")
    parser.add_argument("--grid_only", action="store_true", help="draw --grid and score nothing")
    parser.add_argument("--grid_set", action="append", default=[], metavar="LABEL=DIR",
                        help="also draw a set's first image of each class in --grid (e.g. a GAN's set from "
                             "val_gan.py), under LABEL; repeatable")
    args = parser.parse_args()
    if args.train_vae and len(args.generator) != 1:
        parser.error("--train_vae trains one generator folder")
    if args.grid_only and not args.grid:
        parser.error("--grid_only needs --grid")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset, matched, scorer = validation_split(args.dataset, args.data_root, args.resolution, args.val_fraction)
    if args.train_vae:
        preset = parse_preset(args.preset, args.preset_setting)
        train_into(Path(args.generator[0]), matched.images, preset, args.vae_seed, args.mixed_precision)
    images, labels = random_draw(matched, args.ipc)(0)
    vaes = {folder: AutoencoderKL.from_pretrained(Path(folder) / "vae").eval() for folder in args.generator}
    decoded = {folder: round_trip(vae, images) for folder, vae in vaes.items()}
    if args.grid:
        rows = {"real": images} | {Path(f).name: d for f, d in decoded.items()}
        draw_grid(args.grid, rows | grid_sets(args.grid_set, dataset, args.resolution, labels), labels)
    if args.grid_only:
        return
    held = scorer.test_images.permute(0, 2, 3, 1).cpu().numpy()
    rows: list[dict[str, Any]] = []

    def report(name: str, result: dict[str, Any], **extra: Any) -> None:
        rows.append({"name": name, "val_accuracy": result, **extra})
        print(json.dumps(rows[-1], default=str), flush=True)

    real, real_models = score_models(scorer, images, labels, args.seeds, "random real coreset")
    report("random real coreset", real)
    for folder, vae in vaes.items():
        held_decoded = round_trip(vae, held)
        result, models = score_models(scorer, decoded[folder], labels, args.seeds, "round trip")
        error = float(np.abs(decoded[folder].astype(np.int16) - images.astype(np.int16)).mean())
        report("its VAE round trip", result, generator=folder, mean_abs_pixel_error=round(error, 3),
               val_accuracy_round_trip=accuracy_on(scorer, models, held_decoded),
               real_set_on_round_trip=accuracy_on(scorer, real_models, held_decoded))
        for text in args.variant:
            start = time.perf_counter()
            refined, refine = refine_images(decoded[folder], labels, matched, len(dataset.classes),
                                            parse_variant(text), seed=0, progress=True)
            refine_s = time.perf_counter() - start
            result, _ = score_models(scorer, refined, labels, args.seeds, "refined")
            report(f"its VAE round trip, refined ({text})", result, generator=folder, refine=refine,
                   refine_s=refine_s)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "torch_threads": torch.get_num_threads(),
                                         "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
