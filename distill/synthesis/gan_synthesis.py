"""Stage 5 for ``generator.kind: gan``: one image per prototype from the pixel-space GAN, the best of several
candidates drawn near the prototype's inversion, written as the same set as `rsdistill.synthesis.synthesize`.

DPD's prototype guidance becomes: invert the prototype's representative train image into the generator's latent
space (Adam on z, pixel MSE plus a small pull toward the prior, from a seeded start), then draw each candidate as
``sqrt(1 - s^2) z_prototype + s eps`` with ``s`` = ``generator.gan_prototype_spread`` and ``eps`` from the
candidate's own seed (`candidate_seed`), so no candidate is the inversion itself (a near copy of the real image).
Guidance ``none`` draws plain random z. The GAN stage's pixel classifier scores each candidate (8-view average on
the saved 8-bit image, as in `synthesize`) and selection, near-copy checks, resume and the written set are those of
`synthesize.generate_set`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rsdistill.core.config import GeneratorConfig, SynthesisConfig
from rsdistill.core.distributed import processes
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import SceneDataset
from rsdistill.generator.gan import CLASSIFIER_FOLDER, GENERATOR_FOLDER, GanGenerator, classifier_view
from rsdistill.generator.latent_classifier import LatentClassifier, dihedral_average
from rsdistill.synthesis.near_copy import NearestReal
from rsdistill.synthesis.synthesize import (
    SET_FOLDER,
    Candidate,
    CandidateSelection,
    Target,
    candidate_seed,
    generate_set,
    load_targets,
    pixels_for,
    sampler_settings,
    selection_scores,
    synthesis_stage,
    to_pixels,
    to_uint8,
)

GAN_GUIDANCE = ("prototype", "none")
INVERSION_LEARNING_RATE = 0.05
INVERSION_PRIOR_WEIGHT = 1e-3  # weight of mean(z^2): keeps the inverted z where the generator was trained
INVERSION_NUMBER = -1  # the candidate number whose seed starts a prototype's inversion


def check_gan_synthesis(config: SynthesisConfig, generator: GeneratorConfig) -> None:
    """Refuses synthesis settings the GAN cannot honour, naming the setting and what to use instead."""
    sampler_settings(config)
    if config.guidance not in GAN_GUIDANCE:
        raise RSDistillError(
            f"synthesis.guidance={config.guidance} needs a diffusion generator; with generator.kind=gan use "
            "prototype (candidates near the prototype's inversion) or none (random z)."
        )
    if config.guidance == "prototype" and config.prototype_target != "representative":
        raise RSDistillError(
            f"synthesis.prototype_target={config.prototype_target}: the GAN inverts one real image, the prototype's "
            "representative; set synthesis.prototype_target=representative with generator.kind=gan."
        )
    if not 0 < generator.gan_prototype_spread <= 1:
        raise RSDistillError(
            f"generator.gan_prototype_spread must be in (0, 1] (1: random z), not {generator.gan_prototype_spread}."
        )
    if generator.gan_inversion_steps < 1:
        raise RSDistillError(f"generator.gan_inversion_steps must be at least 1, not {generator.gan_inversion_steps}.")


def seeded_normal(seed: int, size: int) -> torch.Tensor:
    """A standard normal vector of `size` from its own seed."""
    return torch.randn(size, generator=torch.Generator().manual_seed(seed))


def invert(
    generator: GanGenerator, pixels: torch.Tensor, labels: torch.Tensor, start: torch.Tensor, steps: int
) -> torch.Tensor:
    """The z whose image is nearest `pixels` (N, 3, R, R) for `labels`: Adam from `start` (N, latent_dim) on each
    image's pixel MSE plus `INVERSION_PRIOR_WEIGHT` x mean(z^2), summed over images so that each z's steps do not
    depend on the others in its batch."""
    generator.requires_grad_(False)
    z = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=INVERSION_LEARNING_RATE)
    for _ in range(steps):
        made = generator(z, labels)
        per_image = F.mse_loss(made, pixels, reduction="none").flatten(1).mean(1)
        loss = (per_image + INVERSION_PRIOR_WEIGHT * z.pow(2).mean(1)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return z.detach()


def candidate_latent(prototype: torch.Tensor, seed: int, spread: float) -> torch.Tensor:
    """``sqrt(1 - s^2) z_prototype + s eps``, with `eps` from `seed`."""
    return (1 - spread**2) ** 0.5 * prototype + spread * seeded_normal(seed, len(prototype))


class GanSelection(CandidateSelection):
    """Draws candidates from the GAN near each prototype's inversion and scores them with the pixel classifier."""

    def __init__(
        self,
        generator: GanGenerator,
        classifier: LatentClassifier,
        nearest: NearestReal,
        dataset: SceneDataset,
        config: SynthesisConfig,
        settings: GeneratorConfig,
        seed: int,
    ) -> None:
        self.generator, self.classifier, self.nearest, self.dataset = generator, classifier, nearest, dataset
        self.config, self.seed = config, seed
        self.spread, self.inversion_steps = settings.gan_prototype_spread, settings.gan_inversion_steps
        self.device = next(generator.parameters()).device
        self._inverted: dict[int, torch.Tensor] = {}

    def prototype_latents(self, targets: Sequence[Target]) -> None:
        """Inverts the representative images of `targets` not inverted yet (one batch)."""
        todo = [t for t in targets if t.index not in self._inverted]
        if not todo:
            return
        missing = [t.id for t in todo if t.source_key is None]
        if missing:
            raise RSDistillError(f"Prototype {missing[0]} has no source_key (its representative train image).")
        side = self.generator.config.resolution
        pixels = pixels_for(self.dataset, [t.source_key for t in todo], side).to(self.device)
        labels = torch.tensor([t.label for t in todo], device=self.device)
        dim = self.generator.config.latent_dim
        start = torch.stack([seeded_normal(candidate_seed(self.seed, t.id, INVERSION_NUMBER), dim) for t in todo])
        with torch.enable_grad():
            inverted = invert(self.generator, pixels, labels, start.to(self.device), self.inversion_steps)
        for target, z in zip(todo, inverted.cpu(), strict=True):
            self._inverted[target.index] = z

    @torch.no_grad()
    def candidates(self, targets: Sequence[Target], numbers: Sequence[int]) -> list[Candidate]:
        """Candidates `numbers` of every target, `batch_size` at a time in (target, number) order."""
        guided = self.config.guidance == "prototype"
        if guided:
            self.prototype_latents(targets)
        items = [(target, number) for target in targets for number in numbers]
        dim = self.generator.config.latent_dim
        out: list[Candidate] = []
        for start in range(0, len(items), self.config.batch_size):
            batch = items[start : start + self.config.batch_size]
            seeds = [candidate_seed(self.seed, target.id, number) for target, number in batch]
            latents = torch.stack(
                [
                    candidate_latent(self._inverted[target.index], seed, self.spread)
                    if guided
                    else seeded_normal(seed, dim)
                    for (target, _), seed in zip(batch, seeds, strict=True)
                ]
            )
            labels = torch.tensor([target.label for target, _ in batch])
            images = to_uint8(self.generator(latents.to(self.device), labels.to(self.device)))
            view = classifier_view(to_pixels(images).to(self.device))
            logits = dihedral_average(self.classifier, view).cpu()
            scores = selection_scores(logits, labels, self.config.selection).tolist()
            predicted = logits.argmax(dim=1).tolist()
            out += self.described(batch, seeds, images, scores, predicted)
        return out


def gan_record(config: SynthesisConfig, settings: GeneratorConfig) -> dict[str, Any]:
    """What made every image, as written in its metadata line."""
    record: dict[str, Any] = {"generator_kind": "gan", "guidance": config.guidance}
    if config.guidance == "prototype":
        record.update(
            prototype_target=config.prototype_target,
            gan_prototype_spread=settings.gan_prototype_spread,
            gan_inversion_steps=settings.gan_inversion_steps,
        )
    return record


def is_gan_folder(folder: str | Path) -> bool:
    """Whether `folder` is a GAN stage folder (its generator and classifier) rather than a diffusion bundle."""
    path = Path(folder)
    return (path / GENERATOR_FOLDER / "config.json").is_file() and not (path / "model_index.json").is_file()


def load_gan(gan_dir: str | Path, classes: list[str], resolution: int) -> tuple[GanGenerator, LatentClassifier]:
    """The GAN stage's EMA generator and pixel classifier, checked against the dataset's classes and resolution."""
    generator = GanGenerator.from_pretrained(Path(gan_dir) / GENERATOR_FOLDER)
    classifier = LatentClassifier.from_pretrained(Path(gan_dir) / CLASSIFIER_FOLDER)
    known = generator.config.classes
    if list(known) != list(classes) or list(classifier.config.classes) != list(classes):
        raise RSDistillError(
            f"The GAN in {gan_dir} was trained for classes {known}, not the dataset's {classes}. Use the GAN "
            "trained on this dataset."
        )
    if generator.config.resolution != resolution:
        raise RSDistillError(
            f"The GAN in {gan_dir} makes {generator.config.resolution}-pixel images, but data.resolution is "
            f"{resolution}. Train it at this resolution or set data.resolution={generator.config.resolution}."
        )
    return generator, classifier


def synthesize_gan(
    context: RunContext,
    config: SynthesisConfig,
    settings: GeneratorConfig,
    out: str | Path,
    gan_dir: str | Path,
    prototypes_dir: str | Path | None,
    ipc: int | None = None,
) -> Path:
    """Generates the distilled set from the GAN stage folder `gan_dir` into the stage folder `out`; returns the set
    folder (`out/set`).

    Args:
        context: The dataset, the seed of every candidate and the device.
        config: The synthesis settings (guidance prototype or none, candidates, selection, near copies, batching).
        settings: The generator settings (``gan_prototype_spread``, ``gan_inversion_steps``).
        out: The stage folder; a finished one with the same settings and inputs is kept as it is.
        gan_dir: The GAN stage folder (``generator/`` and ``classifier/``).
        prototypes_dir: The prototypes stage folder; None only with guidance ``none`` (then `ipc` per class).
        ipc: Images per class asked for; a prototypes file with another IPC is refused.
    """
    check_gan_synthesis(config, settings)
    if config.guidance == "prototype" and prototypes_dir is None:
        raise RSDistillError("Guidance 'prototype' needs the prototypes folder (or use synthesis.guidance=none).")
    dataset = context.dataset
    targets = load_targets(dataset, prototypes_dir, None, ipc)
    stage = synthesis_stage(context, out, {**asdict(config), **gan_record(config, settings)}, ipc, gan_dir,
                            prototypes_dir)
    if stage.done:
        print(f"{stage.path} is finished for these settings; kept as it is.")
        return stage.path / SET_FOLDER
    device = processes(context.device).device
    generator, classifier = load_gan(gan_dir, dataset.classes, context.resolution)
    generator.to(device).eval()
    classifier.to(device).eval()
    return generate_set(
        context,
        config,
        stage,
        targets,
        lambda nearest: GanSelection(generator, classifier, nearest, dataset, config, settings, context.seed),
        gan_record(config, settings),
    )
