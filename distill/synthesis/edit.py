"""Edited copies of real train images: InstructPix2Pix (diffusers' `StableDiffusionInstructPix2PixPipeline`)
under text instructions, written as a set in the common format.

`per_class` train images of each class are drawn with the run's seed; image i gets instruction i modulo the
list (a per-dataset list by default: weather, season, light and haze for scene data; for xBD damage patches
changes that keep the damage). Each record holds the instruction, the model and the source image's key:
the source names a train image, so the set is a derivative of the train split (``rsdistill export`` writes no
record field that names one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import resolve_device
from rsdistill.data.context import RunContext
from rsdistill.data.imageset import check_set_destination, write_image_set

SCENE_INSTRUCTIONS = (
    "make it winter", "add haze", "make it dusk", "make it autumn", "add light fog", "make it overcast",
    "make it summer", "add soft shadows",
)
XBD_INSTRUCTIONS = (
    "add haze", "make it overcast", "make it dusk", "add light fog", "make the colours warmer",
)
METHOD = "instructpix2pix"


def default_instructions(dataset_name: str) -> tuple[str, ...]:
    """The instruction list of a dataset: xBD's keep the damage class, the scene list for the rest."""
    return XBD_INSTRUCTIONS if dataset_name.lower().startswith("xbd") else SCENE_INSTRUCTIONS


def check_instructions(instructions: Sequence[Any], where: str = "--instructions") -> list[str]:
    """The instructions stripped, or a clear error when the list is empty or holds anything but text."""
    bad = [item for item in instructions if not isinstance(item, str) or not item.strip()]
    if bad or not instructions:
        problem = f"holds {bad[0]!r}, not an instruction" if bad else "is empty"
        raise RSDistillError(
            f"The instruction list ({where}) {problem}: give a text file with one instruction a line, "
            "e.g. 'make it winter'."
        )
    return [item.strip() for item in instructions]


def read_instructions(path: str | Path) -> list[str]:
    """One instruction a line from a UTF-8 text file (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise RSDistillError(
            f"Could not read the instruction file {path} (--instructions): {error.strerror}."
        ) from None
    except UnicodeDecodeError:
        raise RSDistillError(
            f"The instruction file {path} (--instructions) is not UTF-8 text: give one instruction a line."
        ) from None
    if "\x00" in text:
        raise RSDistillError(f"The instruction file {path} (--instructions) is not text: give one instruction a line.")
    lines = [line.strip() for line in text.splitlines()]
    return check_instructions([line for line in lines if line and not line.startswith("#")], f"--instructions {path}")


@dataclass(frozen=True)
class EditOptions:
    """How `edit_images` edits.

    Attributes:
        model: Hugging Face hub id or local folder of an InstructPix2Pix pipeline.
        instructions: The instructions, cycled over the images (empty: the dataset's default list).
        per_class: Train images edited per class (fewer where a class has fewer).
        steps: Denoising steps.
        guidance: Text guidance scale.
        image_guidance: Image guidance scale (higher keeps more of the source image).
        batch_size: Images per pipeline call.
    """

    model: str = "timbrooks/instruct-pix2pix"
    instructions: tuple[str, ...] = ()
    per_class: int = 10
    steps: int = 20
    guidance: float = 7.5
    image_guidance: float = 1.5
    batch_size: int = 4


def load_editor(model: str, device: torch.device) -> Any:
    """The InstructPix2Pix pipeline of `model` on `device`; a clear error when it cannot be loaded."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    try:
        pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            model, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RSDistillError(
            f"Could not load the InstructPix2Pix model {model!r} (--model): {reason}. Offline (HF_HUB_OFFLINE=1) "
            "only a local folder or a model already in the Hugging Face cache loads: pass --model /path/to/folder "
            "(a saved StableDiffusionInstructPix2PixPipeline), or download it once with network access."
        ) from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def draw_sources(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """`per_class` indices of every class drawn with `seed`, in class then draw order."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == label))[:per_class] for label in np.unique(labels)]
    return np.concatenate(picked)


def edit_images(context: RunContext, options: EditOptions, out: str | Path) -> Path:
    """Edits `options.per_class` real train images per class and writes them as a set.

    Args:
        context: The dataset (its train split), resolution, device and seed.
        options: The model, instructions and sampling settings.
        out: The set folder (common format; records hold ``instruction``, ``source``, ``model``, ``method``).

    Returns:
        The set folder.

    Raises:
        RSDistillError: A bad instruction list, a model that cannot be loaded, or an unwritable `out`.
    """
    if options.per_class < 1 or options.steps < 1 or options.batch_size < 1:
        raise RSDistillError("--per-class, --steps and --batch-size must be at least 1.")
    instructions = check_instructions(options.instructions or default_instructions(context.dataset.name))
    check_set_destination(out, overwrite=context.overwrite)
    device = resolve_device(context.device)
    pipeline = load_editor(options.model, device)
    train = context.images("train")
    index = draw_sources(np.asarray(train.labels), options.per_class, context.seed)
    edited = []
    prompts = [instructions[i % len(instructions)] for i in range(len(index))]
    for start in tqdm(range(0, len(index), options.batch_size), desc="editing", unit="batch"):
        chunk = index[start : start + options.batch_size]
        pixels = torch.from_numpy(np.array(train.images[chunk])).permute(0, 3, 1, 2).float() / 255.0
        generator = torch.Generator(device="cpu").manual_seed(context.seed + start)
        result = pipeline(
            prompt=prompts[start : start + len(chunk)], image=pixels.to(device), num_inference_steps=options.steps,
            guidance_scale=options.guidance, image_guidance_scale=options.image_guidance, generator=generator,
            output_type="np",
        )
        edited.append(np.clip(np.rint(result.images * 255.0), 0, 255).astype(np.uint8))
    records = [{"instruction": prompt, "text": prompt, "source": train.keys[i], "model": options.model,
                "method": METHOD} for prompt, i in zip(prompts, index.tolist(), strict=True)]
    return write_image_set(out, np.concatenate(edited), np.asarray(train.labels)[index], context.dataset.classes,
                           records)
