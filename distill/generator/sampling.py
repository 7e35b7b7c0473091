"""The denoising loop: classifier-free guidance and three ways of steering a sample toward a prototype.

Guidance modes (``mode``):

- ``none``: text-to-image from pure noise, the prompt alone steers.
- ``img2img`` (D4M): the prototype latent noised to ``img2img_strength`` of the schedule is the starting
  point; only the remaining steps are run, as in diffusers' ``StableDiffusionImg2ImgPipeline``.
- ``prototype`` (DPD): sampling starts from pure noise; during the first ``prototype_fraction`` of the
  steps, after each scheduler step, the latent is moved toward the prototype latent ``p``::

      x_{t'} <- x_{t'} + strength * sqrt(alpha_bar_{t'}) * (p - x0_hat_t)

  where ``x0_hat_t`` is the clean-latent estimate made at timestep ``t`` (`predicted_original`), ``t'`` the
  next timestep of the schedule and ``alpha_bar_{t'}`` its cumulative signal rate (1 after the last step).
  Derivation: a DDIM step (eta 0) writes ``x_{t'} = sqrt(alpha_bar_{t'}) x0_hat + sqrt(1 - alpha_bar_{t'})
  eps_hat``. Replacing the clean estimate by ``x0_hat + strength * (p - x0_hat)`` (closing the fraction
  `strength` of its gap to the prototype) while keeping ``eps_hat`` changes ``x_{t'}`` by exactly the term
  above: the pull acts on the clean content, scaled by the share of signal at the next noise level. The
  update is exact for DDIM and a first-order version of the same move for DPM-Solver (whose multistep history
  keeps the unpulled estimates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from rsdistill.core.config import SynthesisConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.generator.bundle import DiffusionBundle
from rsdistill.generator.diffusion_math import predicted_original

SCHEDULERS: dict[str, type[SchedulerMixin]] = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}
GUIDANCE_MODES = ("prototype", "img2img", "none")


@dataclass(frozen=True)
class SamplerSettings:
    """How one batch is sampled: the sampler's part of a `SynthesisConfig` (which holds the defaults), checked
    once. Build it with :meth:`from_config`."""

    mode: str
    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    prototype_fraction: float
    prototype_strength: float
    img2img_strength: float

    @classmethod
    def from_config(cls, config: SynthesisConfig) -> SamplerSettings:
        return cls(
            mode=config.guidance,
            scheduler=config.scheduler,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            prototype_fraction=config.prototype_fraction,
            prototype_strength=config.prototype_strength,
            img2img_strength=config.img2img_strength,
        )

    def __post_init__(self) -> None:
        if self.mode not in GUIDANCE_MODES:
            raise RSDistillError(
                f"synthesis.guidance {self.mode!r} is unknown; use one of {', '.join(GUIDANCE_MODES)}."
            )
        if self.scheduler not in SCHEDULERS:
            raise RSDistillError(
                f"synthesis.scheduler {self.scheduler!r} is unknown; use one of {', '.join(SCHEDULERS)}."
            )
        if self.num_inference_steps < 1:
            raise RSDistillError("synthesis.num_inference_steps must be at least 1.")
        for name in ("prototype_fraction", "img2img_strength"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RSDistillError(f"synthesis.{name} must lie in [0, 1], not {getattr(self, name)}.")
        if not 0.0 <= self.prototype_strength <= 1.0:
            raise RSDistillError(
                f"synthesis.prototype_strength must lie in [0, 1] (the share of the gap between the "
                f"clean-latent estimate and the prototype closed per step), not {self.prototype_strength}."
            )


def make_scheduler(bundle: DiffusionBundle, name: str) -> SchedulerMixin:
    """A fresh sampling scheduler built from the bundle's training scheduler config.

    Clipping of the clean estimate (``clip_sample``, a pixel-space [-1, 1] assumption that some DDPM configs
    carry by default) is switched off: latents are not bounded that way.
    """
    return SCHEDULERS[name].from_config(bundle.scheduler.config, clip_sample=False)


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One standard-normal tensor per seed, drawn on CPU so a seed gives the same noise on every device."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds])


def _alpha_bar_after(scheduler: SchedulerMixin, timesteps: torch.Tensor, index: int) -> torch.Tensor:
    """Cumulative signal rate at the timestep that follows `timesteps[index]` (1 after the last one)."""
    if index + 1 < len(timesteps):
        return scheduler.alphas_cumprod[int(timesteps[index + 1])]
    return torch.tensor(1.0)


@torch.no_grad()
def sample_latents(
    bundle: DiffusionBundle,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    seeds: Sequence[int],
    settings: SamplerSettings,
    prototype_latents: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Runs the sampler for one batch and returns clean latents (scaled like `bundle.encode_images`).

    Args:
        bundle: The diffusion model, already on its device.
        prompt_embeds: Text hidden states (B, L, D), one per sample.
        negative_embeds: Hidden states of the unconditional (empty) prompt, (1, L, D) or (B, L, D).
        seeds: One seed per sample; sample i's starting noise depends on seeds[i] alone.
        settings: Mode, scheduler, steps and guidance strengths.
        prototype_latents: (B, C, h, w) prototype latents; required by the prototype and img2img modes.
        progress: Show a progress bar over the steps.

    Returns:
        Latents (B, C, h, w) in float32 on the bundle's device.
    """
    batch = prompt_embeds.shape[0]
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    if settings.mode != "none" and prototype_latents is None:
        raise ValueError(f"guidance mode {settings.mode!r} needs prototype_latents")
    device, dtype = bundle.device, bundle.unet.dtype
    scheduler = make_scheduler(bundle, settings.scheduler)
    scheduler.set_timesteps(settings.num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    shape = (bundle.latent_channels, bundle.latent_size, bundle.latent_size)
    noise = initial_noise(seeds, shape).to(device, dtype)
    if settings.mode == "img2img":
        # Same arithmetic as diffusers' img2img pipeline: run the last `strength` share of the schedule.
        kept = min(
            int(settings.num_inference_steps * settings.img2img_strength), settings.num_inference_steps
        )
        start = (settings.num_inference_steps - kept) * scheduler.order
        timesteps = timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        if len(timesteps) == 0:
            return prototype_latents.to(device, torch.float32)
        latents = scheduler.add_noise(prototype_latents.to(device, dtype), noise, timesteps[:1].repeat(batch))
    else:
        latents = noise * scheduler.init_noise_sigma
    guided_steps = round(settings.prototype_fraction * len(timesteps)) if settings.mode == "prototype" else 0
    target = prototype_latents.to(device, torch.float32) if guided_steps else None

    use_cfg = settings.guidance_scale > 1.0
    negative = negative_embeds.to(device, dtype).expand(batch, -1, -1)
    hidden = (
        torch.cat([negative, prompt_embeds.to(device, dtype)]) if use_cfg else prompt_embeds.to(device, dtype)
    )
    class_labels = bundle.class_labels(hidden.shape[0])
    for index, t in enumerate(tqdm(timesteps, desc="denoising", leave=False, disable=not progress)):
        model_input = torch.cat([latents, latents]) if use_cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        output = bundle.unet(model_input, t, encoder_hidden_states=hidden, class_labels=class_labels).sample
        if use_cfg:
            unconditional, conditional = output.chunk(2)
            output = unconditional + settings.guidance_scale * (conditional - unconditional)
        clean = predicted_original(scheduler, latents, output, t) if index < guided_steps else None
        latents = scheduler.step(output, t, latents).prev_sample
        if clean is not None:
            pull = settings.prototype_strength * _alpha_bar_after(scheduler, timesteps, index).sqrt()
            latents = (latents.float() + pull.to(device) * (target - clean.float())).to(dtype)
    return latents.float()
