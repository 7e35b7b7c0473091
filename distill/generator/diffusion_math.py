"""Closed-form relations of the DDPM forward process used by fine-tuning and by synthesis.

With ``a_t = alphas_cumprod[t]``, a noisy latent is ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``. An epsilon
model predicts ``eps``; a v-prediction model predicts ``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0``.
"""

from __future__ import annotations

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.training_utils import compute_snr

from rsdistill.core.errors import RSDistillError


def _per_sample(values: torch.Tensor, timesteps: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """`values[timesteps]` shaped to broadcast against `like` (B, ...), in float32."""
    timesteps = torch.as_tensor(timesteps, device=like.device).long()
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(like.shape[0])
    picked = values.to(like.device, torch.float32)[timesteps]
    return picked.reshape(-1, *([1] * (like.ndim - 1)))


def _alphas_cumprod(scheduler: SchedulerMixin) -> torch.Tensor:
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        name = type(scheduler).__name__
        raise RSDistillError(f"{name} has no alphas_cumprod; use a DDPM-family scheduler.")
    return alphas


def predicted_original(
    scheduler: SchedulerMixin,
    noisy: torch.Tensor,
    model_output: torch.Tensor,
    timesteps: torch.Tensor | int,
) -> torch.Tensor:
    """Estimate of the clean latent x_0 from a noisy latent and the model's prediction.

    Args:
        scheduler: Any scheduler with ``alphas_cumprod`` and ``config.prediction_type`` (epsilon,
            v_prediction or sample).
        noisy: Noisy latents x_t, (B, C, h, w).
        model_output: The UNet's prediction for `noisy`.
        timesteps: Training timesteps, (B,) or one scalar for the whole batch.

    Returns:
        x_0 estimate, in `model_output`'s dtype; gradients flow back into `model_output`.
    """
    alpha = _per_sample(_alphas_cumprod(scheduler), timesteps, noisy)
    sqrt_alpha, sqrt_sigma = alpha.sqrt(), (1 - alpha).sqrt()
    noisy32, output32 = noisy.float(), model_output.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        x0 = (noisy32 - sqrt_sigma * output32) / sqrt_alpha
    elif kind == "v_prediction":
        x0 = sqrt_alpha * noisy32 - sqrt_sigma * output32
    elif kind == "sample":
        x0 = output32
    else:
        raise RSDistillError(f"Unsupported prediction_type {kind!r}; use epsilon or v_prediction.")
    return x0.to(model_output.dtype)


def training_target(
    scheduler: SchedulerMixin, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict for `latents` noised with `noise` at `timesteps`."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise RSDistillError(f"Unsupported prediction_type {kind!r} for training; use epsilon or v_prediction.")


def snr(scheduler: SchedulerMixin, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio a_t / (1 - a_t) per timestep."""
    return compute_snr(scheduler, timesteps)


def min_snr_weights(scheduler: SchedulerMixin, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023), as in diffusers' train_text_to_image."""
    ratio = snr(scheduler, timesteps)
    clipped = torch.clamp(ratio, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (ratio + 1)
    return clipped / ratio
