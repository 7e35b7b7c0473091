"""Runs `rsdistill` command lines one after another in one process; tests/test_distributed.py starts it twice
with torchrun, so each command runs as a user's ``torchrun --nproc_per_node 2 -m rsdistill ...`` would, while
torch and diffusers are imported once per process for all of them.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py COMMANDS``,
where COMMANDS is a JSON file holding a list of argument lists. A list whose first item is ``inception`` runs
`inception_inputs` instead of a command line (what `rsdistill evaluate` measures fid and kid on).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from rsdistill.cli.main import main
from rsdistill.core.distributed import processes
from rsdistill.data.imageset import read_image_set
from rsdistill.data.sources import load_dataset
from rsdistill.evaluate.metrics import inception_features, split_features

# Inception batches small enough that the tiny splits of the tests are dealt to both processes.
INCEPTION_BATCH = 4


def inception_inputs(spec: str, set_dir: str, resolution: str, out: str) -> int:
    """The Inception features of the dataset's train split (twice: computed, then read from the cache) and of a
    set, shared by the processes; the main process saves them in `out` (.npz)."""
    procs = processes("cpu")
    dataset = load_dataset(spec)
    real = [
        split_features(dataset, "train", int(resolution), procs=procs, batch_size=INCEPTION_BATCH) for _ in range(2)
    ]
    images = read_image_set(set_dir, dataset.classes, resolution=int(resolution)).images
    fake = inception_features(images, INCEPTION_BATCH, procs=procs)
    if procs.is_main:
        np.savez(out, real=real[0], real_cached=real[1], fake=fake)
    return 0


def run(commands: Path) -> int:
    for argv in json.loads(commands.read_text()):
        code = inception_inputs(*argv[1:]) if argv[0] == "inception" else main(argv)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
