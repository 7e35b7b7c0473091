"""Training checkpoints, one folder per step: `<folder>/checkpoint-<step>/`, written under a temporary name
(``.checkpoint-<step>.partial``) and renamed when complete, so a kill leaves either a complete checkpoint or a
partial folder that is never read; at most a given number kept, and resumed only by a training with the same
settings.

Fine-tuning writes them with `accelerator.save_state` (`save_checkpoint`, `find_resume_point`). The base stage's
plain training loops (the from-scratch VAE, the latent classifier) write them with `LoopCheckpoints`: the models'
weights as safetensors, the rest of the training state (optimisers, schedules, gradient scalers, random streams,
counters, histories) as plain tensors and numbers read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.errors import RSDistillError

STATE_FILE = "rsdistill_state.json"
PREFIX = "checkpoint-"
CHECKPOINTS_FOLDER = "checkpoints"
LOOP_WEIGHTS_FILE = "weights.safetensors"
LOOP_STATE_FILE = "training_state.pt"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of `output_dir`, oldest first."""
    found = []
    for path in Path(output_dir).glob(f"{PREFIX}*"):
        step = path.name[len(PREFIX) :]
        if path.is_dir() and step.isdigit() and (path / STATE_FILE).is_file():
            found.append((int(step), path))
    return sorted(found)


def commit_checkpoint(
    output_dir: Path,
    step: int,
    settings: dict[str, Any],
    total_limit: int | None,
    write: Callable[[Path], object],
    main: bool = True,
    wait: Callable[[], object] = lambda: None,
) -> Path:
    """Writes the checkpoint of `step` with `write(partial_folder)`, marks it complete and moves it into place,
    then drops the oldest complete checkpoints beyond `total_limit`.

    Args:
        output_dir: Where the checkpoints live.
        step: The number of steps done.
        settings: What the checkpoint may only be resumed with (see `differences`).
        total_limit: Complete checkpoints kept, this one included (None: all).
        write: Writes the training state into the folder it is given (every process calls it).
        main: Whether this process moves folders and writes the marker (the main process of a launch).
        wait: Waits for every process of a launch.

    Returns:
        The checkpoint folder.
    """
    final = output_dir / f"{PREFIX}{step}"
    partial = output_dir / f".{PREFIX}{step}.partial"
    if main and partial.exists():
        shutil.rmtree(partial)
    wait()
    write(partial)
    if main:
        write_text_atomic(partial / STATE_FILE, json.dumps({"step": step, "settings": settings}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        if total_limit is not None:
            older = [path for number, path in list_checkpoints(output_dir) if number != step]
            for path in older[: max(0, len(older) - total_limit + 1)]:
                shutil.rmtree(path, ignore_errors=True)
    wait()
    return final


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, step: int, settings: dict[str, Any], total_limit: int | None
) -> Path:
    """Saves the fine-tuning state at `step` (`accelerator.save_state`), keeping at most `total_limit`."""
    return commit_checkpoint(
        output_dir,
        step,
        settings,
        total_limit,
        lambda partial: accelerator.save_state(str(partial)),
        accelerator.is_main_process,
        accelerator.wait_for_everyone,
    )


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`name: saved -> current` for every setting that differs."""
    names = sorted(set(saved) | set(current))
    return [
        f"{name}: {saved.get(name)!r} -> {current.get(name)!r}"
        for name in names
        if saved.get(name) != current.get(name)
    ]


def refuse_other_settings(path: Path, settings: dict[str, Any], remedy: str) -> None:
    """Refuses to resume from the checkpoint `path` when it was made with other settings.

    Raises:
        RSDistillError: Naming every setting that differs, followed by `remedy`.
    """
    changed = differences(json.loads((path / STATE_FILE).read_text())["settings"], settings)
    if changed:
        raise RSDistillError(
            f"Checkpoint {path} was made with other settings, so resuming would mix two runs: "
            f"{'; '.join(changed)}. {remedy}"
        )


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
    refuse_other_settings(path, settings, "Run with the original settings, or pick a new --output_dir.")
    return step, path


def random_state(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """The random streams a training loop on `device` draws from: torch's global CPU generator, the device's
    global generator (CUDA, MPS) and the loop's own `generator`."""
    state = {"torch": torch.get_rng_state(), "loop": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_random_state(state: Mapping[str, torch.Tensor], generator: torch.Generator, device: torch.device) -> None:
    """Sets the streams `random_state` recorded."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loop"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state["mps"])


Weights = dict[str, dict[str, torch.Tensor]]
"""Named groups of tensors (a model's state dict, a copy of the best weights so far)."""


@dataclass(frozen=True)
class LoopCheckpoints:
    """Checkpoints of a single-process training loop: every `every` steps and at its last step, in `folder`
    (only the latest is kept).

    Each holds `LOOP_WEIGHTS_FILE` (groups of weights, as safetensors) and `LOOP_STATE_FILE` (everything else, as
    plain tensors and numbers). A training loop binds it to what it trains with `bound`; a checkpoint made with
    other settings, or one that cannot be read, is refused with a message instead of being resumed from.

    Attributes:
        folder: Where the checkpoints go.
        every: Steps between checkpoints.
        what: What trains, for messages (``the VAE training``).
        settings: What a checkpoint may only be resumed with (JSON values).
    """

    folder: Path
    every: int
    what: str = "the training"
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise RSDistillError(f"Checkpoints of {self.what} need a positive step interval, not {self.every}.")

    def bound(self, what: str, settings: dict[str, Any]) -> LoopCheckpoints:
        """These checkpoints for the training `what` with `settings` (compared as JSON: tuples become lists)."""
        return replace(self, what=what, settings=json.loads(json.dumps(settings)))

    def due(self, done: int, total: int) -> bool:
        """Whether a checkpoint is written after `done` of `total` steps."""
        return done % self.every == 0 or done == total

    def save(self, done: int, weights: Weights, state: dict[str, Any]) -> Path:
        """Writes the checkpoint of `done` steps and drops the one before it."""

        def write(partial: Path) -> None:
            partial.mkdir(parents=True)
            flat = {
                f"{group}.{name}": tensor.detach().cpu().contiguous()
                for group, tensors in weights.items()
                for name, tensor in tensors.items()
            }
            save_file(flat, partial / LOOP_WEIGHTS_FILE)
            torch.save(state, partial / LOOP_STATE_FILE)

        self.folder.mkdir(parents=True, exist_ok=True)
        return commit_checkpoint(self.folder, done, self.settings, 1, write)

    def resume(self, restore: Callable[[Weights, dict[str, Any]], None]) -> int:
        """Restores the latest checkpoint with `restore(weights, state)`; returns its step (0 when there is none).

        Raises:
            RSDistillError: When the checkpoint was made with other settings, or cannot be read or restored
                (damaged, holding Python objects other than tensors and numbers, or not fitting the models).
        """
        checkpoints = list_checkpoints(self.folder)
        if not checkpoints:
            return 0
        step, path = checkpoints[-1]
        try:
            refuse_other_settings(path, self.settings, f"Delete {self.folder} to start {self.what} over.")
            flat = load_file(path / LOOP_WEIGHTS_FILE)
            state = torch.load(path / LOOP_STATE_FILE, map_location="cpu", weights_only=True)
            weights: Weights = {}
            for key, tensor in flat.items():
                group, name = key.split(".", 1)
                weights.setdefault(group, {})[name] = tensor
            restore(weights, state)
        except RSDistillError:
            raise
        except pickle.UnpicklingError:
            raise RSDistillError(
                self._unreadable(
                    path,
                    "it holds Python objects other than tensors and numbers, "
                    "which are not unpickled (they could run code)",
                )
            ) from None
        except (OSError, EOFError, RuntimeError, SafetensorError, ValueError, KeyError, TypeError) as error:
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            raise RSDistillError(self._unreadable(path, f"it is damaged or does not fit ({reason})")) from None
        print(f"note: resumed {self.what} from {path} (step {step})")
        return step

    def _unreadable(self, path: Path, why: str) -> str:
        return (
            f"The checkpoint {path} of {self.what} cannot be resumed from: {why}. Delete {self.folder} to start "
            f"{self.what} over."
        )

    def remove(self) -> None:
        """Deletes the checkpoints (once what they were for is saved)."""
        shutil.rmtree(self.folder, ignore_errors=True)
