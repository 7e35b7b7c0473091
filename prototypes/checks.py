"""Checks on class sizes shared by prototypes and coresets."""

from __future__ import annotations

from rsdistill.core.errors import RSDistillError
from rsdistill.prototypes.kmeans import FAISS_MIN_POINTS_PER_CENTROID


def check_ipc(counts: dict[str, int], ipc: int, setting: str = "--ipc") -> None:
    """Refuses an IPC below 1 or above any class's number of train images, naming the classes."""
    if ipc < 1:
        raise RSDistillError(f"{setting} must be at least 1, not {ipc}.")
    short = {name: count for name, count in counts.items() if count < ipc}
    if short:
        listed = ", ".join(f"{name!r} has {count}" for name, count in short.items())
        raise RSDistillError(
            f"{setting} {ipc} is larger than the number of train images of some classes ({listed}). "
            f"Choose {setting} <= {min(counts.values())} or add images to those classes."
        )


def note_small_classes(counts: dict[str, int], k: int) -> None:
    """Says once which classes have fewer images than faiss usually wants per centroid."""
    small = {name: count for name, count in counts.items() if count < FAISS_MIN_POINTS_PER_CENTROID * k}
    if small:
        listed = ", ".join(f"{name} ({count})" for name, count in list(small.items())[:5])
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        print(
            f"note: faiss k-means with k={k} usually wants {FAISS_MIN_POINTS_PER_CENTROID * k}+ images per "
            f"class; {len(small)} class(es) have fewer: {listed}{more}. Clustering runs on them anyway."
        )
