"""Device choice, mixed precision and seeding, shared by every stage."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from rsdistill.core.errors import RSDistillError

DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device of the ``device`` setting (``--device``); `auto` picks CUDA when present, else CPU.

    Raises:
        RSDistillError: For a name torch does not know (``gpu0``) or a device this machine does not have
            (``cuda`` without a GPU, ``cuda:3`` with two, ``mps`` off Apple silicon), naming the setting.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise RSDistillError(f"--device {device!r} (the device setting) is not a device name; use "
                             f"{DEVICE_FORMS}.") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RSDistillError(f"--device {device!r} (the device setting): torch sees no CUDA GPU on this "
                                 "machine. Use --device cpu (or auto), or install a CUDA build of torch.")
        if resolved.index is not None and resolved.index >= count:
            raise RSDistillError(f"--device {device!r} (the device setting): this machine has {count} CUDA "
                                 f"GPU(s), numbered 0 to {count - 1}.")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise RSDistillError(f"--device {device!r} (the device setting): MPS is not available on this machine. "
                             "Use --device cpu (or auto).")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise RSDistillError(f"--device {device!r} (the device setting) is not supported; use {DEVICE_FORMS}.")
    return resolved


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
