"""Shared fixtures: fake ImageFolder datasets written by the tests, and the real data when it is visible."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL_DATA = Path(os.environ["RSDISTILL_DATA"]) if os.environ.get("RSDISTILL_DATA") else None


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder; the user's ~/.cache is never touched."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("RSDISTILL_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def write_image(path: Path, rng: np.random.Generator, size: int, tint: tuple[int, int, int]) -> None:
    base = np.asarray(tint, dtype=np.float32)
    noise = rng.normal(0, 25, size=(size, size, 3))
    array = np.clip(base + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


TINTS = [(40, 120, 40), (30, 60, 160), (150, 150, 150), (180, 140, 80), (90, 40, 40), (200, 200, 60)]


@pytest.fixture
def make_imagefolder(tmp_path: Path) -> Callable[..., Path]:
    """Builds `<tmp>/<name>/<Class>/<i>.png` with distinct colour per class; optional `test.txt`."""

    def build(
        counts: dict[str, int] | None = None,
        size: int = 32,
        test_per_class: int = 0,
        name: str = "scenes",
        seed: int = 0,
    ) -> Path:
        counts = counts or {"forest": 8, "lake": 8, "town": 8}
        rng = np.random.default_rng(seed)
        root = tmp_path / name
        test_lines = []
        for index, (cls, count) in enumerate(sorted(counts.items())):
            for i in range(count):
                write_image(root / cls / f"{cls}_{i:03d}.png", rng, size, TINTS[index % len(TINTS)])
                if i < test_per_class:
                    test_lines.append(f"{cls}/{cls}_{i:03d}.png")
        if test_per_class:
            (root / "test.txt").write_text("\n".join(test_lines) + "\n")
        return root

    return build


def require_real(name: str) -> Path:
    """The real dataset folder, or skip when RSDISTILL_DATA is not set."""
    if REAL_DATA is None or not (REAL_DATA / name).is_dir():
        pytest.skip(f"real dataset {name} not visible (set RSDISTILL_DATA)")
    return REAL_DATA / name
