"""Model plumbing of fine-tuning: LoRA or full UNet set-up, the frozen latent classifier, validation grids,
and the export of the trained UNet (LoRA merged into plain weights, the adapter kept beside them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from rsdistill.core.config import GeneratorConfig, SynthesisConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.generator.bundle import CLASSIFIER_FOLDER, DiffusionBundle
from rsdistill.generator.finetune_data import PromptEncoder, class_prompt, stream_seed
from rsdistill.generator.latent_classifier import LatentClassifier
from rsdistill.generator.sampling import SamplerSettings, sample_latents

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def prepare_unet(
    unet: UNet2DConditionModel, config: GeneratorConfig, weight_dtype: torch.dtype, device: torch.device
) -> UNet2DConditionModel:
    """Freezes the base and adds a LoRA adapter (`use_lora`), or makes the whole UNet trainable."""
    if config.use_lora:
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        matches = [name for name, _ in unet.named_modules() if name.endswith(LORA_TARGETS)]
        if not matches:
            raise RSDistillError(
                f"--use_lora: the UNet has no attention projections named {', '.join(LORA_TARGETS)} to adapt "
                "(no cross-attention blocks?). Fine-tune it in full instead (leave out --use_lora)."
            )
        unet.requires_grad_(False)
        unet.to(device) if weight_dtype == torch.float32 else unet.to(device, weight_dtype)
        unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian",
                                    target_modules=list(LORA_TARGETS)))
        cast_training_params(unet, dtype=torch.float32)
    else:
        unet.requires_grad_(True)
        unet.to(device) if unet.dtype == torch.float32 else unet.to(device, torch.float32)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def keep_only(names: set[str]) -> Callable[[list[Any], list[dict[str, torch.Tensor]], str], None]:
    """An accelerate save-state hook that keeps only the named tensors (a LoRA run's adapter)."""

    def hook(models: list[Any], weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
        for index, state in enumerate(weights):
            weights[index] = {key: value for key, value in state.items() if key in names}

    return hook


def load_consistency_classifier(
    config: GeneratorConfig, bundle: DiffusionBundle, classes: list[str], device: torch.device
) -> LatentClassifier | None:
    """The frozen latent classifier for the consistency term (None when lambda is 0)."""
    if config.consistency_lambda <= 0:
        return None
    folder = Path(config.latent_classifier) if config.latent_classifier else Path(bundle.path) / CLASSIFIER_FOLDER
    if not folder.is_dir():
        raise RSDistillError(
            f"--consistency_lambda {config.consistency_lambda} needs a latent classifier: none at {folder}. "
            "Pass --latent_classifier DIR (trained with `rsdistill generator classifier`), or set the lambda to 0."
        )
    classifier = LatentClassifier.from_pretrained(folder)
    if classifier.config.classes and classifier.config.classes != list(classes):
        raise RSDistillError(f"The latent classifier at {folder} was trained for other classes "
                             f"({classifier.config.classes[:3]}...) than this dataset ({classes[:3]}...).")
    if classifier.config.in_channels != bundle.latent_channels:
        raise RSDistillError(f"The latent classifier at {folder} reads {classifier.config.in_channels}-channel "
                             f"latents; this bundle's VAE makes {bundle.latent_channels}.")
    classifier.requires_grad_(False)
    return classifier.to(device).eval()


def export_unet(unet: UNet2DConditionModel, config: GeneratorConfig, output_dir: Path) -> UNet2DConditionModel:
    """A plain UNet to save: for LoRA, the adapter is written to `unet_lora/` and merged into the weights."""
    if unet.dtype != torch.float32:
        unet = unet.to(torch.float32)
    if config.use_lora:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        StableDiffusionPipeline.save_lora_weights(output_dir / "unet_lora", unet_lora_layers=layers)
        unet.fuse_lora()
        unet.unload_lora()
    unet.requires_grad_(False)
    return unet.eval()


def to_uint8_grid(pixels: torch.Tensor, columns: int) -> np.ndarray:
    """Pixels in [-1, 1] (N, 3, H, W) -> one uint8 image grid."""
    images = ((pixels.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    rows = -(-len(images) // columns)
    height, width = images.shape[1:3]
    grid = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    return grid


@torch.no_grad()
def write_validation_grid(
    bundle: DiffusionBundle, unet: UNet2DConditionModel, classes: list[str], encoder: PromptEncoder,
    path: Path, seed: int, per_row: int = 8,
) -> None:
    """One sample per class (up to `per_row` classes, spread over the list), DDIM 20 steps, CFG 3."""
    chosen = np.unique(np.linspace(0, len(classes) - 1, min(per_row, len(classes))).round().astype(int))
    prompts = [class_prompt(classes[i]) for i in chosen]
    was_training, original = unet.training, bundle.unet
    bundle.unet = unet.eval()
    try:
        latents = sample_latents(
            bundle, encoder(prompts), encoder([""]), [stream_seed(seed, "validation", i) for i in chosen],
            SamplerSettings.from_config(SynthesisConfig(guidance="none", num_inference_steps=20, guidance_scale=3.0)),
        )
        pixels = bundle.decode_latents(latents)
    finally:
        bundle.unet = original
        unet.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8_grid(pixels, len(prompts))).save(path)
