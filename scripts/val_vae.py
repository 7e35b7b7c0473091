"""What the generator's VAE costs a distilled set, on the validation split of `val_refine.py`.

A random real coreset (drawn from the train images kept for matching) is scored as it is, after a round trip
through the VAE (encode, posterior mean, decode) and after that round trip and refinement. The first two bound
what any image the generator decodes can be worth; the third shows how much of the gap refinement closes.

    python scripts/val_vae.py GENERATOR_FOLDER --dataset eurosat --ipc 10 \
        --variant iterations=150 --json vae.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm
from val_refine import parse_variant, validation_split

from rsdistill.evaluate.scoring import fixed, random_draw
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generator", help="a generator folder (its `vae/` is used)")
    parser.add_argument("--dataset", default="eurosat")
    parser.add_argument("--data_root", default=os.environ.get("RSDISTILL_DATA"))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--variant", action="append", default=[], help="refine settings, e.g. iterations=150")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    dataset, matched, scorer = validation_split(args.dataset, args.data_root, args.resolution, args.val_fraction)
    images, labels = random_draw(matched, args.ipc)(0)
    vae = AutoencoderKL.from_pretrained(Path(args.generator) / "vae").eval()
    decoded = round_trip(vae, images)
    rows: list[dict[str, Any]] = []

    def score(name: str, set_images: np.ndarray, **extra: Any) -> None:
        result = scorer.score(fixed(set_images, labels), seeds=args.seeds, desc=name).to_dict()
        rows.append({"name": name, "val_accuracy": result, **extra})
        print(json.dumps(rows[-1], default=str), flush=True)

    score("random real coreset", images)
    error = float(np.abs(decoded.astype(np.int16) - images.astype(np.int16)).mean())
    score("its VAE round trip", decoded, mean_abs_pixel_error=round(error, 3))
    for text in args.variant:
        start = time.perf_counter()
        refined, report = refine_images(decoded, labels, matched, len(dataset.classes), parse_variant(text),
                                        seed=0, progress=True)
        score(f"its VAE round trip, refined ({text})", refined, refine=report, refine_s=time.perf_counter() - start)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "torch_threads": torch.get_num_threads(),
                                         "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
