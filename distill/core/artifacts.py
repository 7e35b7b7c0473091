"""Run directories: one folder per stage, built under a temporary name, `manifest.json` written last.

A stage is done exactly when its folder holds a manifest whose fingerprint (stage name, config and input
hashes) matches the one asked for. A stage interrupted half way keeps its partial folder, so a resumable
stage (generation, fine-tuning) picks up what it had finished; a partial folder made for another
fingerprint is set aside, never silently mixed in.

A stage's folder is replaced only when it is this project's own: its manifest lists every file the stage
wrote, and a folder is replaced only when it holds a manifest of ours and no file outside that list (or
nothing at all). Anything else at that path -- a folder of the user's, a stage folder the user put files
into, a stage written before manifests listed their files -- is never deleted, whatever the settings or
``--overwrite`` say: the stage refuses with a message naming the folder. A finished stage folder of ours made
with other settings is replaced when the stage's `overwrite` says so: ``rsdistill run`` replaces its own
stages; the single-stage commands (``prototypes``, ``caption``, ``generate``, ``refine``) only with
``--overwrite`` (``RunContext.overwrite``).

A stage is built under a lock (``<run_dir>/.<name>.lock``, see :mod:`rsdistill.core.lock`): a second command
that reaches the same stage folder while the first builds it stops with a message instead of writing into the
same partial folder. When a stage completes, what interrupted builds of it left beside it is removed: partial
folders set aside for other settings, half-replaced folders, and, for a stage of a `family` (the pipeline's
shared stages, one folder per fingerprint), the partial folders of the family's other fingerprints that no
running command holds. A full disk while the stage runs becomes a message naming the path, with the finished
part kept in the partial folder for the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from rsdistill.core.atomic import temporary_sibling, write_text_atomic
from rsdistill.core.errors import RSDistillError, nearly_full, out_of_space, out_of_space_message
from rsdistill.core.lock import FolderLock, in_use

MANIFEST = "manifest.json"
TRACKED_PACKAGES = ("rsdistill", "torch", "diffusers", "transformers", "accelerate", "faiss-cpu", "numpy")
FILES_KEY = "files"
SHOWN = 5

def files_under(folder: Path) -> list[str]:
    """Every file (and link) under `folder`, as sorted POSIX paths relative to it; links are not followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        links = [name for name in dirnames if (base / name).is_symlink()]
        found.extend((base / name).relative_to(folder).as_posix() for name in [*filenames, *links])
    return sorted(found)


def shown(names: list[str]) -> str:
    """The first few of `names`, for a message."""
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def foreign_content(folder: Path) -> str | None:
    """Why `folder` is not a stage folder this project wrote, or None when it is one (or holds no file).

    Ours: a readable manifest with a stage name and fingerprint that lists the stage's files, and no other file
    in the folder.
    """
    files = files_under(folder)
    if not files:
        return None
    manifest = read_manifest(folder)
    if not isinstance(manifest, dict) or "stage" not in manifest or "fingerprint" not in manifest:
        return f"holds files rsdistill did not write ({shown(files)}) and no {MANIFEST} of an rsdistill stage"
    listed = manifest.get(FILES_KEY)
    if not isinstance(listed, list):
        return (f"holds a {manifest['stage']!r} stage written before rsdistill listed a stage's files in its "
                f"{MANIFEST}, so files you added cannot be told from the stage's own")
    extra = sorted(set(files) - {str(name) for name in listed} - {MANIFEST})
    if extra:
        return f"holds {len(extra)} file(s) the {manifest['stage']!r} stage did not write ({shown(extra)})"
    return None


def refuse_unless_ours(path: Path, foreign: Callable[[Path], str | None]) -> bool:
    """Refuses to go on when `path` is a file or link, or a folder in which `foreign` finds what rsdistill did not
    write (its reason goes into the message); returns whether a folder of ours is there.

    Raises:
        RSDistillError: Naming the path, why it is kept and what to do.
    """
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise RSDistillError(
            f"{path} exists and is not a folder; rsdistill will not replace it. Move it away or choose another --out."
        )
    if not path.exists():
        return False
    reason = foreign(path)
    if reason is not None:
        raise RSDistillError(
            f"The output folder {path} already exists and {reason}; rsdistill does not delete it, not even with "
            "--overwrite. Choose another --out, or move those files out of it (or delete the folder) yourself and "
            "run again."
        )
    return True


def fingerprint(stage: str, config: Any, inputs: dict[str, str]) -> str:
    """Hash of what determines a stage's output."""
    text = json.dumps({"stage": stage, "config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def torch_threads() -> int:
    """Torch's intra-op thread count: on a CPU, float sums and so trained weights depend on it."""
    import torch

    return torch.get_num_threads()


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

    `overwrite`: whether a finished folder of this stage made with other settings is replaced. A folder that is
    not ours is never replaced; see `check_destination`. `family`: for stages named ``<family>-<fingerprint>``
    (the pipeline's shared stages), the prefix whose other partial folders are orphans once this one completes.

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
    overwrite: bool = True
    family: str | None = None

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    @property
    def path(self) -> Path:
        return self.run_dir / self.name

    @property
    def partial_path(self) -> Path:
        return self.run_dir / f".{self.name}.partial"

    @property
    def lock(self) -> FolderLock:
        """The lock held while the stage is built."""
        return FolderLock(self.run_dir / f".{self.name}.lock", f"The stage folder {self.path}")

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

    def check_destination(self) -> None:
        """Refuses, before any work and again before the finished folder moves into place, to replace what
        must not be replaced at `path`.

        Replaced: nothing there; an empty folder; a stage folder of ours (see `foreign_content`) with the same
        fingerprint, or with another one when overwriting is allowed. Refused, even with ``--overwrite``: a file
        or link, and any folder holding a file that is not a listed file of ours.

        Raises:
            RSDistillError: Naming the folder, why it is kept and what to do.
        """
        path = self.path
        if not refuse_unless_ours(path, foreign_content):
            return
        manifest = self.manifest
        if manifest is None or manifest.get("fingerprint") == self.fingerprint:
            return
        allowed = self.overwrite
        if not allowed:
            raise RSDistillError(
                f"The output folder {path} holds a finished {manifest.get('stage')!r} stage made with other "
                "settings or inputs. Pass --overwrite to replace it, or choose another --out to keep it."
            )

    def _prepare_partial(self) -> Path:
        marker = self.partial_path / ".fingerprint"
        if self.partial_path.exists() and (not marker.is_file() or marker.read_text() != self.fingerprint):
            stale = self.run_dir / f".{self.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
            self.partial_path.rename(stale)
            print(f"note: a partial {self.name} stage for other settings was moved aside to {stale}")
        self.partial_path.mkdir(parents=True, exist_ok=True)
        marker.write_text(self.fingerprint)
        return self.partial_path

    def orphans(self) -> list[Path]:
        """What interrupted builds of this stage left beside it (see the module docstring); folders whose stage
        a running command holds are not listed."""
        patterns = [f".{self.name}.stale-*", f".{self.name}.tmp-*"]
        if self.family:
            patterns.append(f".{self.family}-*.partial")
        found = []
        for pattern in patterns:
            for path in sorted(self.run_dir.glob(pattern)):
                stage_name = path.name[1:].removesuffix(".partial")
                if path != self.partial_path and not in_use(self.run_dir / f".{stage_name}.lock"):
                    found.append(path)
        return found

    def remove_orphans(self) -> None:
        """Removes `orphans`, saying what was removed."""
        for path in self.orphans():
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            print(f"note: removed {path} ({size / 2**20:.1f} MB), left by an interrupted {self.name} stage")

    @contextmanager
    def _no_space_message(self, work: Path) -> Iterator[None]:
        """Turns a full disk while the stage writes into a message naming the path and what to do."""
        try:
            yield
        except Exception as error:
            full, path = out_of_space(error)
            if not (full or (isinstance(error, (OSError, RuntimeError)) and nearly_full(work))):
                raise
            raise RSDistillError(out_of_space_message(
                path or work, f"move the output (--out, shared_dir) or RSDISTILL_CACHE to a larger disk, and run "
                f"the same command again: what the {self.name} stage finished is kept in {work} and resumed")
            ) from None

    @contextmanager
    def build(self, extra: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yields the partial folder; on success moves it into place and writes the manifest last.

        What is at `path` already is checked first (`check_destination`: a folder that is not ours is never
        deleted, one of ours made with other settings only when overwriting is allowed) and checked again
        before it is replaced; a refusal after the work keeps the partial folder, so the same command resumes
        once the folder is dealt with. The manifest lists the files the stage wrote, which is what makes the
        folder ours.

        Args:
            extra: Figures to record in the manifest (counts, scores...). The dict may be filled in by the
                caller inside the `with` block.

        Raises:
            RSDistillError: When `path` holds something that must not be replaced (see `check_destination`).
        """
        self.check_destination()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.lock.held():
            work = self._prepare_partial()
            start = time.perf_counter()
            with PeakMemory() as memory, self._no_space_message(work):
                yield work
            wall = time.perf_counter() - start
            with self._no_space_message(work):
                self._finish(work, wall, memory.peak_mb, extra)
            self.remove_orphans()

    def _finish(self, work: Path, wall: float, peak_mb: float, extra: dict[str, Any] | None) -> None:
        """Moves the finished partial folder `work` into place and writes the manifest last."""
        self.check_destination()  # the folder may have changed while the stage ran
        (work / ".fingerprint").unlink(missing_ok=True)
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()
        elif self.path.exists():
            old = temporary_sibling(self.path, ".old")
            self.path.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        work.rename(self.path)
        files = [name for name in files_under(self.path) if name != MANIFEST]
        manifest = {
            "stage": self.name,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "inputs": self.inputs,
            "versions": package_versions(),
            "torch_threads": torch_threads(),
            "wall_time_s": round(wall, 3),
            "peak_memory_mb": round(peak_mb, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(extra or {}),
            FILES_KEY: files,
        }
        write_text_atomic(self.path / MANIFEST, json.dumps(manifest, indent=2, default=str))


def add_files(folder: str | Path, *names: str) -> None:
    """Lists files a later command wrote into a finished stage folder (a privacy verdict in a report folder)
    in its manifest, so the folder stays one rsdistill may replace; a folder without a manifest is left alone."""
    manifest = read_manifest(folder)
    if not isinstance(manifest, dict) or not isinstance(manifest.get(FILES_KEY), list):
        return
    listed = sorted({str(name) for name in manifest[FILES_KEY]} | set(names))
    if listed != manifest[FILES_KEY]:
        write_text_atomic(Path(folder) / MANIFEST, json.dumps({**manifest, FILES_KEY: listed}, indent=2, default=str))


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
