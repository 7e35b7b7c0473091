"""DD-Ranking's two figures (Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset Distillation", 2025),
computed from scores a report already holds, in accuracy points (docs/benchmark.md, "DD-Ranking figures"):

- improvement over random (IOR): the set's accuracy minus that of a random real subset of the same IPC, scored by
  the same protocol;
- hard-label recovery (HLR): full-data accuracy minus the set's, both with hard labels (how much of the full
  data's accuracy a hard-label set still misses; smaller is better).
"""

from __future__ import annotations

from typing import Any


def improvement_over_random(set_accuracy: float, random_accuracy: float) -> float:
    return set_accuracy - random_accuracy


def hard_label_recovery(full_accuracy: float, set_accuracy: float) -> float:
    return full_accuracy - set_accuracy


def ranking_figures(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """IOR and HLR of every set row of an evaluation report, by set name; None where the report lacks the
    random baseline at the set's IPC, the `full` reference, or hard labels (HLR)."""
    random = {row["ipc"]: row["accuracy"]["mean"] for row in report["rows"] if row["method"] == "random"}
    full = report["full"]["accuracy"] if report.get("full") else None
    hard = report["protocol"].get("labels", "hard") == "hard"
    figures: dict[str, dict[str, float | None]] = {}
    for row in report["rows"]:
        if row["kind"] != "set":
            continue
        accuracy = row["accuracy"]["mean"]
        figures[row["name"]] = {
            "improvement_over_random": (
                improvement_over_random(accuracy, random[row["ipc"]]) if row["ipc"] in random else None
            ),
            "hard_label_recovery": hard_label_recovery(full, accuracy) if full is not None and hard else None,
        }
    return figures
