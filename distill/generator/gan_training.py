"""Training of the pixel-space GAN (`rsdistill.generator.gan`): hinge loss, DiffAugment, optional R1, an EMA copy
of the generator, the classifier-consistency loss and Causal-RSGAN's regularisers (UR, ER), with checkpoints that
resume to the same weights and named failures for divergence and collapse.

A training folder holds::

    classifier/          the consistency classifier (trained first, once)
    checkpoint-<step>/   models.safetensors (G, D, EMA, RNG state), optimizers.pt, history.json,
                         rsdistill_state.json (the step and settings, written last)
    generator/           the EMA generator when training finishes (config.json + model.safetensors)
    training.json        settings, losses every LOG_EVERY steps, the collapse checks, seconds

Every random draw of the training loop comes from one `torch.Generator` whose state each checkpoint saves, so on
a CPU a run resumed from a checkpoint ends with the same weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.errors import RSDistillError
from rsdistill.data.dataset import stratified_holdout
from rsdistill.generator.checkpoints import commit_checkpoint, find_resume_point
from rsdistill.generator.gan import (
    CLASSIFIER_FOLDER,
    GENERATOR_FOLDER,
    GanConfig,
    GanDiscriminator,
    GanGenerator,
    check_gan_shape,
    classifier_view,
    images_to_pixels,
)
from rsdistill.generator.gan_checks import (
    GanDiverged,
    GanSettings,
    check_collapse,
    collapse_ratios,
    real_spreads,
)
from rsdistill.generator.gan_losses import (
    diff_augment,
    entropy_loss,
    hinge_discriminator,
    hinge_generator,
    r1_penalty,
    uniformity_loss,
)
from rsdistill.generator.latent_classifier import LatentClassifier, train_latent_classifier

ADAM_BETAS = (0.5, 0.999)  # DCGAN's
CLASSIFIER_WIDTH = 16
LOG_EVERY = 10
COLLAPSE_CHECK_FROM = 500  # a freshly initialised generator's samples spread little; checked from this step on
MODELS_FILE = "models.safetensors"
OPTIMIZERS_FILE = "optimizers.pt"
HISTORY_FILE = "history.json"
REPORT_FILE = "training.json"


def paired(labels: torch.Tensor) -> torch.Tensor:
    """The generator step's labels: the first half of the batch's labels twice, so every class drawn has at least
    two generated images with different latents (what the within-class UR compares)."""
    half = labels[: len(labels) // 2]
    return torch.cat([half, half, labels[2 * len(half) :]])


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA decay at `step`, ramped up early so the average does not lag far behind a short training."""
    return min(decay, (1 + step) / (10 + step))


def train_pixel_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    steps: int,
    val_fraction: float,
    seed: int,
    device: torch.device,
    progress: bool,
) -> LatentClassifier:
    """The consistency classifier: `train_latent_classifier` on `classifier_view` of the pixels, a stratified
    `val_fraction` of `images` held out to pick its best weights."""
    pixels = torch.cat([classifier_view(images_to_pixels(images[i : i + 1024])) for i in range(0, len(images), 1024)])
    kept, held = stratified_holdout(labels, val_fraction, seed)
    model, _ = train_latent_classifier(
        pixels[kept],
        labels[kept],
        classes,
        pixels[held] if len(held) else None,
        labels[held] if len(held) else None,
        steps=steps,
        batch_size=64,
        width=CLASSIFIER_WIDTH,
        seed=seed,
        device=device,
        progress=progress,
        precision="fp32",
    )
    return model


class GanTrainer:
    """The models, optimisers and random stream of one GAN training, one step at a time."""

    def __init__(
        self, config: GanConfig, settings: GanSettings, classifier: nn.Module, seed: int, device: torch.device
    ) -> None:
        self.settings, self.device = settings, device
        torch.manual_seed(seed)
        self.generator = GanGenerator(config).to(device).train()
        self.discriminator = GanDiscriminator(config).to(device).train()
        self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        self.classifier = classifier.to(device).eval().requires_grad_(False)
        lr = settings.learning_rate
        self.g_optimizer = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=ADAM_BETAS)
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=ADAM_BETAS)
        self.random = torch.Generator().manual_seed(seed)
        self.step = 0

    def latents(self, count: int) -> torch.Tensor:
        return torch.randn(count, self.settings.latent_dim, generator=self.random).to(self.device)

    def augment(self, pixels: torch.Tensor) -> torch.Tensor:
        return diff_augment(pixels, self.settings.diffaugment, self.random)

    def discriminator_losses(self, real: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hinge loss on augmented real and generated images, plus gamma / 2 x R1 when on."""
        with torch.no_grad():
            fake = self.generator(self.latents(len(real)), labels)
        real_in = self.augment(real).requires_grad_(self.settings.r1_gamma > 0)
        real_logits, _ = self.discriminator(real_in, labels)
        fake_logits, _ = self.discriminator(self.augment(fake), labels)
        terms = {"discriminator": hinge_discriminator(real_logits, fake_logits)}
        if self.settings.r1_gamma > 0:
            terms["r1"] = r1_penalty(real_logits, real_in)
            terms["discriminator"] = terms["discriminator"] + self.settings.r1_gamma / 2 * terms["r1"]
        return terms

    def generator_losses(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Adversarial, consistency, UR and ER terms and their weighted sum (``generator``) on images of the
        batch's classes, in same-class pairs (`paired`) when UR compares the images of each class; a term whose
        weight is 0 is measured but adds nothing."""
        s = self.settings
        by_class = s.uniformity_scope == "class"
        labels = paired(labels) if by_class else labels
        fake = self.generator(self.latents(len(labels)), labels)
        logits, features = self.discriminator(self.augment(fake), labels)
        terms = {
            "adversarial": hinge_generator(logits),
            "consistency": F.cross_entropy(self.classifier(classifier_view(fake)), labels),
            "uniformity": uniformity_loss(features, labels if by_class else torch.zeros_like(labels)),
            "entropy": entropy_loss(features),
        }
        total = terms["adversarial"]
        for name, weight in (
            ("consistency", s.consistency_lambda),
            ("uniformity", s.uniformity_weight),
            ("entropy", s.entropy_weight),
        ):
            if weight > 0:
                total = total + weight * terms[name]
        terms["generator"] = total
        return terms

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One discriminator and one generator step on a batch drawn from `images` (uint8, N x 3 x H x W)."""
        index = torch.randint(len(images), (self.settings.batch_size,), generator=self.random)
        real = (images[index].float() / 127.5 - 1.0).to(self.device)
        batch_labels = labels[index].to(self.device)
        d_terms = self.discriminator_losses(real, batch_labels)
        self._check_finite(d_terms)
        self.d_optimizer.zero_grad(set_to_none=True)
        d_terms["discriminator"].backward()
        self.d_optimizer.step()
        self.discriminator.requires_grad_(False)
        g_terms = self.generator_losses(batch_labels)
        self._check_finite(g_terms)
        self.g_optimizer.zero_grad(set_to_none=True)
        g_terms["generator"].backward()
        self.g_optimizer.step()
        self.discriminator.requires_grad_(True)
        self._update_ema()
        self.step += 1
        return {name: float(value.detach()) for name, value in {**d_terms, **g_terms}.items()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = ema_decay_at(self.settings.ema_decay, self.step)
        for average, current in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
            average.lerp_(current, 1 - decay)
        for average, current in zip(self.ema.buffers(), self.generator.buffers(), strict=True):
            average.copy_(current)

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            if not torch.isfinite(value).all():
                raise GanDiverged(self.step + 1, name, float(value.detach()))

    def save(self, folder: Path) -> None:
        """The full training state: models and RNG (safetensors), optimisers (torch.save of plain tensors)."""
        tensors = {
            f"{part}.{k}": v.detach().cpu().contiguous()
            for part, model in self._models().items()
            for k, v in model.state_dict().items()
        }
        tensors["rng"] = self.random.get_state()
        save_file(tensors, folder / MODELS_FILE)
        torch.save(
            {"generator": self.g_optimizer.state_dict(), "discriminator": self.d_optimizer.state_dict()},
            folder / OPTIMIZERS_FILE,
        )

    def load(self, folder: Path, step: int) -> None:
        tensors = load_file(folder / MODELS_FILE)
        for part, model in self._models().items():
            model.load_state_dict(
                {k[len(part) + 1 :]: v.to(self.device) for k, v in tensors.items() if k.startswith(part + ".")}
            )
        self.random.set_state(tensors["rng"])
        optimizers = torch.load(folder / OPTIMIZERS_FILE, weights_only=True, map_location=self.device)
        self.g_optimizer.load_state_dict(optimizers["generator"])
        self.d_optimizer.load_state_dict(optimizers["discriminator"])
        self.step = step

    def _models(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator, "ema": self.ema}


def save_training_checkpoint(
    trainer: GanTrainer, out: Path, settings: dict[str, Any], history: list[dict[str, float]], total_limit: int | None
) -> Path:
    """Writes ``checkpoint-<step>`` (the training state and the loss history so far) with `commit_checkpoint`:
    under a temporary name, renamed when complete, at most `total_limit` kept."""

    def write(partial: Path) -> None:
        partial.mkdir(parents=True)
        trainer.save(partial)
        write_text_atomic(partial / HISTORY_FILE, json.dumps(history))

    return commit_checkpoint(out, trainer.step, settings, total_limit, write)


def load_classifier_or_train(
    out: Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    settings: GanSettings,
    val_fraction: float,
    seed: int,
    device: torch.device,
) -> LatentClassifier:
    """The consistency classifier of a training folder, trained and saved first when it is not there yet."""
    folder = out / CLASSIFIER_FOLDER
    if (folder / "config.json").is_file():
        return LatentClassifier.from_pretrained(folder)
    model = train_pixel_classifier(
        images, labels, classes, settings.classifier_steps, val_fraction, seed, device, settings.progress
    )
    partial = out / f".{CLASSIFIER_FOLDER}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    partial.rename(folder)
    return model


def train_gan(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    settings: GanSettings,
    out: str | Path,
    seed: int = 0,
    device: str | torch.device = "cpu",
    val_fraction: float = 0.1,
) -> GanGenerator:
    """Trains the GAN on `images` into the folder `out` (see the module docstring), resuming from its latest
    checkpoint when `settings.resume_from_checkpoint` says so, and returns the EMA generator.

    Args:
        images: uint8 images (N, R, R, 3); R is the generator's resolution.
        labels: Class indices (N,).
        classes: Class names.
        settings: What trains it (`GanSettings.from_config`).
        out: The training folder (the GAN stage's partial folder in `rsdistill run`).
        seed: Seeds the weights, the batches, the latents and the augmentation.
        device: Where to train.
        val_fraction: Share of `images` held out to pick the consistency classifier's weights.

    Raises:
        RSDistillError: For a resolution the generator cannot make, a checkpoint made with other settings, a loss
            that becomes NaN (`GanDiverged`), or a collapse; the checkpoints stay in `out`.
    """
    out, device = Path(out), torch.device(device)
    out.mkdir(parents=True, exist_ok=True)
    config = GanConfig(len(classes), images.shape[1], settings.latent_dim, settings.width, list(classes))
    check_gan_shape(config.resolution, config.latent_dim, config.width)
    identity = {**settings.identity(), "resolution": config.resolution, "seed": seed, "images": len(images)}
    resume = find_resume_point(out, settings.resume_from_checkpoint, identity)
    classifier = load_classifier_or_train(out, images, labels, classes, settings, val_fraction, seed, device)
    trainer = GanTrainer(config, settings, classifier, seed, device)
    history: list[dict[str, float]] = []
    if resume is not None:
        step, path = resume
        if not (path / HISTORY_FILE).is_file():
            raise RSDistillError(
                f"{path} has no {HISTORY_FILE}: it was written by an older rsdistill or only in part. Delete it "
                f"to resume from an earlier checkpoint in {out}, or delete {out} to train again."
            )
        trainer.load(path, step)
        history = json.loads((path / HISTORY_FILE).read_text())
        print(f"[gan] resumed from {path}")
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    label_tensor = torch.as_tensor(labels, dtype=torch.long)
    reals = real_spreads(images, labels, len(classes))
    checks: list[dict[str, Any]] = []
    start = time.perf_counter()
    last = resume[1] if resume else None
    bar = tqdm(total=settings.steps, initial=trainer.step, desc="gan", disable=not settings.progress)
    while trainer.step < settings.steps:
        try:
            values = trainer.train_step(pixels, label_tensor)
        except GanDiverged as error:
            raise GanDiverged(error.step, error.loss, error.value, str(last or out)) from None
        bar.update(1)
        if trainer.step % LOG_EVERY == 0 or trainer.step == settings.steps:
            history.append({"step": trainer.step, **{k: round(v, 5) for k, v in values.items()}})
            bar.set_postfix(d=f"{values['discriminator']:.3f}", g=f"{values['adversarial']:.3f}")
        if trainer.step % settings.checkpointing_steps == 0 or trainer.step == settings.steps:
            last = save_training_checkpoint(trainer, out, identity, history, settings.checkpoints_total_limit)
            ratios = collapse_ratios(trainer.ema, reals, seed + 1)
            checks.append({"step": trainer.step, "spread_ratio": dict(zip(classes, ratios, strict=True))})
            if trainer.step >= COLLAPSE_CHECK_FROM:
                check_collapse(ratios, list(classes), settings.collapse_fraction, trainer.step, str(last))
    bar.close()
    trainer.ema.save_pretrained(out / GENERATOR_FOLDER)
    report = {
        "settings": identity,
        "history": history,
        "collapse_checks": checks,
        "real_spread": reals,
        "seconds_this_invocation": round(time.perf_counter() - start, 1),
        "classifier_val_accuracy": classifier.config.val_accuracy,
    }
    write_text_atomic(out / REPORT_FILE, json.dumps(report, indent=2))
    return trainer.ema
