"""Fine-tuning checkpoints: `output_dir/checkpoint-<step>/` written by `accelerator.save_state` under a
temporary name and renamed when complete, at most `checkpoints_total_limit` kept, and resumed only by a run
with the same settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.errors import RSDistillError

STATE_FILE = "rsdistill_state.json"
PREFIX = "checkpoint-"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of `output_dir`, oldest first."""
    found = []
    for path in Path(output_dir).glob(f"{PREFIX}*"):
        step = path.name[len(PREFIX):]
        if path.is_dir() and step.isdigit() and (path / STATE_FILE).is_file():
            found.append((int(step), path))
    return sorted(found)


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, step: int, settings: dict[str, Any], total_limit: int | None
) -> Path:
    """Saves the training state at `step`, dropping the oldest checkpoints beyond `total_limit`."""
    final = output_dir / f"{PREFIX}{step}"
    if accelerator.is_main_process and total_limit is not None:
        existing = [path for number, path in list_checkpoints(output_dir) if number != step]
        for _, path in zip(range(len(existing) - total_limit + 1), existing, strict=False):
            shutil.rmtree(path, ignore_errors=True)
    partial = output_dir / f".{PREFIX}{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        write_text_atomic(partial / STATE_FILE, json.dumps({"step": step, "settings": settings}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    accelerator.wait_for_everyone()
    return final


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`name: saved -> current` for every setting that differs."""
    names = sorted(set(saved) | set(current))
    return [f"{name}: {saved.get(name)!r} -> {current.get(name)!r}" for name in names
            if saved.get(name) != current.get(name)]


def find_resume_point(output_dir: Path, resume: str | None, settings: dict[str, Any]) -> tuple[int, Path] | None:
    """The checkpoint to resume from (`latest` or a path), checked against the current settings."""
    if resume is None:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            print(f"note: no checkpoint in {output_dir} yet; starting from step 0.")
            return None
        step, path = checkpoints[-1]
    else:
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            path = output_dir / resume
        if not (path / STATE_FILE).is_file():
            raise RSDistillError(
                f"--resume_from_checkpoint {resume}: no complete checkpoint there ({STATE_FILE} missing). "
                f"Use `latest` or one of {[p.name for _, p in list_checkpoints(output_dir)] or 'none yet'}."
            )
        step = json.loads((path / STATE_FILE).read_text())["step"]
    saved = json.loads((path / STATE_FILE).read_text())["settings"]
    changed = differences(saved, settings)
    if changed:
        raise RSDistillError(
            f"Checkpoint {path} was made with other settings, so resuming would mix two runs: "
            f"{'; '.join(changed)}. Run with the original settings, or pick a new --output_dir."
        )
    return step, path
