"""What fine-tuning checks in its settings (`GeneratorConfig`) before it starts, and what a checkpoint must
share with the run that resumes it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rsdistill.core.config import GeneratorConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import autocast_dtype
from rsdistill.data.context import RunContext

# Settings that may change between a checkpoint and the run resuming it, and those fine-tuning does not read.
RESUMABLE = frozenset({"output_dir", "max_train_steps", "checkpointing_steps", "checkpoints_total_limit",
                       "resume_from_checkpoint", "validation_steps", "progress", "preset", "vae_steps",
                       "classifier_steps", "prompts"})
CONSTANT_SCHEDULES = frozenset({"constant", "constant_with_warmup"})


def resume_settings(config: GeneratorConfig, context: RunContext) -> dict[str, Any]:
    """What a checkpoint must share with the run resuming it."""
    settings = {k: v for k, v in asdict(config).items() if k not in RESUMABLE}
    if config.lr_scheduler not in CONSTANT_SCHEDULES:
        settings["max_train_steps"] = config.max_train_steps
    settings["seed"] = context.seed
    settings["resolution"] = context.resolution
    settings["classes"] = context.dataset.classes
    settings["train_images"] = len(context.dataset.train)
    return settings


def check_finetune(config: GeneratorConfig) -> None:
    """Refuses settings fine-tuning cannot run with, naming the flag."""
    if not config.pretrained_model_name_or_path:
        raise RSDistillError("Fine-tuning needs --pretrained_model_name_or_path (a diffusers folder or hub id).")
    if not config.output_dir:
        raise RSDistillError("Fine-tuning needs --output_dir (where checkpoints and the final bundle go).")
    autocast_dtype(config.mixed_precision)  # refuses an unknown precision
    if not 0.0 <= config.caption_dropout < 1.0:
        raise RSDistillError(f"--caption_dropout must lie in [0, 1), not {config.caption_dropout}.")
    for name in ("train_batch_size", "max_train_steps", "gradient_accumulation_steps", "checkpointing_steps"):
        if getattr(config, name) < 1:
            raise RSDistillError(f"--{name} must be at least 1.")
