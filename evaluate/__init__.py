"""Stage 6: score sets by downstream training (docs/benchmark.md by default), with baselines, metrics, one report.

Entry points: :func:`evaluate_sets` (what ``rsdistill evaluate`` runs), :class:`Scorer` / :func:`score_arrays`
(score arrays by the protocol), :func:`full_reference` (the cached full-data model: upper reference, soft-label
teacher and exported feature extractor).
"""

from rsdistill.evaluate.context import load_set
from rsdistill.evaluate.evaluation import evaluate_sets
from rsdistill.evaluate.protocol import Protocol, Trainer, steps_for_passes
from rsdistill.evaluate.scoring import Score, Scorer, fixed, random_draw, score_arrays, train_stats
from rsdistill.evaluate.teacher import (
    FullReference,
    export_feature_extractor,
    extract_features,
    full_passes,
    full_reference,
    load_feature_extractor,
)

__all__ = [
    "FullReference",
    "Protocol",
    "Score",
    "Scorer",
    "Trainer",
    "evaluate_sets",
    "export_feature_extractor",
    "extract_features",
    "fixed",
    "full_passes",
    "full_reference",
    "load_feature_extractor",
    "load_set",
    "random_draw",
    "score_arrays",
    "steps_for_passes",
    "train_stats",
]
