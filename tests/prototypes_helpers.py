"""Tiny randomly initialised models saved the way users' real ones are, for the prototypes tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn


def save_tiny_vae(folder: Path) -> Path:
    """A 2-level diffusers AutoencoderKL (downsampling x2, 4 latent channels) saved with save_pretrained."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.5,
    )
    vae.save_pretrained(folder)
    return folder


class TinyFeatures(nn.Module):
    """forward: float (N, 3, H, W) in [0, 1] -> (N, 4 * 4 * 4) features, like evaluate's exported ConvNet."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def save_tiny_torchscript(folder: Path, resolution: int = 16) -> Path:
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(TinyFeatures().eval()).save(str(folder / "model.pt"))
    (folder / "config.json").write_text(json.dumps({"resolution": resolution, "dim": 64}))
    return folder


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


def save_tiny_open_clip(folder: Path) -> Path:
    """An open_clip `local-dir` folder: open_clip_config.json plus open_clip_model.safetensors."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    model = CLIP(**TINY_CLIP)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors"
    )
    config = {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


def blobs(sizes: list[int], dim: int = 8, spread: float = 0.1, seed: int = 0) -> np.ndarray:
    """Well separated Gaussian blobs of the given sizes, stacked in order."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, size=(len(sizes), dim))
    parts = [
        centre + rng.normal(0, spread, size=(size, dim)) for centre, size in zip(centres, sizes, strict=True)
    ]
    return np.concatenate(parts).astype(np.float32)


def random_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
