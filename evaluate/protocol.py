"""The training protocol of docs/benchmark.md: one classifier trained on a set, then tested on the real test
split.

Defaults are the benchmark: ConvNet-3 at 64x64, SGD (momentum 0.9, lr 0.01, weight decay 5e-4), cosine
schedule to 0 over 500 steps, batch min(64, n) drawn without replacement within each pass (a pass's last
incomplete batch is dropped, so every step sees a full batch), per-image flips / 90-degree rotations /
resized crops, hard labels and cross-entropy. On CPUs with bf16 instructions and on GPUs the forward and
backward run under bf16 autocast with fp32 weights (as the reference baselines in docs/results.md were
measured); the precision is part of the protocol's label.

Images travel as uint8 (N, 3, H, W) tensors on the device and are normalised one batch at a time with the
real train split's per-channel mean and std.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import bf16_supported
from rsdistill.evaluate.networks import MODELS, build_network
from rsdistill.evaluate.policies import DEFAULT_POLICY, Policy, check_policy

LABELS = ("hard", "soft")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class Protocol:
    """How a classifier is trained for scoring. The defaults are docs/benchmark.md.

    Attributes:
        model: One of ``convnet3``, ``resnet18``, ``efficientnet-lite0``.
        resolution: Image side in pixels.
        steps: Optimiser steps (the cosine schedule reaches 0 at the last one).
        batch_size: Largest batch; the batch is min(batch_size, n).
        lr, momentum, weight_decay: SGD settings.
        augment: Whether augmentation is applied at all (False: the ``none`` policy).
        augmentation: The augmentation policy by name (`rsdistill.evaluate.policies.POLICIES`); the default
            ``geometric`` is the benchmark's per-image flips, rotations and crops.
        labels: ``hard`` (cross-entropy with the set's labels) or ``soft`` (KL to the full-data teacher's
            predictions on each augmented batch, at `temperature`).
        temperature: Soft-label temperature.
        precision: ``bf16`` (autocast, fp32 weights), ``fp32``, or ``auto`` (bf16 where the hardware has it).
    """

    model: str = "convnet3"
    resolution: int = 64
    steps: int = 500
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    labels: str = "hard"
    augmentation: str = DEFAULT_POLICY
    temperature: float = 4.0
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise RSDistillError(f"Unknown evaluation model {self.model!r}; use one of {', '.join(MODELS)}.")
        if self.labels not in LABELS:
            raise RSDistillError(f"Evaluation labels must be one of {', '.join(LABELS)}, not {self.labels!r}.")
        if self.precision not in PRECISIONS:
            raise RSDistillError(f"Precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}.")
        check_policy(self.augmentation)
        if self.steps < 1 or self.batch_size < 1 or self.resolution < 8:
            raise RSDistillError("Evaluation steps and batch size must be positive and the resolution >= 8.")

    def resolved(self, device: torch.device) -> Protocol:
        """This protocol with `precision` fixed for `device` (``auto`` becomes bf16 or fp32)."""
        if self.precision != "auto":
            return self
        return replace(self, precision="bf16" if bf16_supported(device) else "fp32")

    @property
    def label(self) -> str:
        """A short name that says how a score was produced, e.g. ``convnet3-64px-500steps-hard-bf16``."""
        parts = [self.model, f"{self.resolution}px", f"{self.steps}steps", self.labels]
        if self.labels == "soft":
            parts[-1] = f"soft-T{self.temperature:g}"
        if not self.augment or self.augmentation == "none":
            parts.append("noaug")
        elif self.augmentation != DEFAULT_POLICY:
            parts.append(f"aug-{self.augmentation}")
        if (self.batch_size, self.lr, self.momentum, self.weight_decay) != (64, 0.01, 0.9, 5e-4):
            parts.append(f"b{self.batch_size}-lr{self.lr:g}-m{self.momentum:g}-wd{self.weight_decay:g}")
        parts.append(self.precision)
        return "-".join(parts)

    @property
    def policy_name(self) -> str:
        """The augmentation policy that training applies (``none`` when `augment` is off)."""
        return self.augmentation if self.augment else "none"

    def to_dict(self) -> dict[str, Any]:
        """The protocol's fields; `augmentation` only when it is not the default, so the reports and finished
        stages of the benchmark's protocol keep their keys."""
        fields = asdict(self)
        if self.augmentation == DEFAULT_POLICY:
            del fields["augmentation"]
        return fields


def keep_freed_memory() -> bool:
    """Asks glibc to keep freed memory for reuse instead of handing large blocks back to the OS.

    glibc serves every block above 32 MB (a 64x128x64x64 bf16 activation is 64 MB) with a fresh mmap and
    returns it on free, so each training step page-faults and zero-fills its largest tensors again: a quarter
    of a CPU step's time. Keeping the heap makes the process hold its peak memory until it exits. Returns
    whether the setting took (False off glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def steps_for_passes(n: int, passes: int, batch_size: int = 64) -> int:
    """Steps that make `passes` passes over `n` images at `batch_size` (incomplete batches dropped)."""
    return passes * max(1, n // min(batch_size, n))


def to_uint8_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) array -> uint8 (N, 3, H, W) tensor on `device`."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise RSDistillError(f"Expected images shaped (N, H, W, 3), got {images.shape}.")
    copy = np.array(images, dtype=np.uint8)  # a copy: cached splits are read-only memory maps
    return torch.from_numpy(copy).to(device).permute(0, 3, 1, 2)


@dataclass
class Normalizer:
    """Per-channel normalisation with the real train split's statistics (docs/benchmark.md)."""

    mean: torch.Tensor  # (1, 3, 1, 1) float32, in [0, 1] units
    std: torch.Tensor

    @classmethod
    def from_stats(cls, mean: np.ndarray, std: np.ndarray, device: torch.device) -> Normalizer:
        view = (1, 3, 1, 1)
        return cls(
            torch.as_tensor(mean, dtype=torch.float32, device=device).view(view),
            torch.as_tensor(std, dtype=torch.float32, device=device).view(view),
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images -> normalised float32."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.mean) / self.std


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches for `steps` steps: a fresh permutation per pass, cut into full batches."""
    size = min(batch_size, n)
    per_pass = n // size
    step = 0
    while step < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, per_pass * size, size):
            if step == steps:
                return
            yield order[start : start + size]
            step += 1


def cosine_lr(base: float, step: int, steps: int) -> float:
    """Cosine schedule from `base` at step 0 towards 0 at step `steps`."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def _logits(model: nn.Module, x: torch.Tensor, autocast: bool) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        return model(x).float()


def _loss(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    soft: bool,
    temperature: float,
    autocast: bool,
) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(x)
    logits = logits.float()
    if soft:
        log_p = F.log_softmax(logits / temperature, dim=1)
        return F.kl_div(log_p, target, reduction="batchmean") * temperature**2
    return F.cross_entropy(logits, target)  # class indices, or probabilities (mixup, cutmix)


class Trainer:
    """Trains classifiers by a protocol on one device, sharing one compiled loss across runs.

    Args:
        protocol: The protocol (its precision is resolved for `device`).
        normalizer: The real train split's normalisation.
        device: Where training runs.
        compile: Compile the forward and backward with `torch.compile` (inductor). Compilation is paid
            once per process and cached on disk (TORCHINDUCTOR_CACHE_DIR) across processes.
        channels_last: Use the NHWC memory layout for the network and its inputs (default: when compiling;
            oneDNN's convolutions are faster in it, eager GroupNorm and pooling slower).
    """

    def __init__(
        self,
        protocol: Protocol,
        normalizer: Normalizer,
        device: torch.device,
        compile: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        self.protocol = protocol.resolved(device)
        if device.type == "cpu":
            keep_freed_memory()
        self.normalizer = normalizer
        self.device = device
        self.channels_last = compile if channels_last is None else channels_last
        self.loss_fn: Callable[..., torch.Tensor] = torch.compile(_loss, dynamic=False) if compile else _loss
        self.logits_fn: Callable[..., torch.Tensor] = torch.compile(_logits, dynamic=False) if compile else _logits
        self.compile = compile

    @property
    def autocast(self) -> bool:
        return self.protocol.precision == "bf16"

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def new_model(self, num_classes: int, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = build_network(self.protocol.model, num_classes, self.protocol.resolution).to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def train(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        seed: int,
        teacher: nn.Module | None = None,
        desc: str = "training",
    ) -> nn.Module:
        """Trains one classifier.

        Args:
            images: uint8 (N, 3, H, W) on the device.
            labels: int64 (N,) on the device.
            num_classes: Output classes.
            seed: Seeds the initial weights, the batch order and the augmentation.
            teacher: The model whose predictions are the soft labels (``labels="soft"``).
            desc: Progress-bar text.

        Returns:
            The trained model, in eval mode.
        """
        p = self.protocol
        if len(images) == 0:
            raise RSDistillError("Cannot train on an empty set.")
        if p.labels == "soft" and teacher is None:
            raise RSDistillError("Soft labels need the full-data teacher; none was given.")
        model = self.new_model(num_classes, seed)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        soft = p.labels == "soft"
        policy = Policy(p.policy_name, num_classes)
        progress = tqdm(batches(len(images), p.batch_size, p.steps, generator), total=p.steps, desc=desc,
                        leave=False, unit="step")
        for step, index in enumerate(progress):
            index = index.to(self.device)
            x, target = policy(images[index], labels[index], self.normalizer, generator)
            x = self._layout(x)
            if soft:
                target = self.soft_targets(teacher, x)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(p.lr, step, p.steps)
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(model, x, target, soft, p.temperature, self.autocast)
            loss.backward()
            optimizer.step()
        return model.eval()

    @torch.no_grad()
    def soft_targets(self, teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits_fn(teacher, x, self.autocast)
        return F.softmax(logits / self.protocol.temperature, dim=1)

    @torch.inference_mode()
    def predict(self, model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Logits (float32) for uint8 (N, 3, H, W) images, in batches (the last one padded when compiled, so
        one compiled graph serves every batch)."""
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            size = len(chunk)
            if self.compile and size < batch_size and len(images) > batch_size:
                chunk = torch.cat([chunk, chunk.new_zeros((batch_size - size, *chunk.shape[1:]))])
            x = self._layout(self.normalizer(chunk))
            out.append(self.logits_fn(model, x, self.autocast)[:size])
        return torch.cat(out)

    def accuracy(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy in percent."""
        predictions = self.predict(model, images).argmax(dim=1)
        return float((predictions == labels).float().mean().item() * 100.0)

