"""How a set lies among the real train images of each class, in a generator's VAE latent space.

For every class: `spread` is the mean distance between two members of the set; `coverage` the mean distance
from a real train image (a fixed sample of `--probes` per class, never in the random set) to its nearest
member (lower: the set leaves less of the class uncovered); `fidelity` the mean distance from a member to its
nearest of those real images (lower: the members lie nearer real ones). Each figure is averaged over classes
and printed for a random real set of `--ipc` images per class and for every set given, as JSON.

    python scripts/set_coverage.py GENERATOR --dataset eurosat --ipc 50 RUN/synthesis/set RUN/refine/set
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np
import torch

from rsdistill.data.imageset import read_image_set
from rsdistill.data.sources import load_dataset
from rsdistill.generator.bundle import load_bundle
from rsdistill.generator.finetune_data import encode_latents


def measure(
    probes: list[torch.Tensor], images: np.ndarray, labels: np.ndarray, encode: Callable[[np.ndarray], torch.Tensor]
) -> dict[str, float]:
    """Spread, coverage and fidelity of one set (images, labels), averaged over classes."""
    spread, coverage, fidelity = [], [], []
    for label, real in enumerate(probes):
        members = encode(images[labels == label])
        pairwise = torch.cdist(members, members)
        spread.append(float(pairwise.sum()) / max(1, len(members) * (len(members) - 1)))
        cross = torch.cdist(real, members)
        coverage.append(float(cross.min(dim=1).values.mean()))
        fidelity.append(float(cross.min(dim=0).values.mean()))
    return {name: round(float(np.mean(values)), 2)
            for name, values in (("spread", spread), ("coverage", coverage), ("fidelity", fidelity))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generator", help="a generator bundle folder (its VAE encodes every image)")
    parser.add_argument("sets", nargs="*", help="image set folders to measure")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--ipc", type=int, required=True, help="images per class of the random real set")
    parser.add_argument("--probes", type=int, default=400, help="real train images per class to measure against")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_intermixed_args()

    dataset = load_dataset(args.dataset)
    train = dataset.images("train", args.resolution)
    labels = np.asarray(train.labels)
    bundle = load_bundle(args.generator)

    def encode(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(encode_latents(bundle, np.asarray(images), progress=False)).flatten(1)

    rng = np.random.default_rng(args.seed)
    real, probes = [], []
    for label in range(len(dataset.classes)):
        order = rng.permutation(np.flatnonzero(labels == label))
        real.append(order[: args.ipc])
        probes.append(encode(train.images[np.sort(order[args.ipc : args.ipc + args.probes])]))
    chosen = np.sort(np.concatenate(real))
    report = {"random real": measure(probes, train.images[chosen], labels[chosen], encode)}
    for folder in args.sets:
        image_set = read_image_set(folder, dataset.classes, args.resolution)
        report[folder] = measure(probes, image_set.images, image_set.labels, encode)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
