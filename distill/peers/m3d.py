"""M3D (Zhang et al., AAAI 2024) from real images: a random real coreset refined by Gaussian-kernel MMD.

M3D keeps DM's recipe (real initialisation, a fresh random ConvNet and one augmentation per iteration) and
replaces the distance of the class means by the maximum mean discrepancy of the embeddings under a Gaussian
kernel, which aligns every moment of the two distributions (``refine.objective: m3d``, see
`rsdistill.synthesis.objectives`). The paper's default also stores several smaller images per image (IDC's
multi-formation); that changes what IPC means, and this peer stores one image per image.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rsdistill.core.config import RefineConfig
from rsdistill.data.context import RunContext
from rsdistill.peers.common import refined_real_coreset

METHOD = "m3d"


def write(context: RunContext, config: RefineConfig, out: str | Path, ipc: int) -> Path:
    """M3D's set of `ipc` images per class at `out/set` (`config` as configured, its objective forced to m3d)."""
    return refined_real_coreset(context, replace(config, objective="m3d"), out, ipc, METHOD)
