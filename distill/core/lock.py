"""A lock file per folder, so two rsdistill commands never build the same folder at once.

The lock is a small JSON file (`pid`, `host`, `started`, `command`) created with ``O_CREAT | O_EXCL``, so
exactly one process gets it. A lock left by a process that died (on this host: no process with that pid, or one
started after the lock was taken) is recognised as stale and taken over; breaking it goes through a second
exclusive file, so two processes that both find it stale never both take it. A lock held by a live process, or
by a process on another host (whose life cannot be checked from here), stops the second command with a message
that names the folder, the holder and what to do.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from rsdistill.core.errors import RSDistillError

# A breaker file older than this is left over from a process that died while breaking a stale lock.
BREAKER_TIMEOUT_S = 30.0
# Seconds between the lock's `started` and the holder's start time that still count as "the same process".
CLOCK_SLACK_S = 2.0

_held: dict[Path, int] = {}


def lock_record() -> dict[str, Any]:
    """What this process writes into a lock it takes."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "command": " ".join(sys.argv)[:300]}


def read_lock(path: Path) -> dict[str, Any] | None:
    """The record in the lock file at `path`, {} when it is unreadable, None when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def holder_alive(record: dict[str, Any]) -> bool | None:
    """Whether the process that wrote `record` still runs: None when it cannot be told (another host)."""
    if record.get("host") != socket.gethostname():
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or not psutil.pid_exists(pid):
        return False
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    # A reused pid: that process started after the lock was taken, so it is not the holder.
    return started <= float(record.get("started", 0)) + CLOCK_SLACK_S


def describe(record: dict[str, Any]) -> str:
    """The holder of a lock, for a message."""
    if not record:
        return "an unknown process (the lock file is unreadable)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started", 0))))
    command = f" running `{record['command']}`" if record.get("command") else ""
    return f"process {record.get('pid')} on host {record.get('host')}{command}, since {since}"


class FolderLock:
    """The lock of one folder: a file `path` that exists while a process holds it.

    Args:
        path: The lock file (beside or inside the folder it guards).
        what: What the lock guards, for messages, e.g. ``"the run folder runs/x"``.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(lock_record()))
        return True

    def _young(self) -> bool:
        """Whether an unreadable lock file may still be being written (else its writer died half way)."""
        try:
            return time.time() - self.path.stat().st_mtime < BREAKER_TIMEOUT_S
        except FileNotFoundError:
            return False

    def _break_stale(self, record: dict[str, Any]) -> None:
        """Removes the lock file if it still holds `record` (a dead holder's), one breaker at a time."""
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - breaker.stat().st_mtime > BREAKER_TIMEOUT_S:
                    breaker.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return
        os.close(fd)
        try:
            if read_lock(self.path) == record:
                self.path.unlink(missing_ok=True)
                print(f"note: took over the lock of {self.what} from {describe(record)}, which no longer runs.",
                      file=sys.stderr)
        finally:
            breaker.unlink(missing_ok=True)

    def acquire(self) -> None:
        """Takes the lock, taking over a stale one.

        Raises:
            RSDistillError: When a live process (or one on another host) holds it, naming the holder and what
                to do.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            if self._create():
                return
            record = read_lock(self.path)
            if record is None:
                continue  # released between the two calls
            alive = holder_alive(record) if record else self._young()
            if alive is False:
                self._break_stale(record)
                continue
            where = "" if alive else " (on another host, so rsdistill cannot tell whether it still runs)"
            raise RSDistillError(
                f"{self.what} is in use by {describe(record)}{where}. Wait for that command to finish, or stop "
                f"it, and run again; two commands building the same folder would spoil it. If no such command "
                f"runs any more, delete the lock file {self.path}."
            )
        raise RSDistillError(f"Could not take the lock {self.path} of {self.what}; run the command again.")

    def release(self) -> None:
        """Removes the lock file if this process holds it."""
        record = read_lock(self.path)
        if record and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Holds the lock for the `with` block; a lock this process already holds is entered again."""
        key = self.path.resolve()
        if _held.get(key):
            _held[key] += 1
            try:
                yield
            finally:
                _held[key] -= 1
            return
        self.acquire()
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            self.release()


def in_use(path: Path) -> bool:
    """Whether the lock file `path` is held by a process that may still run."""
    record = read_lock(path)
    if record is None:
        return False
    return not record or holder_alive(record) is not False
