"""The base stage: a from-scratch bundle built by a preset, or a pretrained bundle's latent classifier."""

from __future__ import annotations

from pathlib import Path

from rsdistill.core.config import GeneratorConfig
from rsdistill.core.runtime import resolve_device
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import stratified_holdout
from rsdistill.generator.bundle import DiffusionBundle
from rsdistill.generator.checkpoints import CHECKPOINTS_FOLDER, LoopCheckpoints
from rsdistill.generator.finetune_data import cached_latents, latents_tag
from rsdistill.generator.latent_classifier import (
    DEFAULT_CLASSIFIER_STEPS,
    LatentClassifier,
    accuracy,
    train_latent_classifier,
)
from rsdistill.generator.scratch import ScratchPreset, get_preset


def scratch_preset(config: GeneratorConfig, resolution: int) -> ScratchPreset:
    """The from-scratch preset `config` names, at `resolution`, with the step counts and autoencoder `config`
    overrides."""
    return get_preset(
        config.preset,
        resolution=resolution,
        vae_steps=config.vae_steps,
        classifier_steps=config.classifier_steps,
        autoencoder=config.autoencoder,
    )


def fit_latent_classifier(
    context: RunContext,
    bundle: DiffusionBundle,
    steps: int | None,
    val_fraction: float,
    out: Path,
    checkpoint_steps: int | None = None,
) -> LatentClassifier:
    """Trains the latent classifier of `bundle`'s VAE on the train split (a stratified `val_fraction` held out
    for model selection) and saves it to `out`.

    With `checkpoint_steps`, the training writes a checkpoint every that many steps into ``out/checkpoints/``
    and resumes from the latest one there; the folder is removed once the classifier is saved.
    """
    device = resolve_device(context.device)
    bundle.to(device)
    train = context.images("train")
    latents = cached_latents(bundle, train, latents_tag(context.dataset, "train", context.resolution))
    kept, held = stratified_holdout(train.labels, val_fraction, context.seed)
    checkpoints = None if checkpoint_steps is None else LoopCheckpoints(out / CHECKPOINTS_FOLDER, checkpoint_steps)
    model, _ = train_latent_classifier(
        latents[kept],
        train.labels[kept],
        context.dataset.classes,
        latents[held],
        train.labels[held],
        steps=steps or DEFAULT_CLASSIFIER_STEPS,
        seed=context.seed,
        device=device,
        checkpoints=checkpoints,
    )
    model.save_pretrained(out)
    if checkpoints is not None:
        checkpoints.remove()
    return model


def test_accuracy(context: RunContext, bundle: DiffusionBundle, model: LatentClassifier) -> tuple[float, float]:
    """The latent classifier's accuracy on the test split: 8-view average and single views."""
    test = context.images("test")
    latents = cached_latents(bundle, test, latents_tag(context.dataset, "test", context.resolution))
    return accuracy(model, latents, test.labels), accuracy(model, latents, test.labels, views=1)
