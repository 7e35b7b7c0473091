"""The benchmark script's tables: figures are copied as measured (percent), never rescaled."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.script_helpers import load_script


def test_table_shows_percent_accuracies_and_the_full_row() -> None:
    benchmark = load_script("benchmark")
    full = {"accuracy": 93.06}
    results = {
        "eurosat/10/random": {"accuracy_mean": 60.49, "accuracy_std": 0.78, "ratio_to_full": 0.65,
                              "storage_ratio": None, "full": full},
        "eurosat/1/herding": {"accuracy_mean": 28.5, "accuracy_std": 0.5, "ratio_to_full": None,
                              "storage_ratio": 1.2e-4, "full": full},
    }
    lines = benchmark.table(results).splitlines()
    assert lines[2] == "| eurosat | 1 | herding | 28.50 ± 0.50 | – | 64.56 | – | 1.20e-04 |"
    assert lines[3] == "| eurosat | 10 | random | 60.49 ± 0.78 | – | 32.57 | 0.650 | – |"
    assert lines[4] == "| eurosat | all | full | 93.06 | – | – | 1.000 | 1 |"


def test_accuracy_of_picks_the_indexed_row_of_a_kind() -> None:
    benchmark = load_script("benchmark")
    report = {"rows": [
        {"kind": "set", "accuracy": {"mean": 50.0, "std": 1.0, "runs": [49, 51]}},
        {"kind": "baseline", "accuracy": {"mean": 40.0, "std": 2.0, "runs": [38, 42]}},
        {"kind": "set", "accuracy": {"mean": 70.0, "std": 0.0, "runs": [70, 70]}, "n_images": 100},
    ]}
    assert benchmark.accuracy_of(report, "set", 1)["accuracy_mean"] == 70.0
    assert benchmark.accuracy_of(report, "set", 1)["n_images"] == 100
    assert benchmark.accuracy_of(report, "baseline")["accuracy_std"] == 2.0


def test_table_marks_items_scored_with_an_earlier_config() -> None:
    benchmark = load_script("benchmark")
    current = benchmark.config_tag("ucmerced", 10, [])
    row = {"accuracy_mean": 50.0, "accuracy_std": 1.0, "ratio_to_full": None, "storage_ratio": None}
    results = {
        "ucmerced/10/distilled": {**row, "config_tag": current},
        "ucmerced/1/distilled": {**row, "config_tag": "0000000000"},
        "ucmerced/10/ablation: a label no longer benchmarked": {**row, "config_tag": current},
    }
    lines = benchmark.table(results).splitlines()
    assert "| ucmerced | 10 | distilled | 50.00 ± 1.00 | – | – | – | – |" in lines
    assert "| ucmerced | 1 | distilled † | 50.00 ± 1.00 | – | – | – | – |" in lines
    assert "| ucmerced | 10 | ablation: a label no longer benchmarked † | 50.00 ± 1.00 | – | – | – | – |" in lines
    assert lines[-1] == benchmark.STALE_NOTE
    assert "†" not in benchmark.table({"ucmerced/10/distilled": {**row, "config_tag": current}})


def test_config_tag_follows_the_preset_behind_an_unchanged_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from rsdistill.generator import scratch

    benchmark = load_script("benchmark")
    before = benchmark.config_tag("eurosat", 10, [])
    assert benchmark.config_tag("eurosat", 10, []) == before
    wider = dataclasses.replace(scratch.PRESETS["scratch-cpu"], unet_channels=(96, 192, 192))
    monkeypatch.setitem(scratch.PRESETS, "scratch-cpu", wider)
    assert benchmark.config_tag("eurosat", 10, []) != before


def test_record_drops_ablations_the_benchmark_no_longer_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    benchmark = load_script("benchmark")
    monkeypatch.setattr(benchmark, "RESULTS", tmp_path)
    row = {"accuracy_mean": 50.0, "accuracy_std": 1.0, "ratio_to_full": None, "storage_ratio": None}
    kept = f"eurosat/10/ablation: {next(iter(benchmark.ABLATIONS))}"
    benchmark.record({kept: row, "eurosat/10/ablation: a label no longer benchmarked": row,
                      "eurosat/10/random": row}, "cmd", readme=False)
    results = json.loads((tmp_path / "benchmark.json").read_text())["results"]
    assert sorted(results) == sorted([kept, "eurosat/10/random"])
    assert "no longer benchmarked" not in (tmp_path / "benchmark.md").read_text()


def test_table_gives_dd_ranking_figures_against_random_and_full() -> None:
    benchmark = load_script("benchmark")
    full = {"accuracy": 90.0}
    item = {"accuracy_std": 0.0, "ratio_to_full": None, "storage_ratio": None, "full": full}
    results = {"eurosat/10/random": {**item, "accuracy_mean": 60.0},
               "eurosat/10/herding": {**item, "accuracy_mean": 65.5},
               "eurosat/50/herding": {**item, "accuracy_mean": 80.0}}
    lines = benchmark.table(results).splitlines()
    assert "| eurosat | 10 | herding | 65.50 ± 0.00 | +5.50 | 24.50 | – | – |" in lines
    assert "| eurosat | 10 | random | 60.00 ± 0.00 | – | 30.00 | – | – |" in lines
    assert "| eurosat | 50 | herding | 80.00 ± 0.00 | – | 10.00 | – | – |" in lines  # no random at IPC 50


def test_realism_privacy_table_shows_before_and_after_refinement_and_the_verdict() -> None:
    benchmark = load_script("benchmark")
    privacy = {"safe": False, "reasons": ["..."], "near_copies_failing": 2, "images": 100,
               "near_copy_threshold": 0.05, "set_distance_min": 0.01, "set_model_auc": 0.512,
               "coreset_model_auc": 0.498, "generator_auc": 0.55, "generator_tpr_at_1pct_fpr": 0.02}
    results = {
        "eurosat/10/distilled": {
            "accuracy_mean": 68.1, "accuracy_std": 0.3,
            "realism": {"before_refinement": {"fid": 120.04, "kid": {"mean": 0.1, "std": 0.0}},
                        "after_refinement": {"fid": 140.55, "kid": {"mean": 0.12345, "std": 0.0}}},
            "privacy": privacy,
        },
        "eurosat/10/ablation: no refinement": {
            "accuracy_mean": 55.0, "accuracy_std": 0.7,
            "realism": {"no_refinement": {"fid": 120.0, "kid": {"mean": 0.1, "std": 0.0}}}, "privacy": None,
        },
        "eurosat/10/herding": {"accuracy_mean": 65.0, "accuracy_std": 0.5},
    }
    lines = benchmark.realism_privacy_table(results).splitlines()
    assert len(lines) == 4  # header, rule, the two items that measured realism; herding has no row
    assert "| eurosat | 10 | ablation: no refinement | 55.00 | 120.0 | 0.1000 | – | – | – | – |" in lines
    assert ("| eurosat | 10 | distilled | 68.10 | 120.0 → 140.6 | 0.1000 → 0.1235 | 2 / 100 | 0.512 / 0.498 "
            "| 0.550 (0.020) | no |") in lines


def test_gan_settings_leave_a_diffusion_configs_tag_alone() -> None:
    benchmark = load_script("benchmark")
    tag = benchmark.config_tag("eurosat", 10, [])
    assert benchmark.config_tag("eurosat", 10, ["generator.gan_width=64"]) == tag
    assert benchmark.config_tag("eurosat", 10, ["generator.kind=gan"]) != tag
    assert benchmark.config_tag("eurosat", 10, ["refine.iterations=151"]) != tag


def test_a_scored_item_records_its_environment_and_is_read_back_unchanged(tmp_path: Path) -> None:
    benchmark = load_script("benchmark")
    calls = []
    path = tmp_path / "item.json"
    first = benchmark.scored(path, lambda: calls.append(1) or {"accuracy_mean": 50.0})
    assert first["accuracy_mean"] == 50.0 and "torch" in first["environment"]["versions"]
    assert first["environment"]["torch_threads"] >= 1
    assert benchmark.scored(path, lambda: calls.append(1) or {}) == first and calls == [1]  # cached, not re-made
