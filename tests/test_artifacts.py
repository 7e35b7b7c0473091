from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rsdistill.core.artifacts import Stage, add_files, foreign_content, require_done
from rsdistill.core.errors import RSDistillError


def test_stage_is_done_only_when_manifest_matches(tmp_path: Path) -> None:
    stage = Stage(tmp_path, "prototypes", config={"ipc": 10}, inputs={"data": "abc"})
    assert not stage.done
    with stage.build({"count": 3}) as work:
        (work / "prototypes.json").write_text("{}")
        assert not stage.path.exists()  # nothing visible until complete
    manifest = json.loads((stage.path / "manifest.json").read_text())
    assert stage.done and manifest["count"] == 3 and manifest["stage"] == "prototypes"
    assert manifest["wall_time_s"] >= 0 and manifest["peak_memory_mb"] > 0 and "torch" in manifest["versions"]
    assert manifest["torch_threads"] == torch.get_num_threads()
    assert not Stage(tmp_path, "prototypes", config={"ipc": 50}, inputs={"data": "abc"}).done
    assert not Stage(tmp_path, "prototypes", config={"ipc": 10}, inputs={"data": "xyz"}).done


def test_interrupted_stage_keeps_its_partial_work(tmp_path: Path) -> None:
    stage = Stage(tmp_path, "synthesis", config={"ipc": 1}, inputs={})
    with pytest.raises(KeyboardInterrupt), stage.build() as work:
        (work / "image_0.png").write_text("done")
        raise KeyboardInterrupt
    assert not stage.done and (stage.partial_path / "image_0.png").is_file()
    with stage.build() as work:
        assert (work / "image_0.png").read_text() == "done"  # resumed from what was finished
    assert stage.done and (stage.path / "image_0.png").is_file()


def test_partial_work_of_other_settings_is_set_aside(tmp_path: Path) -> None:
    old = Stage(tmp_path, "synthesis", config={"ipc": 1}, inputs={})
    with pytest.raises(RuntimeError), old.build() as work:
        (work / "a.png").write_text("old")
        raise RuntimeError
    new = Stage(tmp_path, "synthesis", config={"ipc": 2}, inputs={})
    with new.build() as work:
        assert not (work / "a.png").exists()
        assert list(tmp_path.glob(".synthesis.stale-*/a.png"))  # set aside, never mixed in
    # Issue 25: once the stage completes, the set-aside folder is an orphan nothing resumes from, and goes.
    assert not list(tmp_path.glob(".synthesis.stale-*")) and new.done


def test_require_done_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(RSDistillError, match=str(tmp_path)):
        require_done(tmp_path, "prototypes")


def test_a_file_added_to_a_finished_stage_by_a_later_command_keeps_it_ours(tmp_path: Path) -> None:
    stage = Stage(tmp_path, "report", {"runs": 3}, {"set": "abc"})
    with stage.build() as work:
        (work / "report.json").write_text("{}")
    (stage.path / "privacy.json").write_text("{}")  # what rsdistill export writes into a run's report
    assert "privacy.json" in (foreign_content(stage.path) or "")
    add_files(stage.path, "privacy.json")
    assert foreign_content(stage.path) is None and stage.done
    add_files(tmp_path, "x")  # no manifest: left alone
    assert not (tmp_path / "manifest.json").exists()
