"""The `hf` captioner: any vision-language model that transformers loads, by hub id or local folder.

Image-to-text models (BLIP, GIT) and instruction models that take an image and a prompt (BLIP-2, Florence-2,
LLaVA, Qwen2-VL...) load through `AutoProcessor` and `AutoModelForImageTextToText`. The prompt reaches the
model through the processor's chat template where it has one, and as plain text otherwise; image-to-text
captioners read plain text as the start of the caption (give an empty prompt for unconditioned captions).
Generation is greedy, so the same images give the same captions.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from PIL import Image

from rsdistill.captioning.aggregate import reason
from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import resolve_device

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 (or float16) on CUDA, float32 elsewhere."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise RSDistillError(f"captions.dtype must be auto or one of {', '.join(DTYPES)}, not {dtype!r}.")
    return DTYPES[dtype]


def image_text_model_class() -> type:
    """`AutoModelForImageTextToText`, or `AutoModelForVision2Seq` on older transformers."""
    import transformers

    cls = getattr(transformers, "AutoModelForImageTextToText", None) or getattr(
        transformers, "AutoModelForVision2Seq", None
    )
    if cls is None:
        raise RSDistillError("This transformers version has no image-text-to-text auto class; upgrade it.")
    return cls


def captioning_model_config(name_or_path: str) -> Any:
    """The config of a captioning model (read without its weights), or an error that names it and says why
    not: no such folder or cached hub id, or not an image-to-text model."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise RSDistillError(
            f"Cannot load a model from {name_or_path!r} (captions.model): {reason(error)}. Give a hub id (with "
            "network) or a folder written by save_pretrained that holds config.json."
        ) from None
    if type(config) not in image_text_model_class()._model_mapping:
        raise RSDistillError(
            f"{name_or_path} holds a {config.model_type!r} model, which is not a captioning model. The hf "
            "captioner needs an image-to-text or image-text-to-text model (BLIP, BLIP-2, GIT, Florence-2, "
            "LLaVA, Qwen2-VL...)."
        )
    return config


def load_vlm(name_or_path: str, device: torch.device, dtype: torch.dtype) -> tuple[object, torch.nn.Module]:
    """The processor and model of a captioning model, or an error that names it and says why not."""
    from transformers import AutoProcessor

    config = captioning_model_config(name_or_path)
    model_cls = image_text_model_class()
    try:
        processor = AutoProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError, TypeError) as error:
        raise RSDistillError(f"Cannot load the processor of {name_or_path}: {reason(error)}.") from None
    if getattr(processor, "image_processor", None) is None:
        raise RSDistillError(
            f"{name_or_path} has no image processor (preprocessor_config.json), so it cannot read images. "
            "Save the model's processor next to it with processor.save_pretrained(folder)."
        )
    try:
        model = model_cls.from_pretrained(name_or_path, dtype=dtype)
    except (OSError, ValueError) as error:
        raise RSDistillError(f"Cannot load the weights of {name_or_path}: {reason(error)}.") from None
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and not config.is_encoder_decoder:
        tokenizer.padding_side = "left"
    return processor, model.to(device).eval()


class HFCaptioner:
    """Captions images with a transformers vision-language model.

    Args:
        model: Hub id or local folder (model + processor, as saved by `save_pretrained`).
        prompt: Instruction for instruction models, or the caption's first words for image-to-text models;
            empty for none.
        device: `auto`, `cpu`, `cuda`, `cuda:1`...
        dtype: `auto`, `float32`, `float16` or `bfloat16`.
        batch_size: Images per `generate` call.
        max_new_tokens: Longest caption in tokens.
    """

    def __init__(
        self,
        model: str,
        prompt: str = "",
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        max_new_tokens: int = 40,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.processor, self.model = load_vlm(model, self.device, self.dtype)
        self.name = f"hf:{model}"
        self.prompt = prompt
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.text = self._prompt_text()

    def _prompt_text(self) -> str | None:
        if not self.prompt:
            return None
        if getattr(self.processor, "chat_template", None):
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}
            ]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return self.prompt

    @torch.inference_mode()
    def caption(self, images: np.ndarray, labels: np.ndarray | None = None) -> list[str]:
        """Raw model captions of a uint8 batch (N, H, W, 3); an empty string where the model said nothing."""
        pictures = [Image.fromarray(np.asarray(image)) for image in images]
        kwargs = {"images": pictures, "return_tensors": "pt"}
        if self.text is not None:
            kwargs.update(text=[self.text] * len(pictures), padding=True)
        inputs = self.processor(**kwargs).to(self.device, dtype=self.dtype)
        inputs = {key: value for key, value in inputs.items() if self._accepts(key)}
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt = inputs.get("input_ids")
        if (
            prompt is not None
            and output.shape[1] >= prompt.shape[1]
            and torch.equal(output[:, : prompt.shape[1]], prompt)
        ):
            output = output[:, prompt.shape[1] :]  # decoder-only models return the prompt first
        texts = self.processor.batch_decode(output, skip_special_tokens=True)
        return [self._answer(text) for text in texts]

    def _accepts(self, name: str) -> bool:
        """Whether the model's forward names input `name` (processors may add e.g. token_type_ids)."""
        return name in inspect.signature(self.model.forward).parameters

    def _answer(self, text: str) -> str:
        """The caption without the prompt some models repeat, and on one line."""
        text = " ".join(text.split())
        if self.prompt and text.lower().startswith(self.prompt.lower()):
            text = text[len(self.prompt) :]
        return text.strip(" .,:;").strip()
