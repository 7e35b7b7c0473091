"""DM (Zhao & Bilen, WACV 2023) from real images: a random real coreset refined by mean matching.

DM initialises the synthetic set with real images and matches, class by class, the mean embeddings of real and
synthetic images under a freshly drawn random ConvNet every iteration, with the same augmentation on both sides.
rsdistill's refinement stage is that matching (``refine.objective: mean``); this peer runs it as configured, from
a random real coreset instead of generated images.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rsdistill.core.config import RefineConfig
from rsdistill.data.context import RunContext
from rsdistill.peers.common import refined_real_coreset

METHOD = "dm"


def write(context: RunContext, config: RefineConfig, out: str | Path, ipc: int) -> Path:
    """DM's set of `ipc` images per class at `out/set` (`config` as configured, its objective forced to mean)."""
    return refined_real_coreset(context, replace(config, objective="mean"), out, ipc, METHOD)
