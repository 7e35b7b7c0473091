"""DD-Ranking's figures from a hand-made evaluation report."""

from __future__ import annotations

import pytest

from rsdistill.evaluate.ranking import ranking_figures
from rsdistill.evaluate.report import markdown


def row(kind: str, name: str, method: str, ipc: int, mean: float) -> dict:
    return {"kind": kind, "name": name, "method": method, "ipc": ipc, "accuracy": {"mean": mean, "std": 0.0}}


def report(labels: str = "hard", full: float | None = 88.0) -> dict:
    return {
        "dataset": "toy", "protocol_label": "convnet3", "protocol": {"labels": labels},
        "options": {"runs": 1, "seeds": [0], "train_on": "set", "device": "cpu"},
        "full": None if full is None else {"accuracy": full, "passes": 1, "steps": 1, "n_train": 10,
                                           "protocol_label": "convnet3"},
        "rows": [row("set", "refine", "distilled", 10, 70.0), row("set", "ipc1", "distilled", 1, 30.0),
                 row("baseline", "random-ipc10", "random", 10, 61.5)],
        "wall_s": 1.0, "peak_memory_mb": 1.0,
    }


def test_figures_are_differences_of_the_scores_in_the_report() -> None:
    figures = ranking_figures(report())
    assert figures["refine"]["improvement_over_random"] == pytest.approx(8.5)
    assert figures["refine"]["hard_label_recovery"] == pytest.approx(18.0)
    assert figures["ipc1"]["improvement_over_random"] is None  # no random baseline at IPC 1
    assert set(figures) == {"refine", "ipc1"}


def test_recovery_needs_full_data_and_hard_labels() -> None:
    assert ranking_figures(report(full=None))["refine"]["hard_label_recovery"] is None
    assert ranking_figures(report(labels="soft"))["refine"]["hard_label_recovery"] is None
    assert ranking_figures(report(labels="soft"))["refine"]["improvement_over_random"] == pytest.approx(8.5)


def test_report_table_shows_them() -> None:
    lines = markdown(report()).splitlines()
    assert "| refine | distilled | 10 | 70.00 ± 0.00 | 8.50 | 18.00 | – | – |" in lines
