"""A membership attack on the generator itself: does the diffusion model tell its train images from unseen ones?

The generator saw every train image while it was fine-tuned; a model that memorised them denoises them better
than real images it never saw. The attack (after Carlini et al. 2023 and Matsumoto et al. 2023, "loss
threshold" on the diffusion loss) noises each image's latent at a few chosen timesteps with fixed noise, asks
the UNet to predict it back (class-name prompt) and scores the image by its denoising error, lower meaning
"member":

- members: real train images (what the generator was trained on); non-members: real test images, split in two
  halves: a calibration half and an evaluation half;
- calibration: per timestep, the errors are standardised by the calibration non-members' mean and spread, and
  the image's score is minus their mean over the timesteps; the threshold for a 1 % false-positive rate is the
  99th percentile of the calibration non-members' scores;
- reported: the AUC (members vs evaluation non-members; 0.5 is chance), the TPR at that calibrated 1 % FPR
  (and the FPR it really gives on the evaluation half), and the AUC of each timestep alone.

What it means for sharing: the verdict judges the set, not the generator (which is not shared). A generator
attack well above chance says the generator holds its train images, so the images it makes may carry them: the
near-copy test of the set is then what stands between them and the set, and the generator must not be shared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from rsdistill.core.runtime import resolve_device
from rsdistill.data.context import RunContext
from rsdistill.evaluate.privacy import balanced_sample
from rsdistill.generator.bundle import DiffusionBundle, load_bundle
from rsdistill.generator.diffusion_math import training_target
from rsdistill.generator.finetune_data import encode_latents, stream_seed, train_prompts

TIMESTEPS = (50, 100, 200, 400)
SAMPLES = 200  # members, and non-members in each half
BATCH = 32


@torch.no_grad()
def denoising_errors(
    bundle: DiffusionBundle, latents: np.ndarray, prompts: list[str], timesteps: tuple[int, ...], seed: int,
    desc: str,
) -> np.ndarray:
    """Per-image mean squared error of the UNet's prediction at each timestep, (N, len(timesteps)).

    The noise of image `i` is drawn from (seed, i), the same at every timestep, so every image meets the same
    kind of draw whichever side it is on.
    """
    device, scheduler = bundle.device, bundle.scheduler
    errors = np.zeros((len(latents), len(timesteps)), dtype=np.float64)
    hidden_of = {text: bundle.encode_prompt([text])[0] for text in set(prompts)}
    for start in tqdm(range(0, len(latents), BATCH), desc=desc, leave=False):
        clean = torch.from_numpy(np.asarray(latents[start : start + BATCH])).to(device)
        noise = torch.stack([
            torch.randn(clean.shape[1:], generator=torch.Generator().manual_seed(stream_seed(seed, start + i)))
            for i in range(len(clean))
        ]).to(device)
        hidden = torch.cat([hidden_of[text] for text in prompts[start : start + BATCH]]).to(device)
        for column, step in enumerate(timesteps):
            t = torch.full((len(clean),), step, dtype=torch.long, device=device)
            noisy = scheduler.add_noise(clean, noise, t)
            prediction = bundle.unet(noisy, t, encoder_hidden_states=hidden,
                                     class_labels=bundle.class_labels(len(clean))).sample
            target = training_target(scheduler, clean, noise, t)
            error = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            errors[start : start + len(clean), column] = error.cpu().numpy()
    return errors


def _auc(members: np.ndarray, outsiders: np.ndarray) -> float:
    truth = np.concatenate([np.ones(len(members)), np.zeros(len(outsiders))])
    return float(roc_auc_score(truth, np.concatenate([members, outsiders])))


def generator_attack(
    context: RunContext, bundle_dir: str | Path, samples: int = SAMPLES, timesteps: tuple[int, ...] = TIMESTEPS,
) -> dict[str, Any]:
    """Runs the attack on the generator bundle at `bundle_dir` (see the module docstring).

    Args:
        context: The dataset the generator was trained on (its train and test splits), device and seed.
        bundle_dir: The fine-tuned generator (a diffusers bundle folder).
        samples: Members drawn from the train split, and non-members in each half of the test split.
        timesteps: The diffusion timesteps the error is measured at.
    """
    bundle = load_bundle(str(bundle_dir)).to(resolve_device(context.device))
    classes = context.dataset.classes
    train, test = context.images("train"), context.images("test")
    members = balanced_sample(train.labels, samples, seed=2)
    outsiders = balanced_sample(test.labels, 2 * samples, seed=3)
    rng = np.random.default_rng(context.seed)
    outsiders = rng.permutation(outsiders)
    calibration, evaluation = np.sort(outsiders[: len(outsiders) // 2]), np.sort(outsiders[len(outsiders) // 2 :])

    def errors(images: Any, labels: np.ndarray, index: np.ndarray, desc: str) -> np.ndarray:
        latents = encode_latents(bundle, np.asarray(images[index]), progress=False)
        prompts = train_prompts([], labels[index], classes, None)
        return denoising_errors(bundle, latents, prompts, timesteps, context.seed, desc)

    inside = errors(train.images, train.labels, members, "generator attack: members")
    reference = errors(test.images, test.labels, calibration, "generator attack: calibration")
    outside = errors(test.images, test.labels, evaluation, "generator attack: non-members")
    mean, spread = reference.mean(axis=0), reference.std(axis=0) + 1e-12

    def score(values: np.ndarray) -> np.ndarray:
        return -((values - mean) / spread).mean(axis=1)

    threshold = float(np.percentile(score(reference), 99))
    return {
        "timesteps": list(timesteps),
        "members": len(members),
        "calibration_non_members": len(calibration),
        "non_members": len(evaluation),
        "auc": _auc(score(inside), score(outside)),
        "tpr_at_1pct_fpr": float(np.mean(score(inside) > threshold)),
        "fpr_at_threshold": float(np.mean(score(outside) > threshold)),
        "auc_per_timestep": {str(t): _auc(-inside[:, i], -outside[:, i]) for i, t in enumerate(timesteps)},
        "prompts": "class names",
    }
