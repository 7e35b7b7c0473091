"""Tiny randomly initialised Stable Diffusion components, saved as a diffusers folder like a user's local copy
of a hub model: the pretrained-bundle path exercised offline (the tests, ``scripts/make_tiny_sd.py``).

The tokenizer is a real `CLIPTokenizer` over a byte-level vocabulary with no merges, built here so nothing
is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from rsdistill.generator.bundle import DiffusionBundle, save_bundle

TEXT_DIM = 32


def tiny_clip_tokenizer(max_length: int = 16) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is single byte symbols (every word splits into characters)."""
    symbols = list(bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_components(
    latent_size: int = 16,
    in_channels: int = 4,
    num_class_embeds: int | None = None,
    class_embed_type: str | None = None,
    seed: int = 0,
) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    """Random tiny VAE (factor 2), UNet with `in_channels` inputs (4; 8 for InstructPix2Pix) and text encoder."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=2 * latent_size,
    )
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_DIM,
        attention_head_dim=4, norm_num_groups=8, num_class_embeds=num_class_embeds,
        class_embed_type=class_embed_type,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=520, hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, bos_token_id=518, eos_token_id=519,
        pad_token_id=519,
    ))
    return vae, unet, text_encoder


def tiny_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """Stable Diffusion's noise schedule."""
    return DDPMScheduler(prediction_type=prediction_type, beta_schedule="scaled_linear",
                         beta_start=0.00085, beta_end=0.012)


def tiny_sd_folder(
    folder: Path,
    prediction_type: str = "epsilon",
    num_class_embeds: int | None = None,
    class_embed_type: str | None = None,
    latent_size: int = 16,
    seed: int = 0,
) -> Path:
    """Writes a tiny SD-layout bundle (VAE factor 2, so 32 px images give `latent_size` 16 latents)."""
    vae, unet, text_encoder = tiny_components(latent_size, 4, num_class_embeds, class_embed_type, seed)
    scheduler = tiny_scheduler(prediction_type)
    save_bundle(DiffusionBundle(vae, unet, text_encoder, tiny_clip_tokenizer(), scheduler, str(folder)), folder)
    return folder


def tiny_instruct_pix2pix_folder(folder: Path, latent_size: int = 16, seed: int = 0) -> Path:
    """Writes a tiny `StableDiffusionInstructPix2PixPipeline` folder (its UNet takes 8 channels: the noisy
    latents and the source image's latents)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    vae, unet, text_encoder = tiny_components(latent_size, in_channels=8, seed=seed)
    pipeline = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(), unet=unet,
        scheduler=tiny_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return folder
