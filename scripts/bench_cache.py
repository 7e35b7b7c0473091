"""Time the first (decoding) and second (cached) load of a dataset split at one resolution.

    RSDISTILL_DATA=../shared/datasets python scripts/bench_cache.py --dataset eurosat --resolution 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from rsdistill.data.sources import load_dataset


def timed_load(dataset, split: str, resolution: int, cache_dir: str) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    array = dataset.images(split, resolution, cache_dir=cache_dir)
    checksum = np.asarray(array.images, dtype=np.uint64).sum()  # touch every byte, as training would
    return time.perf_counter() - start, checksum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="eurosat")
    parser.add_argument("--data-root")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--split", default="train")
    args = parser.parse_args()
    dataset = load_dataset(args.dataset, root=args.data_root)
    with tempfile.TemporaryDirectory() as cache_dir:
        first, sum_first = timed_load(dataset, args.split, args.resolution, cache_dir)
        second, sum_second = timed_load(dataset, args.split, args.resolution, cache_dir)
    assert sum_first == sum_second, "cached images differ from decoded ones"
    result = {
        "dataset": args.dataset,
        "split": args.split,
        "images": len(dataset.samples(args.split)),
        "resolution": args.resolution,
        "first_load_s": round(first, 3),
        "second_load_s": round(second, 3),
        "speedup": round(first / second, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
