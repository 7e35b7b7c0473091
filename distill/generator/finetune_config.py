"""Settings of a fine-tuning run (`rsdistill finetune` flags; diffusers' train_text_to_image.py names) and their
mapping from a pipeline run's `generator` section."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rsdistill.core.config import DataConfig, GeneratorConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import autocast_dtype
from rsdistill.data.dataset import SceneDataset

# Settings that may change between a checkpoint and the run resuming it.
RESUMABLE = frozenset({"output_dir", "max_train_steps", "checkpointing_steps", "checkpoints_total_limit",
                       "resume_from_checkpoint", "validation_steps", "data_root", "cache_dir", "progress"})
CONSTANT_SCHEDULES = frozenset({"constant", "constant_with_warmup"})


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run; names follow diffusers' train_text_to_image.py."""

    pretrained_model_name_or_path: str
    output_dir: str
    dataset: str = "eurosat"
    data_root: str | None = None
    cache_dir: str | None = None
    split_seed: int = 0
    resolution: int = 64
    captions: str | None = None
    train_batch_size: int = 16
    max_train_steps: int = 1000
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    snr_gamma: float | None = None
    validation_steps: int | None = None
    seed: int = 0
    use_lora: bool = False
    rank: int = 4
    consistency_lambda: float = 0.0
    consistency_max_timestep: int = 400
    caption_dropout: float = 0.1
    class_labels_value: int | None = None
    latent_classifier: str | None = None
    augment: bool = True
    progress: bool = True

    def resume_settings(self, dataset: SceneDataset) -> dict[str, Any]:
        """What a checkpoint must share with the run resuming it."""
        settings = {k: v for k, v in asdict(self).items() if k not in RESUMABLE}
        if self.lr_scheduler not in CONSTANT_SCHEDULES:
            settings["max_train_steps"] = self.max_train_steps
        settings["classes"] = dataset.classes
        settings["train_images"] = len(dataset.train)
        return settings

    def check(self) -> None:
        autocast_dtype(self.mixed_precision)  # refuses an unknown precision
        if not 0.0 <= self.caption_dropout < 1.0:
            raise RSDistillError(f"--caption_dropout must lie in [0, 1), not {self.caption_dropout}.")
        for name in ("train_batch_size", "max_train_steps", "gradient_accumulation_steps", "checkpointing_steps"):
            if getattr(self, name) < 1:
                raise RSDistillError(f"--{name} must be at least 1.")


def config_from_generator(
    generator: GeneratorConfig, bundle: str, output_dir: str, data: DataConfig, seed: int = 0,
    captions: str | None = None,
) -> FinetuneConfig:
    """The fine-tuning settings a pipeline run's `generator` section asks for (captions used when
    `generator.prompts` is ``captions`` and a captions folder is given; class-name prompts otherwise)."""
    return FinetuneConfig(
        pretrained_model_name_or_path=bundle, output_dir=output_dir, dataset=data.dataset, data_root=data.root,
        cache_dir=data.cache_dir, split_seed=data.split_seed, resolution=generator.resolution,
        captions=captions if generator.prompts == "captions" else None,
        train_batch_size=generator.train_batch_size, max_train_steps=generator.max_train_steps,
        learning_rate=generator.learning_rate, lr_scheduler=generator.lr_scheduler,
        lr_warmup_steps=generator.lr_warmup_steps, gradient_accumulation_steps=generator.gradient_accumulation_steps,
        gradient_checkpointing=generator.gradient_checkpointing, mixed_precision=generator.mixed_precision,
        checkpointing_steps=generator.checkpointing_steps, checkpoints_total_limit=generator.checkpoints_total_limit,
        resume_from_checkpoint="latest", snr_gamma=generator.snr_gamma, validation_steps=generator.validation_steps,
        seed=seed, use_lora=generator.use_lora, rank=generator.lora_rank,
        consistency_lambda=generator.consistency_lambda, consistency_max_timestep=generator.consistency_max_timestep,
        caption_dropout=generator.caption_dropout, class_labels_value=generator.class_labels_value,
    )
