"""Device choice, mixed precision and seeding, shared by every stage."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from rsdistill.core.errors import RSDistillError


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively (CPU: avx512_bf16 or AMX; GPU: Ampere or later)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype of a `--mixed_precision` value (None for ``no``)."""
    dtypes = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if mixed_precision not in dtypes:
        raise RSDistillError(f"--mixed_precision must be no, fp16 or bf16, not {mixed_precision!r}.")
    return dtypes[mixed_precision]


def seed_everything(seed: int) -> torch.Generator:
    """Seeds Python, NumPy and torch; returns a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return torch.Generator().manual_seed(seed)
