"""The thresholds a set's privacy verdict is judged by (a module of its own: the command line reads its
defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass

from rsdistill.core.errors import RSDistillError


@dataclass(frozen=True)
class Thresholds:
    """What a set must meet to be fit to share.

    Attributes:
        near_copy_percentile: no set image may lie nearer a train image than this percentile of the real test
            images' distances to their nearest train image
        max_attack_auc: highest loss-threshold membership-attack AUC (train vs test) on a classifier trained on
            the set
    """

    near_copy_percentile: float = 1.0
    max_attack_auc: float = 0.55

    def __post_init__(self) -> None:
        if not 0 < self.near_copy_percentile < 100:
            raise RSDistillError(f"The near-copy percentile must lie between 0 and 100, not "
                                 f"{self.near_copy_percentile} (--near-copy-percentile; default 1).")
        if not 0.5 <= self.max_attack_auc <= 1:
            raise RSDistillError(f"The highest attack AUC allowed must lie between 0.5 (chance) and 1, not "
                                 f"{self.max_attack_auc} (--max-attack-auc; default 0.55).")
