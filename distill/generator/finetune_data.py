"""What fine-tuning trains on: cached train latents, one prompt per image, and a batch plan that depends on
(seed, step) alone, so a resumed run sees exactly the batches and noise an uninterrupted one would."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from rsdistill.core.atomic import save_npy_atomic
from rsdistill.core.errors import RSDistillError
from rsdistill.data.dataset import ImageArray, SceneDataset, default_cache_root
from rsdistill.data.names import class_prompt
from rsdistill.generator.bundle import DiffusionBundle
from rsdistill.generator.latent_classifier import dihedral


def read_captions(folder: str | Path) -> dict[str, str]:
    """`file_name -> text` from a captions stage folder's `metadata.jsonl`."""
    path = Path(folder) / "metadata.jsonl"
    if not path.is_file():
        raise RSDistillError(f"{folder} is not a captions folder: {path} is missing. Run the captions stage first.")
    captions: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            captions[record["file_name"]] = record["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise RSDistillError(f"{path} line {number} is not a {{file_name, text}} record.") from None
    return captions


def train_prompts(keys: Sequence[str], labels: np.ndarray, classes: list[str], captions: str | None) -> list[str]:
    """One prompt per train image: its caption, or the class-name prompt when `captions` is None."""
    if captions is None:
        by_class = [class_prompt(name) for name in classes]
        return [by_class[label] for label in labels]
    texts = read_captions(captions)
    missing = [key for key in keys if key not in texts]
    if missing:
        raise RSDistillError(
            f"{captions}/metadata.jsonl has no caption for {len(missing)} train image(s), e.g. {missing[0]}; "
            "caption the same dataset and split, or leave --captions out for class-name prompts."
        )
    return [texts[key] for key in keys]


def vae_digest(vae: AutoencoderKL) -> str:
    """Identifies a VAE by its weights and public config, so its latents are cached once across bundles."""
    # Private config keys (`_name_or_path`, `_diffusers_version`...) change on save and load; they are left out.
    config = {key: value for key, value in vae.config.items() if not key.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def encode_latents(
    bundle: DiffusionBundle, images: np.ndarray, batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """VAE latents (scaled, posterior mean) of uint8 images (N, H, W, 3), as float32 (N, C, h, w)."""
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc="encoding latents", disable=not progress, leave=False):
        batch = torch.from_numpy(np.array(images[start : start + batch_size]))
        pixels = batch.permute(0, 3, 1, 2).float() / 127.5 - 1
        chunks.append(bundle.encode_images(pixels).float().cpu().numpy())
    return np.concatenate(chunks)


def latents_tag(dataset: SceneDataset, split: str, resolution: int) -> str:
    """Cache name part for the latents of one split of a dataset at one resolution."""
    return f"{dataset.fingerprint}-{split}-{resolution}px"


def latents_cache_path(vae: AutoencoderKL, tag: str) -> Path:
    """Where the latents named by `tag` (see `latents_tag`) of this VAE are cached."""
    return default_cache_root() / "latents" / f"{tag}-{vae_digest(vae)}.npy"


def cached_latents(bundle: DiffusionBundle, array: ImageArray, tag: str, progress: bool = True) -> np.ndarray:
    """Latents of `array` (see `latents_tag`), read from the cache when this VAE encoded this data before."""
    path = latents_cache_path(bundle.vae, tag)
    if path.is_file():
        return np.load(path, mmap_mode="r")
    latents = encode_latents(bundle, array.images, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npy_atomic(path, latents, "latents to ")
    return latents


def stream_seed(*parts: object) -> int:
    """A 63-bit seed from named parts, the same in every process and on every machine."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    return torch.randperm(count, generator=torch.Generator().manual_seed(stream_seed(seed, "epoch", epoch))).numpy()


@dataclass
class MicroBatch:
    """Everything random about one micro-batch, drawn on CPU."""

    indices: np.ndarray
    noise: torch.Tensor
    timesteps: torch.Tensor
    dropped: torch.Tensor  # bool: caption replaced by the empty prompt
    ops: torch.Tensor  # dihedral op per sample


def plan_micro_batch(
    seed: int, micro_index: int, batch_size: int, count: int, latent_shape: tuple[int, ...],
    num_timesteps: int, caption_dropout: float, augment: bool,
) -> MicroBatch:
    """The samples, noise, timesteps, caption dropout and augmentation of micro-batch `micro_index`.

    Samples are drawn in passes over the data without replacement; a pass's order depends on (seed, pass).
    """
    positions = np.arange(micro_index * batch_size, (micro_index + 1) * batch_size)
    indices = np.array([_epoch_order(seed, int(p // count), count)[p % count] for p in positions])
    generator = torch.Generator().manual_seed(stream_seed(seed, "micro", micro_index))
    noise = torch.randn((batch_size, *latent_shape), generator=generator)
    timesteps = torch.randint(0, num_timesteps, (batch_size,), generator=generator)
    dropped = torch.rand(batch_size, generator=generator) < caption_dropout
    ops = torch.randint(0, 8, (batch_size,), generator=generator)
    if not augment:
        ops.zero_()
    return MicroBatch(indices, noise, timesteps, dropped, ops)


def batch_latents(latents: np.ndarray, plan: MicroBatch) -> torch.Tensor:
    return dihedral(torch.from_numpy(np.ascontiguousarray(latents[plan.indices])), plan.ops)


class PromptEncoder:
    """Frozen text-encoder hidden states, memoised per prompt text.

    `preload` encodes a known prompt set (the training captions) up front, in batches of its sorted distinct
    prompts: the same batches on every run, so a resumed run reproduces an uninterrupted one. Any other
    prompt is encoded on its own when first asked for and kept in a memo of at most `limit` prompts, so its
    hidden states never depend on which prompts shared a batch.
    """

    def __init__(self, bundle: DiffusionBundle, limit: int = 2048, preload_budget_bytes: int = 2**31) -> None:
        self.bundle = bundle
        self.limit = limit
        self.preload_budget_bytes = preload_budget_bytes
        self.preloaded: dict[str, torch.Tensor] = {}
        self.memo: dict[str, torch.Tensor] = {}
        self.truncated = 0

    @torch.no_grad()
    def preload(self, prompts: Sequence[str], batch_size: int = 64, progress: bool = True) -> int:
        """Encodes the distinct `prompts` now (unless they would take more than the budget); returns how many."""
        distinct = sorted(set(prompts) - set(self.preloaded))
        encoder = self.bundle.text_encoder
        per_prompt = self.bundle.tokenizer.model_max_length * encoder.config.hidden_size * encoder.dtype.itemsize
        if len(distinct) * per_prompt > self.preload_budget_bytes:
            return 0
        for start in tqdm(range(0, len(distinct), batch_size), desc="encoding prompts", disable=not progress,
                          leave=False):
            batch = distinct[start : start + batch_size]
            hidden, truncated = self.bundle.encode_prompt(batch)
            self.preloaded.update(zip(batch, hidden.cpu(), strict=True))
            self.truncated += truncated
        return len(distinct)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        states = []
        for prompt in prompts:
            if prompt in self.preloaded:
                states.append(self.preloaded[prompt])
                continue
            if prompt not in self.memo:
                if len(self.memo) >= self.limit:
                    self.memo.clear()
                hidden, truncated = self.bundle.encode_prompt([prompt])
                self.memo[prompt] = hidden[0].cpu()
                self.truncated += truncated
            states.append(self.memo[prompt])
        return torch.stack(states)
