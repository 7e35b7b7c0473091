"""A text-to-image latent diffusion model in the diffusers layout: load it, save it, use its parts.

A bundle is a folder (or a hub id) holding ``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/`` and
``scheduler/`` like a Stable Diffusion checkpoint, optionally ``rsdistill.json`` (settings a plain diffusers
folder cannot express, such as the value fed to a UNet that requires class labels) and
``latent_classifier/``. The same loader serves Stable Diffusion 1.x/2.x, Text2Earth-style UNets with a class
embedding, and the from-scratch preset, so every later stage treats them alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.errors import RSDistillError

COMPONENTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
COMPONENT_MARKERS = {
    "vae": ("config.json",),
    "unet": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("tokenizer_config.json", "tokenizer.json", "vocab.json", "vocab.txt"),
    "scheduler": ("scheduler_config.json",),
}
SETTINGS_FILE = "rsdistill.json"
CLASSIFIER_FOLDER = "latent_classifier"


@dataclass
class DiffusionBundle:
    """The five parts of a latent text-to-image diffusion model, and how to use them together.

    Attributes:
        vae: Maps pixels in [-1, 1] to latents and back.
        unet: Predicts noise (or velocity) from noisy latents, a timestep and text hidden states.
        text_encoder: Any transformers encoder whose last hidden state conditions the UNet.
        tokenizer: The text encoder's tokenizer.
        scheduler: The training noise scheduler (a DDPMScheduler built from ``scheduler/``).
        path: Where the bundle was loaded from.
        class_labels_value: The value given as ``class_labels`` to a UNet that requires them.
    """

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    scheduler: SchedulerMixin
    path: str
    class_labels_value: int | None = None

    @property
    def prediction_type(self) -> str:
        """``epsilon`` or ``v_prediction``, from the scheduler config."""
        return self.scheduler.config.prediction_type

    @property
    def latent_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def requires_class_labels(self) -> bool:
        config = self.unet.config
        return config.class_embed_type is not None or config.num_class_embeds is not None

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> DiffusionBundle:
        """Moves every model to `device` (and `dtype`); returns the bundle."""
        for model in (self.vae, self.unet, self.text_encoder):
            model.to(device) if dtype is None else model.to(device, dtype)
        return self

    def tokenize(self, prompts: list[str]) -> tuple[dict[str, torch.Tensor], int]:
        """Token ids padded to the tokenizer's maximum length, and how many prompts were cut to fit."""
        max_length = self.tokenizer.model_max_length
        full = self.tokenizer(list(prompts), truncation=False, verbose=False)["input_ids"]
        truncated = sum(len(ids) > max_length for ids in full)
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        return dict(tokens), truncated

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, int]:
        """Text hidden states (B, L, D) for the UNet's cross-attention, and how many prompts were cut."""
        tokens, truncated = self.tokenize(prompts)
        return self.encode_tokens(tokens), truncated

    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden states of already tokenized prompts (see `tokenize`)."""
        device = self.text_encoder.device
        kwargs: dict[str, torch.Tensor] = {"input_ids": tokens["input_ids"].to(device)}
        # CLIP (Stable Diffusion) runs unmasked as in diffusers' pipelines; BERT-style encoders need a mask.
        is_clip = self.text_encoder.config.model_type in ("clip_text_model", "clip")
        if "attention_mask" in tokens and not is_clip:
            kwargs["attention_mask"] = tokens["attention_mask"].to(device)
        return self.text_encoder(**kwargs)[0]

    def class_labels(self, batch: int) -> torch.Tensor | None:
        """The `class_labels` argument for a UNet that requires one (None for a UNet that does not)."""
        if not self.requires_class_labels:
            return None
        if self.class_labels_value is None:
            config = self.unet.config
            raise RSDistillError(
                f"The UNet of {self.path} requires class labels (class_embed_type="
                f"{config.class_embed_type!r}, num_class_embeds={config.num_class_embeds}); "
                "give the value with --class_labels_value N (generator.class_labels_value), e.g. the "
                "resolution level a Text2Earth-style UNet was trained with."
            )
        return torch.full((batch,), self.class_labels_value, dtype=torch.long, device=self.unet.device)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] (N, 3, H, W) -> posterior mean latents, scaled like the UNet sees them."""
        mean = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (mean - shift) * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels in [-1, 1]."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = latents.to(self.vae.device, self.vae.dtype) / self.vae.config.scaling_factor + shift
        return self.vae.decode(latents).sample.clamp(-1, 1)

    def settings(self, **extra: Any) -> dict[str, Any]:
        """What `rsdistill.json` records for this bundle."""
        return {"class_labels_value": self.class_labels_value, "prediction_type": self.prediction_type,
                **extra}


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") != 1


def check_bundle_folder(folder: Path) -> None:
    """Refuses a folder that is not a diffusers bundle, naming the missing parts."""
    if folder.is_file():
        raise RSDistillError(
            f"{folder} is a single file, not a diffusers folder. Convert a single-file checkpoint once with "
            "`StableDiffusionPipeline.from_single_file(FILE).save_pretrained(DIR)` and pass DIR."
        )
    if not folder.is_dir():
        raise RSDistillError(f"Diffusion model folder {folder} does not exist.")
    missing = [
        name for name in COMPONENTS
        if not any((folder / name / marker).is_file() for marker in COMPONENT_MARKERS[name])
    ]
    if len(missing) == len(COMPONENTS):
        raise RSDistillError(
            f"{folder} is not a diffusers bundle: it holds none of {', '.join(c + '/' for c in COMPONENTS)} "
            "(the layout `StableDiffusionPipeline.save_pretrained` or `rsdistill generator init` writes)."
        )
    if missing:
        example = folder / missing[0] / COMPONENT_MARKERS[missing[0]][0]
        raise RSDistillError(
            f"Diffusion model folder {folder} lacks its {', '.join(m + '/' for m in missing)} component"
            f"{'s' if len(missing) > 1 else ''} (expected e.g. {example})."
        )


def check_bundle_source(name_or_path: str) -> None:
    """Refuses, before any training and without loading weights, a bundle `load_bundle` could not load: a
    folder that is not a bundle, or a hub id whose component configs cannot be had (offline: not in the hub
    cache).

    Raises:
        RSDistillError: Naming the folder or hub id, the missing part and what to do.
    """
    folder = Path(name_or_path).expanduser()
    if folder.exists() or _looks_like_path(name_or_path):
        check_bundle_folder(folder)
        return
    for what, loader in (("vae", AutoencoderKL.load_config), ("unet", UNet2DConditionModel.load_config),
                         ("scheduler", DDPMScheduler.load_config), ("text_encoder", AutoConfig.from_pretrained)):
        _load_component(what, loader, name_or_path, local=False)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _load_component(what: str, loader: Any, source: str, local: bool) -> Any:
    try:
        if local:
            return loader(source, subfolder=what)
        return loader(source, subfolder=what, local_files_only=_hub_offline())
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        hint = "" if local else (
            " There is no local folder by that name; as a hub id it needs network access (or a hub cache "
            "holding it) and HF_HUB_OFFLINE unset."
        )
        raise RSDistillError(f"Could not load the {what}/ component of {source}: {error}{hint}") from None


def read_settings(folder: str | Path) -> dict[str, Any]:
    """`rsdistill.json` of a local bundle, or {}."""
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RSDistillError(f"{path} is not valid JSON ({error}); fix or delete it.") from None


def load_bundle(name_or_path: str, class_labels_value: int | None = None) -> DiffusionBundle:
    """Loads a diffusers text-to-image bundle from a local folder or a hub id.

    Args:
        name_or_path: A folder in the diffusers layout, or a hub id such as
            ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (needs network or a filled hub cache).
        class_labels_value: Value given as ``class_labels`` to a UNet that requires them; defaults to the one
            recorded in the bundle's ``rsdistill.json``.

    Returns:
        The bundle, on CPU in float32, every model in eval mode.

    Raises:
        RSDistillError: When the folder is missing, is not a bundle, lacks a component, or a part fails to
            load.
    """
    folder = Path(name_or_path).expanduser()
    local = folder.exists() or _looks_like_path(name_or_path)
    if local:
        check_bundle_folder(folder)
        source = str(folder)
        settings = read_settings(folder)
    else:
        source, settings = name_or_path, {}
    vae = _load_component("vae", AutoencoderKL.from_pretrained, source, local)
    unet = _load_component("unet", UNet2DConditionModel.from_pretrained, source, local)
    text_encoder = _load_component("text_encoder", AutoModel.from_pretrained, source, local)
    tokenizer = _load_component("tokenizer", AutoTokenizer.from_pretrained, source, local)
    scheduler = _load_component("scheduler", DDPMScheduler.from_pretrained, source, local)
    if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise RSDistillError(
            f"{source}: scheduler prediction_type {scheduler.config.prediction_type!r} is not supported; "
            "use an epsilon or v_prediction model."
        )
    if class_labels_value is None:
        class_labels_value = settings.get("class_labels_value")
    num_class_embeds = unet.config.num_class_embeds
    out_of_range = num_class_embeds is not None and not 0 <= (class_labels_value or 0) < num_class_embeds
    if class_labels_value is not None and out_of_range:
        raise RSDistillError(
            f"class_labels_value {class_labels_value} is outside the UNet's {num_class_embeds} class "
            f"embeddings ({source}); use a value from 0 to {num_class_embeds - 1}."
        )
    for model in (vae, unet, text_encoder):
        model.eval()
    return DiffusionBundle(vae, unet, text_encoder, tokenizer, scheduler, source, class_labels_value)


def _library_of(component: Any) -> str:
    return type(component).__module__.split(".")[0]


def save_bundle(bundle: DiffusionBundle, folder: str | Path, **settings: Any) -> Path:
    """Writes the bundle as a diffusers folder (loadable by `load_bundle` and `DiffusionPipeline`)."""
    import diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": "StableDiffusionPipeline",
                             "_diffusers_version": diffusers.__version__}
    for name in COMPONENTS:
        component = getattr(bundle, name)
        component.save_pretrained(folder / name)
        index[name] = [_library_of(component), type(component).__name__]
    index.update({"safety_checker": [None, None], "feature_extractor": [None, None],
                  "image_encoder": [None, None], "requires_safety_checker": False})
    write_text_atomic(folder / "model_index.json", json.dumps(index, indent=2))
    write_text_atomic(folder / SETTINGS_FILE, json.dumps(bundle.settings(**settings), indent=2))
    return folder
