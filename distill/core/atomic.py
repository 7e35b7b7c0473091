"""Files written beside their target and then moved into place, so a reader never sees half of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rsdistill.core.errors import RSDistillError

SEPARATORS = ("/", "\\")


def safe_name(value: object, what: str, remedy: str = "Rename it.") -> str:
    """Returns `value` when it can stand as one file or folder name inside another folder, else refuses it.

    Every name that comes from data (class names, file stems, dataset names) passes here before it becomes a
    path, so no name can reach outside the folder it is written into.

    Args:
        value: The name.
        what: What the name is and where it came from, e.g. ``"Class name of the Hugging Face dataset X"``.
        remedy: What the user should do, appended to the message.

    Returns:
        `value`, unchanged.

    Raises:
        RSDistillError: When `value` is not text, is empty or blank, is ``.`` or ``..``, holds a path separator
            (``/`` or ``\\``; an absolute path always does) or a NUL character.
    """
    if not isinstance(value, str):
        problem = f"is not text ({type(value).__name__})"
    elif not value.strip():
        problem = "is empty"
    elif value in (".", ".."):
        problem = "names the folder itself or the one above it"
    elif any(separator in value for separator in SEPARATORS):
        problem = "holds a path separator ('/' or '\\'), so it would reach into other folders"
    elif "\0" in value:
        problem = "holds a NUL character"
    else:
        return value
    raise RSDistillError(f"{what} {value!r} cannot be used as a file or folder name: it {problem}. {remedy}")


def temporary_sibling(path: Path, suffix: str = "") -> Path:
    """A hidden name next to `path` that no other process or thread will pick, for write-then-rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def replace_atomically(
    path: Path, write: Callable[[Path], object], remedy: str, suffix: str = "", what: str = ""
) -> None:
    """Calls `write(tmp)` on a temporary sibling of `path`, then renames it to `path`, so a reader never sees
    half a file; an OSError becomes an error naming `what` and `path`, followed by `remedy`."""
    tmp = temporary_sibling(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise RSDistillError(f"Could not write {what}{path}: {error.strerror}. {remedy}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda tmp: tmp.write_text(text), "Free some space or choose another folder.")


def save_npy_atomic(path: Path, array: np.ndarray, what: str = "", remedy: str = "RSDISTILL_CACHE") -> None:
    """Saves `array` to `path` through a temporary file; a failure names `what` was written and the setting
    (`remedy`) that moves it elsewhere."""
    replace_atomically(path, lambda tmp: np.save(tmp, array), f"Free space there or set {remedy} to another folder.",
                       suffix=".npy", what=what)
