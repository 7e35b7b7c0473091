"""Run directories: one folder per stage, built under a temporary name, `manifest.json` written last.

A stage is done exactly when its folder holds a manifest whose fingerprint (stage name, config and input
hashes) matches the one asked for. A stage interrupted half way keeps its partial folder, so a resumable
stage (generation, fine-tuning) picks up what it had finished; a partial folder made for another
fingerprint is set aside, never silently mixed in.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from rsdistill.core.atomic import temporary_sibling, write_text_atomic
from rsdistill.core.errors import RSDistillError

MANIFEST = "manifest.json"
TRACKED_PACKAGES = ("rsdistill", "torch", "diffusers", "transformers", "accelerate", "faiss-cpu", "numpy")


def fingerprint(stage: str, config: Any, inputs: dict[str, str]) -> str:
    """Hash of what determines a stage's output."""
    text = json.dumps({"stage": stage, "config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


class PeakMemory:
    """Samples this process's resident memory in a thread; `peak_mb` is the highest value seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._process = psutil.Process()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak_bytes = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


@dataclass
class Stage:
    """One stage's folder in a run directory.

    Usage::

        stage = Stage(run_dir, "prototypes", config=asdict(cfg), inputs={"data": dataset.fingerprint})
        if not stage.done:
            with stage.build() as work:   # work: the partial folder
                ...write files into work...
        result = stage.path / "prototypes.json"
    """

    run_dir: Path
    name: str
    config: Any
    inputs: dict[str, str]

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    @property
    def path(self) -> Path:
        return self.run_dir / self.name

    @property
    def partial_path(self) -> Path:
        return self.run_dir / f".{self.name}.partial"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.name, self.config, self.inputs)

    @property
    def manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.path)

    @property
    def done(self) -> bool:
        manifest = self.manifest
        return manifest is not None and manifest.get("fingerprint") == self.fingerprint

    def _prepare_partial(self) -> Path:
        marker = self.partial_path / ".fingerprint"
        if self.partial_path.exists() and (not marker.is_file() or marker.read_text() != self.fingerprint):
            stale = self.run_dir / f".{self.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
            self.partial_path.rename(stale)
            print(f"note: a partial {self.name} stage for other settings was moved aside to {stale}")
        self.partial_path.mkdir(parents=True, exist_ok=True)
        marker.write_text(self.fingerprint)
        return self.partial_path

    @contextmanager
    def build(self, extra: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yields the partial folder; on success moves it into place and writes the manifest last.

        Args:
            extra: Figures to record in the manifest (counts, scores...). The dict may be filled in by the
                caller inside the `with` block.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        work = self._prepare_partial()
        start = time.perf_counter()
        with PeakMemory() as memory:
            yield work
        wall = time.perf_counter() - start
        (work / ".fingerprint").unlink(missing_ok=True)
        if self.path.exists():
            old = temporary_sibling(self.path, ".old")
            self.path.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        work.rename(self.path)
        manifest = {
            "stage": self.name,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "inputs": self.inputs,
            "versions": package_versions(),
            "wall_time_s": round(wall, 3),
            "peak_memory_mb": round(memory.peak_mb, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(extra or {}),
        }
        write_text_atomic(self.path / MANIFEST, json.dumps(manifest, indent=2, default=str))


def require_done(folder: str | Path, stage: str) -> dict[str, Any]:
    """The manifest of a finished stage folder given by the user, or a clear error."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise RSDistillError(
            f"{folder} is not a finished {stage} stage (no readable {MANIFEST}). Run the {stage} stage first."
        )
    if manifest.get("stage") != stage:
        raise RSDistillError(f"{folder} holds a {manifest.get('stage')!r} stage, not {stage!r}.")
    return manifest
