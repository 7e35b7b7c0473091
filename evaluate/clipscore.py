"""CLIP score and zero-shot accuracy of a set with any open_clip model.

The model is named as open_clip names it: a built-in architecture with `pretrained` (a tag or a checkpoint
file), ``hf-hub:org/repo``, or ``local-dir:/path`` (a folder with ``open_clip_config.json`` and the weights).
CLIP score (Hessel et al. 2021) = 100 * max(cos(image, text), 0), with each image's own text from the set's
metadata when it has one, else the class prompt; zero-shot accuracy classifies each image among the class
prompts.

Class prompts use the class names in plain words (``AnnualCrop`` -> "a satellite photo of annual crop.",
`rsdistill.data.names.plain_words`). A RemoteCLIP checkpoint file (e.g. ``RemoteCLIP-ViT-B-32.pt`` from
chendelong/RemoteCLIP) loads as its open_clip architecture with the file as `pretrained`:
``load_clip("ViT-B-32", "/path/RemoteCLIP-ViT-B-32.pt")``, on the command line ``--clip-model ViT-B-32
--clip-pretrained /path/RemoteCLIP-ViT-B-32.pt``. Zero-shot accuracy on a split without any training is
`zero_shot_accuracy` (scripts/augmentation_study.py --clip-model adds it as a baseline row).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from rsdistill.core.errors import RSDistillError
from rsdistill.data.names import plain_words

TEMPLATE = "a satellite photo of {}."


def load_clip(
    model_name: str, pretrained: str | None = None, device: str | torch.device = "cpu"
) -> tuple[Any, Any, Any]:
    """(model, preprocess, tokenizer) of an open_clip model; a clear error when its weights are missing."""
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(model_name)
    except (RuntimeError, FileNotFoundError, ValueError, OSError) as error:
        raise RSDistillError(
            f"Could not load the open_clip model {model_name!r} (pretrained={pretrained!r}): {error}. Pass "
            "--clip-model local-dir:/folder (open_clip_config.json + weights) or a built-in name with "
            "--clip-pretrained /path/to/checkpoint."
        ) from None
    return model.eval(), preprocess, tokenizer


@torch.inference_mode()
def _embed_images(
    model: Any, preprocess: Any, images: np.ndarray, device: torch.device, batch: int = 64
) -> torch.Tensor:
    out = []
    for start in range(0, len(images), batch):
        pixels = torch.stack([preprocess(Image.fromarray(image)) for image in images[start : start + batch]])
        out.append(model.encode_image(pixels.to(device)).float())
    features = torch.cat(out)
    return features / features.norm(dim=1, keepdim=True)


@torch.inference_mode()
def _embed_texts(model: Any, tokenizer: Any, texts: list[str], device: torch.device) -> torch.Tensor:
    features = model.encode_text(tokenizer(texts).to(device)).float()
    return features / features.norm(dim=1, keepdim=True)


def class_prompts(classes: list[str], template: str = TEMPLATE) -> list[str]:
    """One prompt per class, from its name in plain words."""
    return [template.format(plain_words(name)) for name in classes]


def zero_shot_accuracy(
    clip: tuple[Any, Any, Any], images: np.ndarray, labels: np.ndarray, classes: list[str], template: str = TEMPLATE
) -> float:
    """Top-1 accuracy (percent) of uint8 (N, H, W, 3) images classified among the class prompts."""
    model, preprocess, tokenizer = clip
    device = next(model.parameters()).device
    image_features = _embed_images(model, preprocess, images, device)
    class_features = _embed_texts(model, tokenizer, class_prompts(classes, template), device)
    predictions = (image_features @ class_features.T).argmax(dim=1).cpu().numpy()
    return float((predictions == np.asarray(labels)).mean() * 100.0)


def clip_metrics(
    clip: tuple[Any, Any, Any],
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    texts: list[str] | None = None,
    template: str = TEMPLATE,
) -> dict[str, float]:
    """CLIP score (mean over images) and zero-shot top-1 accuracy (percent) of uint8 (N, H, W, 3) images."""
    model, preprocess, tokenizer = clip
    device = next(model.parameters()).device
    image_features = _embed_images(model, preprocess, images, device)
    prompts = class_prompts(classes, template)
    class_features = _embed_texts(model, tokenizer, prompts, device)
    own = [t if t else prompts[int(label)] for t, label in zip(texts or [""] * len(images), labels, strict=True)]
    own_features = _embed_texts(model, tokenizer, own, device)
    score = 100.0 * (image_features * own_features).sum(dim=1).clamp_min(0)
    predictions = (image_features @ class_features.T).argmax(dim=1).cpu().numpy()
    return {
        "clip_score": float(score.mean()),
        "zero_shot_accuracy": float((predictions == labels).mean() * 100.0),
        "texts_from_metadata": int(sum(bool(t) for t in (texts or []))),
    }
