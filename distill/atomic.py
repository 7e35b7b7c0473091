"""Names for files written beside their target and then moved into place."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def temporary_sibling(path: Path, suffix: str = "") -> Path:
    """A hidden name next to `path` that no other process or thread will pick, for write-then-rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
