"""What `rsdistill export` is given: a set folder, or a run folder (its refined set, else its synthesized set).

A set that lies inside a run (``<run>/refine/set``, ``<run>/synthesis/set``) is found to be the run's, so its
config, manifests and report describe it on the card either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsdistill.core.artifacts import read_manifest, shown
from rsdistill.core.config import RunConfig, load_config
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RUN_SPLIT_FILE
from rsdistill.data.imageset import METADATA, read_records

CONFIG_FILE = "config.yaml"
REPORT_FOLDER = "report"
STAGES_FILE = "stages.json"  # what rsdistill run writes: each stage's folder, wall time, peak memory
SET_STAGES = ("refine", "synthesis")  # a run's set: the refined one when there is one
SET_FOLDER = "set"


@dataclass
class ExportSource:
    """The set to export and, when it belongs to a run, that run's folder.

    Attributes:
        set_dir: The set, in the common format (ImageFolder + metadata.jsonl).
        run_dir: The run it belongs to (None for a set on its own).
        stage: The run stage that wrote it (``refine`` or ``synthesis``; None for a set on its own).
    """

    set_dir: Path
    run_dir: Path | None = None
    stage: str | None = None

    @property
    def report_dir(self) -> Path | None:
        """The run's report folder (None when there is no run)."""
        return None if self.run_dir is None else self.run_dir / REPORT_FOLDER

    def config(self) -> RunConfig | None:
        """The run's config (config.yaml), or None."""
        if self.run_dir is None or not (self.run_dir / CONFIG_FILE).is_file():
            return None
        return load_config(self.run_dir / CONFIG_FILE)

    def manifest(self, stage: str | None = None) -> dict[str, Any] | None:
        """The manifest of a stage of the run (default: the stage that wrote the set), or None."""
        stage = stage or self.stage
        if self.run_dir is None or stage is None:
            return None
        return read_manifest(self.run_dir / stage)

    def report(self) -> dict[str, Any] | None:
        """The run's evaluation report (report.json), or None."""
        path = None if self.report_dir is None else self.report_dir / "report.json"
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def generator_dir(self) -> Path | None:
        """The run's fine-tuned generator (from stages.json), where it is still there."""
        path = None if self.run_dir is None else self.run_dir / STAGES_FILE
        if path is None or not path.is_file():
            return None
        try:
            folder = json.loads(path.read_text()).get("stages", {}).get("generator", {}).get("folder")
        except json.JSONDecodeError:
            return None
        return Path(folder) if folder and Path(folder).is_dir() else None

    def split_file(self) -> str | None:
        """The run's generated split file, where it has one."""
        path = None if self.run_dir is None else self.run_dir / RUN_SPLIT_FILE
        return str(path) if path is not None and path.is_file() else None


def _owning_run(set_dir: Path) -> ExportSource:
    stage_dir = set_dir.parent
    run_dir = stage_dir.parent
    if set_dir.name == SET_FOLDER and stage_dir.name in SET_STAGES and (run_dir / CONFIG_FILE).is_file():
        return ExportSource(set_dir, run_dir, stage_dir.name)
    return ExportSource(set_dir)


def resolve_source(path: str | Path) -> ExportSource:
    """The set `path` names: a set folder, a run folder or a run's stage folder.

    Raises:
        RSDistillError: When `path` does not exist, holds no set, or its set lists images that are missing.
    """
    path = Path(path)
    if not path.is_dir():
        raise RSDistillError(f"{path} does not exist or is not a folder. Give a set folder (with {METADATA}) or a "
                             "run folder (rsdistill run's --run_dir).")
    if (path / METADATA).is_file():
        source = _owning_run(path)
    elif (path / SET_FOLDER / METADATA).is_file():
        source = _owning_run(path / SET_FOLDER)
    else:
        found = [path / stage / SET_FOLDER for stage in SET_STAGES if (path / stage / SET_FOLDER / METADATA).is_file()]
        if not found:
            run = " It looks like a run that has not written its set yet: finish it with rsdistill run." if (
                path / CONFIG_FILE).is_file() else ""
            raise RSDistillError(
                f"{path} is not an image set (no {METADATA}) and not a run folder (no refine/set or synthesis/set)."
                f"{run} Give a set folder (<dir>/<Class>/<image> plus {METADATA}, as rsdistill generate, refine "
                "and coreset write) or a run folder."
            )
        source = ExportSource(found[0], path, found[0].parent.name)
    check_images(source.set_dir)
    return source


def check_images(set_dir: Path) -> list[dict[str, Any]]:
    """The set's metadata lines, once every image they list is there.

    Raises:
        RSDistillError: Naming the missing images and what to do.
    """
    records = read_records(set_dir)
    if not records:
        raise RSDistillError(f"The set {set_dir} is empty ({METADATA} lists no images); there is nothing to export.")
    missing = [r["file_name"] for r in records if not (set_dir / r["file_name"]).is_file()]
    if missing:
        raise RSDistillError(
            f"The set {set_dir} lists {len(missing)} image(s) that are missing ({shown(missing)}). Restore them, "
            f"or make the set again (rsdistill run resumes; rsdistill generate / refine) before exporting it."
        )
    return records
