"""The one exception type users see: a message that names the file or setting and what to do."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
LOW_SPACE_BYTES = 16 * 2**20
# How libraries that do not raise OSError report a full disk.
NO_SPACE_TEXT = ("No space left on device", "StorageFull", "Disk quota exceeded")


class RSDistillError(Exception):
    """A problem with the user's input or environment, explained in plain words.

    The command line prints the message alone (no traceback) and exits with status 2.
    """


def out_of_space(error: BaseException) -> tuple[bool, str | None]:
    """Whether `error` (or an error it was raised from) is a write that failed for lack of disk space, and the
    path it names when it names one.

    Covers OSError ENOSPC / EDQUOT, safetensors' ``SafetensorError`` (``IoError(... StorageFull ...)``) and
    torch.save's ``PytorchStreamWriter failed writing file`` RuntimeError.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RSDistillError):
            return False, None  # already a message for the user
        if isinstance(current, OSError) and current.errno in NO_SPACE:
            return True, current.filename
        if not isinstance(current, OSError) and any(text in str(current) for text in NO_SPACE_TEXT):
            return True, None
        current = current.__cause__ or current.__context__
    return False, None


def nearly_full(path: Path, below: int = LOW_SPACE_BYTES) -> bool:
    """Whether the disk holding `path` (or its nearest existing parent) has less than `below` bytes free: how
    a write error that does not say why (torch.save's ``unexpected pos``) is told to be a full disk."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free < below
    return False


def out_of_space_message(path: object, remedy: str) -> str:
    """The one-line message for a write to `path` that failed because the disk is full."""
    return f"No space left on the disk while writing {path}. Free space on that disk, or {remedy}."
