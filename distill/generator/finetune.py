"""Fine-tuning a diffusion bundle on the train split, with the classifier-consistency loss.

The loop follows diffusers' ``train_text_to_image.py`` (and its LoRA variant) on `accelerate`: mixed
precision, gradient accumulation, gradient checkpointing, checkpoints with a total limit, resume from the
latest. The loss per micro-batch is::

    MSE(unet(x_t, t, text), target)  [optionally Min-SNR-weighted]
      + lambda * CE(latent_classifier(x0_hat(x_t, prediction, t)), label)   over samples with t <= T_max

where ``x0_hat`` is the clean-latent estimate (`predicted_original`) and captions dropped for
classifier-free guidance are left out of the second term. Batches, noise and timesteps are functions of
(seed, step), so an interrupted run resumed from a checkpoint ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.config import GeneratorConfig
from rsdistill.core.distributed import Processes, processes
from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import autocast_dtype
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import SceneDataset
from rsdistill.generator.bundle import CLASSIFIER_FOLDER, DiffusionBundle, load_bundle, read_settings, save_bundle
from rsdistill.generator.checkpoints import find_resume_point, save_checkpoint
from rsdistill.generator.diffusion_math import min_snr_weights, predicted_original, training_target
from rsdistill.generator.finetune_config import check_finetune, resume_settings
from rsdistill.generator.finetune_data import (
    PromptEncoder,
    batch_latents,
    cached_latents,
    latents_tag,
    plan_micro_batch,
    train_prompts,
)
from rsdistill.generator.finetune_models import (
    export_unet,
    keep_only,
    load_consistency_classifier,
    prepare_unet,
    write_validation_grid,
)
from rsdistill.generator.latent_classifier import LatentClassifier

OOM_ADVICE = ("Out of GPU memory. Reduce memory with --gradient_checkpointing, --mixed_precision bf16 (or fp16), "
              "a smaller --train_batch_size (with --gradient_accumulation_steps to keep the effective batch), "
              "or --use_lora.")


def consistency_loss(
    classifier: LatentClassifier, scheduler: Any, noisy: torch.Tensor, prediction: torch.Tensor,
    timesteps: torch.Tensor, labels: torch.Tensor, max_timestep: int, conditioned: torch.Tensor,
) -> tuple[torch.Tensor, int]:
    """Mean CE of the classifier on the clean-latent estimate, over conditioned samples with t <= max_timestep.

    Returns the loss (a zero that carries no gradient when no sample qualifies) and the number of samples used.
    """
    mask = (timesteps <= max_timestep) & conditioned
    count = int(mask.sum())
    if count == 0:
        return prediction.new_zeros((), dtype=torch.float32), 0
    clean = predicted_original(scheduler, noisy[mask], prediction[mask], timesteps[mask])
    logits = classifier(clean.float())
    return F.cross_entropy(logits, labels[mask]), count


def diffusion_loss(
    scheduler: Any, prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, snr_gamma: float | None
) -> torch.Tensor:
    """MSE to the target, Min-SNR-gamma weighted per sample when `snr_gamma` is given."""
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weights(scheduler, timesteps, snr_gamma)).mean()


def _accelerator(config: GeneratorConfig, procs: Processes) -> Accelerator:
    # Accelerate keeps one AcceleratorState per process; a second run in the same process (a pipeline, a
    # benchmark) may ask for another precision or accumulation, so the per-run part is cleared (the
    # distributed set-up, PartialState, is kept). Under a launcher, `processes` has set it up already, on the
    # CPU or one GPU per process; launched plainly, accelerate picks the device as it always did.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    try:
        accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                                  mixed_precision=config.mixed_precision, cpu=procs.distributed and procs.cpu)
    except ValueError as error:
        raise RSDistillError(f"--mixed_precision {config.mixed_precision}: {error}") from None
    if accelerator.num_processes != procs.count:
        raise RSDistillError(f"accelerate runs {accelerator.num_processes} process(es) where the launch started "
                             f"{procs.count}; launch with ACCELERATE_USE_CPU=1 on a machine without GPUs.")
    return accelerator


@dataclass
class Trainer:
    """The state one optimisation step needs; `step` runs it and returns the logged figures."""

    config: GeneratorConfig
    seed: int
    accelerator: Accelerator
    bundle: DiffusionBundle
    unet: Any
    optimizer: Any
    lr_scheduler: Any
    parameters: list[torch.nn.Parameter]
    latents: np.ndarray
    labels: torch.Tensor
    prompts: list[str]
    encoder: PromptEncoder
    classifier: LatentClassifier | None
    weight_dtype: torch.dtype

    def micro_losses(self, micro_index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        config, device, scheduler = self.config, self.accelerator.device, self.bundle.scheduler
        plan = plan_micro_batch(
            self.seed, micro_index, config.train_batch_size, len(self.latents), tuple(self.latents.shape[1:]),
            scheduler.config.num_train_timesteps, config.caption_dropout, config.augment,
        )
        clean = batch_latents(self.latents, plan).to(device)
        noise, timesteps = plan.noise.to(device), plan.timesteps.to(device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        texts = ["" if drop else self.prompts[i] for i, drop in zip(plan.indices, plan.dropped.tolist(), strict=True)]
        hidden = self.encoder(texts).to(device, self.weight_dtype)
        prediction = self.unet(noisy.to(self.weight_dtype), timesteps, encoder_hidden_states=hidden,
                               class_labels=self.bundle.class_labels(len(noisy))).sample
        target = training_target(scheduler, clean, noise, timesteps)
        main = diffusion_loss(scheduler, prediction, target, timesteps, config.snr_gamma)
        if self.classifier is None:
            return main, main.new_zeros(()), 0
        consistency, used = consistency_loss(
            self.classifier, scheduler, noisy, prediction, timesteps, self.labels[plan.indices].to(device),
            config.consistency_max_timestep, ~plan.dropped.to(device),
        )
        return main, consistency, used

    def step(self, step: int) -> dict[str, float]:
        config, accelerator = self.config, self.accelerator
        accumulation = config.gradient_accumulation_steps
        totals = {"diffusion_loss": 0.0, "consistency_loss": 0.0, "consistency_samples": 0}
        self.unet.train()
        for micro in range(accumulation):
            micro_index = (step * accumulation + micro) * accelerator.num_processes + accelerator.process_index
            with accelerator.accumulate(self.unet):
                main, consistency, used = self.micro_losses(micro_index)
                accelerator.backward(main + config.consistency_lambda * consistency)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(self.parameters, config.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            totals["diffusion_loss"] += main.item() / accumulation
            totals["consistency_loss"] += consistency.item() / accumulation
            totals["consistency_samples"] += used
        if not (math.isfinite(totals["diffusion_loss"]) and math.isfinite(totals["consistency_loss"])):
            raise RSDistillError(f"The loss became {totals} at step {step + 1}; lower --learning_rate.")
        return {"step": step + 1, **totals, "lr": self.lr_scheduler.get_last_lr()[0]}


def finetune(context: RunContext, config: GeneratorConfig, bundle: DiffusionBundle | None = None) -> Path:
    """Trains the bundle's UNet (LoRA or full) and writes a complete bundle to `config.output_dir`.

    Args:
        context: The dataset (its train split at the context's resolution), the image cache and the seed of
            batches, noise, timesteps, caption dropout and the LoRA initialisation. Under ``accelerate launch``
            or ``torchrun`` the processes train one model data-parallel (`rsdistill.core.distributed`); a
            launch this machine cannot serve is refused before any work.
        config: The generator settings (`pretrained_model_name_or_path` is the starting bundle, `output_dir`
            where the result goes).
        bundle: The starting bundle, already loaded (None: loaded from `config.pretrained_model_name_or_path`).

    Returns:
        The output folder, a diffusers bundle (for LoRA: merged weights, the adapter in ``unet_lora/``).

    Raises:
        RSDistillError: On bad settings, a checkpoint made with other settings, or running out of GPU memory.
    """
    check_finetune(config)
    dataset = context.dataset
    bundle = bundle or load_bundle(config.pretrained_model_name_or_path, config.class_labels_value)
    if config.class_labels_value is not None:
        bundle.class_labels_value = config.class_labels_value
    bundle.class_labels(1)  # a UNet that needs class labels without a value is refused before any work
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = _accelerator(config, processes(context.device))
    settings = resume_settings(config, context)
    resume = find_resume_point(output_dir, config.resume_from_checkpoint, settings)
    try:
        trainer = _build_trainer(context, config, accelerator, bundle)
        start = 0
        if resume is not None:
            start, path = resume
            accelerator.load_state(str(path), strict=not config.use_lora)
            accelerator.print(f"resumed from {path} (step {start})")
        _train(trainer, dataset, output_dir, start, settings)
    except torch.OutOfMemoryError:
        raise RSDistillError(OOM_ADVICE) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export(bundle, accelerator.unwrap_model(trainer.unet), config, output_dir, trainer.encoder.truncated)
    # No `accelerator.end_training()`: there are no trackers to stop, and it would tear down the process group
    # the later stages of a launched `rsdistill run` still use.
    accelerator.wait_for_everyone()
    return output_dir


def _build_trainer(
    context: RunContext, config: GeneratorConfig, accelerator: Accelerator, bundle: DiffusionBundle
) -> Trainer:
    dataset, resolution = context.dataset, context.resolution
    images = context.images("train")
    expected = bundle.latent_size * bundle.vae_scale_factor
    if resolution != expected:
        print(f"note: {bundle.path}'s UNet was built for {expected}px images; training at {resolution}px.")
    weight_dtype = autocast_dtype(accelerator.mixed_precision) or torch.float32
    bundle.vae.to(accelerator.device)
    latents = cached_latents(bundle, images, latents_tag(dataset, "train", resolution), config.progress)
    prompts = train_prompts(images.keys, images.labels, dataset.classes, config.captions)
    classifier = load_consistency_classifier(config, bundle, dataset.classes, accelerator.device)
    bundle.text_encoder.to(accelerator.device, dtype=weight_dtype)
    set_seed(context.seed)  # the LoRA initialisation draws from the global generator
    unet = prepare_unet(bundle.unet, config, weight_dtype, accelerator.device)
    parameters = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    lr_scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_train_steps * accelerator.num_processes,
    )
    if config.use_lora:
        # A LoRA run's checkpoints hold the adapter alone; the frozen base comes from the bundle.
        accelerator.register_save_state_pre_hook(keep_only({n for n, p in unet.named_parameters() if p.requires_grad}))
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    encoder = PromptEncoder(bundle)
    encoder.preload([*prompts, ""], progress=config.progress)
    return Trainer(config, context.seed, accelerator, bundle, unet, optimizer, lr_scheduler, parameters, latents,
                   torch.as_tensor(images.labels), prompts, encoder, classifier, weight_dtype)


def _train(trainer: Trainer, dataset: SceneDataset, output_dir: Path, start: int, settings: dict[str, Any]) -> None:
    config, accelerator = trainer.config, trainer.accelerator
    log_path = output_dir / "logs" / "train_log.jsonl"
    _trim_log(log_path, start, accelerator.is_main_process)
    bar = tqdm(range(start, config.max_train_steps), initial=start, total=config.max_train_steps,
               desc="fine-tuning", disable=not (config.progress and accelerator.is_local_main_process))
    began = time.perf_counter()
    for step in bar:
        record = trainer.step(step)
        bar.set_postfix(diffusion=f"{record['diffusion_loss']:.4f}", consistency=f"{record['consistency_loss']:.3f}")
        done = record["step"]
        if accelerator.is_main_process:
            with log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
        if done % config.checkpointing_steps == 0 or done == config.max_train_steps:
            save_checkpoint(accelerator, output_dir, done, settings, config.checkpoints_total_limit)
        if config.validation_steps and accelerator.is_main_process and done % config.validation_steps == 0:
            write_validation_grid(trainer.bundle, accelerator.unwrap_model(trainer.unet), dataset.classes,
                                  trainer.encoder, output_dir / "validation" / f"step-{done:06d}.png", trainer.seed)
    seconds = time.perf_counter() - began
    images = (config.max_train_steps - start) * config.train_batch_size * config.gradient_accumulation_steps
    summary = {"steps_run": config.max_train_steps - start, "train_seconds": round(seconds, 2),
               "images_per_s": round(images * accelerator.num_processes / seconds, 2) if seconds > 0 else None,
               "device": str(accelerator.device), "processes": accelerator.num_processes,
               "mixed_precision": accelerator.mixed_precision, "torch_threads": torch.get_num_threads()}
    if accelerator.is_main_process:
        write_text_atomic(output_dir / "logs" / "summary.json", json.dumps(summary, indent=2))


def _trim_log(path: Path, step: int, main: bool) -> None:
    """Drops log lines past the resumed step (left by an interrupted run), so each step is logged once."""
    if not main:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def export(bundle: DiffusionBundle, unet: Any, config: GeneratorConfig, output_dir: Path, truncated: int) -> None:
    """Writes the final bundle (merged LoRA weights for LoRA runs) next to the checkpoints."""
    bundle.unet = export_unet(unet, config, output_dir)
    bundle.to("cpu")
    bundle.text_encoder.to(torch.float32)
    source = Path(config.pretrained_model_name_or_path)
    preset = read_settings(source).get("preset") if source.is_dir() else None
    save_bundle(bundle, output_dir, preset=preset, finetuned_from=config.pretrained_model_name_or_path,
                finetune={k: v for k, v in asdict(config).items() if k != "progress"}, truncated_prompts=truncated)
    classifier_source = Path(config.latent_classifier) if config.latent_classifier else source / CLASSIFIER_FOLDER
    if classifier_source.is_dir() and classifier_source.resolve() != (output_dir / CLASSIFIER_FOLDER).resolve():
        shutil.copytree(classifier_source, output_dir / CLASSIFIER_FOLDER, dirs_exist_ok=True)

