"""What every peer shares: a random real coreset refined by one matching objective, written as a set."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rsdistill.core.config import PrototypeConfig, RefineConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.imageset import read_image_set, write_image_set
from rsdistill.prototypes.coreset import write_coreset
from rsdistill.synthesis.refine import refine_set

FROM_REAL = "(from real images)"
SET_FOLDER = "set"
PeerWriter = Callable[[RunContext, RefineConfig, "str | Path", int], Path]
PEERS: dict[str, str] = {
    "dm": "rsdistill.peers.dm",
    "m3d": "rsdistill.peers.m3d",
}


def refined_real_coreset(context: RunContext, config: RefineConfig, out: str | Path, ipc: int,
                         method: str) -> Path:
    """A random real coreset of `ipc` images per class, refined with `config`, written to `out/set`.

    Args:
        context: The dataset, seed (of the coreset and of every refinement iteration), resolution and device.
        config: The refinement settings (its `objective` is the peer's matching).
        out: The peer's folder: `coreset/` (the random start), `refine/` (the stage) and `set/`.
        ipc: Images per class.
        method: The peer's name, written as `method` in every metadata line.

    Returns:
        The set folder `out/set`, in the common format, each line with `method`, `from_real_images` true,
        `objective` and the coreset image it started from (`source_key`).
    """
    out = Path(out)
    if ipc < 1:
        raise RSDistillError(f"--ipc must be at least 1, not {ipc}.")
    start = write_coreset(replace(context, overwrite=True), PrototypeConfig(), out / "coreset", "random", ipc,
                          encoder=None)
    refined = refine_set(context, config, out / "refine", start,
                         inputs={"coreset": f"random-ipc{ipc}-seed{context.seed}"})
    classes = context.dataset.classes
    image_set = read_image_set(refined, classes)
    records = [{**record, "method": method, "from_real_images": True, "objective": config.objective}
               for record in image_set.records]
    stems = [Path(record["file_name"]).stem for record in image_set.records]
    set_dir = write_image_set(out / SET_FOLDER, image_set.images, image_set.labels, classes, records, stems)
    (out / "peer.json").write_text(json.dumps({"method": method, "ipc": ipc, "seed": context.seed,
                                               "from_real_images": True, "refine": vars(config)}, indent=2))
    return set_dir


def write_peer(context: RunContext, config: RefineConfig, out: str | Path, method: str, ipc: int) -> Path:
    """Runs the peer `method` (one of :data:`PEERS`) and returns its set folder."""
    if method not in PEERS:
        raise RSDistillError(f"Unknown peer --method {method!r}; use one of {', '.join(PEERS)}.")
    from importlib import import_module

    writer: PeerWriter = import_module(PEERS[method]).write
    return writer(context, config, out, ipc)
