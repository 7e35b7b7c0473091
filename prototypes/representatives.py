"""Which real member represents a cluster: a named rule scoring every member, highest score wins."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rsdistill.core.errors import RSDistillError
from rsdistill.prototypes.kmeans import Clustering

RULES = ("dpd-margin", "medoid")


def member_scores(clustering: Clustering, rule: str, alpha: float = 1.0) -> np.ndarray:
    """Score of every point under `rule` (higher is better), float64 (n,).

    - ``dpd-margin`` (DPD): distance to the nearest other centroid of the class minus `alpha` times the
      distance to its own centroid. With a single cluster there is no other centroid and the first term is 0,
      so the rule picks the medoid.
    - ``medoid``: minus the distance to its own centroid.
    """
    n, k = clustering.distances.shape
    own = clustering.distances[np.arange(n), clustering.assignment]
    if rule == "medoid":
        return -own
    if rule == "dpd-margin":
        if k == 1:
            return -alpha * own
        others = clustering.distances.copy()
        others[np.arange(n), clustering.assignment] = np.inf
        return others.min(axis=1) - alpha * own
    raise RSDistillError(f"Unknown representative rule {rule!r} (prototypes.rule); use one of {', '.join(RULES)}.")


def choose_representatives(
    clustering: Clustering, keys: Sequence[str], rule: str, alpha: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Index of each cluster's representative (ties: smallest key) and all members' scores.

    Returns:
        (representatives int64 (k,), scores float64 (n,)).
    """
    scores = member_scores(clustering, rule, alpha)
    k = len(clustering.centroids)
    chosen = np.empty(k, dtype=np.int64)
    for j in range(k):
        members = np.flatnonzero(clustering.assignment == j)
        chosen[j] = min(members, key=lambda i: (-scores[i], keys[i]))
    return chosen, scores
