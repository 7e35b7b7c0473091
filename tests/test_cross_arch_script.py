"""The cross-architecture script: one column per network, a clear stop for a set the benchmark has not made."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.script_helpers import load_script


def test_table_has_a_column_per_network_and_a_dash_where_unscored() -> None:
    script = load_script("cross_arch")
    results = {
        "ucmerced/10/herding/convnet3": {"accuracy_mean": 66.11, "accuracy_std": 1.68},
        "ucmerced/10/herding/resnet18": {"accuracy_mean": 50.5, "accuracy_std": 0.25},
        "ucmerced/10/herding/efficientnet-lite0": {"accuracy_mean": 86.19, "accuracy_std": 0.0, "runs": 1},
        "ucmerced/10/dm (from real images)/convnet3": {"accuracy_mean": 71.9, "accuracy_std": 0.51},
    }
    lines = script.table(results, ["convnet3", "resnet18", "efficientnet-lite0"]).splitlines()
    assert lines[0] == "| dataset | IPC | set | convnet3 | resnet18 | efficientnet-lite0 |"
    assert lines[2] == "| ucmerced | 10 | dm (from real images) | 71.90 ± 0.51 | – | – |"
    assert lines[3] == "| ucmerced | 10 | herding | 66.11 ± 1.68 | 50.50 ± 0.25 | 86.19 (1 run) |"


def test_convnet3_column_falls_back_to_the_benchmarks_own_score() -> None:
    script = load_script("cross_arch")
    results = {"eurosat/10/herding/efficientnet-lite0": {"accuracy_mean": 70.0, "accuracy_std": 0.0, "runs": 1},
               "eurosat/10/distilled/convnet3": {"accuracy_mean": 60.0, "accuracy_std": 1.0}}
    benchmark = {"eurosat/10/herding": {"accuracy_mean": 65.07, "accuracy_std": 0.57},
                 "eurosat/10/distilled": {"accuracy_mean": 67.85, "accuracy_std": 0.17}}
    lines = script.table(results, ["convnet3", "efficientnet-lite0"], benchmark).splitlines()
    assert lines[2] == "| eurosat | 10 | distilled | 60.00 ± 1.00 | – |"  # its own score wins
    assert lines[3] == "| eurosat | 10 | herding | 65.07 ± 0.57 ‡ | 70.00 (1 run) |"
    assert "‡" not in script.table(results, ["convnet3", "efficientnet-lite0"])


def test_a_missing_set_names_the_benchmark_command_that_makes_it(tmp_path: Path) -> None:
    script = load_script("cross_arch")
    with pytest.raises(SystemExit, match="--ipcs 10 --methods m3d --no-ablations"):
        script.set_folder(tmp_path, "ucmerced", 10, "m3d")
    folder = tmp_path / "ucmerced" / "ipc10" / "peers" / "m3d" / "set"
    folder.mkdir(parents=True)
    (folder / "metadata.jsonl").write_text("")
    assert script.set_folder(tmp_path, "ucmerced", 10, "m3d") == folder
