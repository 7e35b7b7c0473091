"""Do attribute captions carry information? Per class, the share of captions that mention water and
vegetation (and other measured attributes), counted in the measured phrases only (the opening class phrase
is left out, so a class named "...Vegetation" does not count).

    RSDISTILL_DATA=/work/shared/datasets python scripts/caption_stats.py --dataset eurosat
    python scripts/caption_stats.py --dataset eurosat --captions runs/x/captions   # read a captions stage

Without --captions the attribute captions of the whole train split are computed here (timed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm.auto import tqdm

from rsdistill.captioning import AttributeCaptioner, load_captions
from rsdistill.data.sources import load_dataset

MENTIONS = {
    "water": ("water",),
    "large water body": ("a large body of water",),
    "vegetation": ("vegetation",),
    "dense vegetation": ("dense vegetation",),
    "grid": ("grid pattern",),
    "straight lines": ("straight linear features",),
    "built-up": ("built-up",),
}


def measured_part(caption: str, class_phrase: bool) -> str:
    """The caption without its opening class phrase."""
    return caption.split(",", 1)[1] if class_phrase and "," in caption else caption


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="eurosat")
    parser.add_argument("--data-root", dest="data_root")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--captions", help="a captions stage folder to read instead of captioning here")
    args = parser.parse_args()

    dataset = load_dataset(args.dataset, root=args.data_root)
    start = time.perf_counter()
    array = dataset.images("train", args.resolution)
    decode_s = time.perf_counter() - start
    if args.captions:
        stored = load_captions(args.captions)
        captions = [stored[key] for key in array.keys]
        print(f"read {len(captions)} captions from {args.captions}")
    else:
        captioner = AttributeCaptioner(dataset.classes)
        start = time.perf_counter()
        captions = []
        for first in tqdm(range(0, len(array), captioner.batch_size), desc="captioning", unit="batch"):
            batch = slice(first, first + captioner.batch_size)
            captions += captioner.caption(np.asarray(array.images[batch]), array.labels[batch])
        seconds = time.perf_counter() - start
        print(
            f"attribute captions for {len(captions)} {dataset.name} train images at {args.resolution}px: "
            f"{seconds:.1f}s ({len(captions) / seconds:.0f} images/s; images read in {decode_s:.1f}s)"
        )
    measured = [measured_part(c, class_phrase=True).lower() for c in captions]
    print(f"distinct captions: {len(set(captions))} of {len(captions)}\n")

    width = max(len(name) for name in dataset.classes)
    print(f"{'class':<{width}}  {'n':>5}  " + "  ".join(f"{name:>16}" for name in MENTIONS))
    for label, name in enumerate(dataset.classes):
        rows = [measured[i] for i in np.flatnonzero(array.labels == label)]
        shares = [np.mean([any(w in text for w in words) for text in rows]) for words in MENTIONS.values()]
        print(f"{name:<{width}}  {len(rows):>5}  " + "  ".join(f"{share:>16.2f}" for share in shares))


if __name__ == "__main__":
    main()
