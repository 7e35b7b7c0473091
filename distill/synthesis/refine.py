"""Stage 5b: distribution-matching refinement of the synthesized set (rsdistill's addition to DPD).

The generated images are optimised in pixel space so that, class by class, their mean embedding under a
randomly initialised ConvNet matches the mean embedding of real train images of that class (distribution
matching, Zhao & Bilen, WACV 2023). Every iteration draws a fresh network, a fresh batch of real images and one
random augmentation applied alike to both sides. Starting from the generated images keeps the set synthetic:
no real image is copied in, only the class statistics that a small generator misses are matched.

All randomness of iteration `i` is drawn from (seed, i), so a run resumed from its last checkpoint ends with
exactly the images of an uninterrupted one (on the same device and thread count).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from rsdistill.core.artifacts import Stage
from rsdistill.core.atomic import replace_atomically
from rsdistill.core.config import RefineConfig, SynthesisConfig
from rsdistill.core.distributed import processes
from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import autocast_dtype, resolve_device
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import ImageArray
from rsdistill.data.imageset import read_image_set, read_records, sample_grid, write_image_set
from rsdistill.generator.finetune_data import stream_seed
from rsdistill.synthesis.matching_networks import Weights, embed, logits, random_weights, siamese_augment, train_teacher
from rsdistill.synthesis.near_copy import NearestReal
from rsdistill.synthesis.objectives import check_objective, matching_loss

SET_FOLDER = "set"
GRID_FILE = "sample_grid.png"
STATE_FILE = "refine_state.pt"
STATS_SAMPLE = 4096
TEACHER_BATCH = 128
STEP_IPC = 10
REFINED = {"mean": "distribution-matching", "m3d": "m3d"}  # the `refined` field of each image


def step_size(config: RefineConfig, labels: Sequence[Any] | np.ndarray) -> float:
    """The SGD step for a set with these labels (indices or names): `learning_rate` times its mean images per
    class / 10."""
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    return config.learning_rate * float(counts.mean()) / STEP_IPC


def channel_stats(images: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (in [0, 1] units) of a fixed random sample of uint8 images (N, H, W, 3)."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), min(STATS_SAMPLE, len(images)), replace=False))
    sample = np.asarray(images[pick], dtype=np.float32) / 255
    mean, std = sample.mean(axis=(0, 1, 2)), sample.std(axis=(0, 1, 2))
    return torch.from_numpy(mean).view(1, 3, 1, 1), torch.from_numpy(std).view(1, 3, 1, 1)


class DistributionMatcher:
    """Matches per-class mean embeddings of a synthetic set to those of real images.

    Args:
        real: The real train images (the only images matched against; never the test split).
        num_classes: Number of classes.
        config: Iterations, network size, real batch and step size.
        seed: Seeds every iteration's network, real batch and augmentation.
        device: Where the networks run.
    """

    def __init__(
        self, real: ImageArray, num_classes: int, config: RefineConfig, seed: int, device: torch.device
    ) -> None:
        self.real, self.config, self.seed, self.device = real, config, seed, device
        self.by_class = [np.flatnonzero(real.labels == label) for label in range(num_classes)]
        empty = [label for label, members in enumerate(self.by_class) if len(members) == 0]
        if empty:
            raise RSDistillError(f"Refinement needs real train images of every class; class {empty[0]} has none.")
        mean, std = channel_stats(real.images, seed)
        self.mean, self.std = mean.to(device), std.to(device)
        # A fresh network every iteration, one compiled graph: the weights are inputs, not constants.
        self.embed = torch.compile(embed, dynamic=False) if config.compile else embed
        self.teacher: Weights | None = None
        self.autocast_dtype = refine_autocast_dtype(config)

    def train_teacher(self, progress: bool = True) -> dict[str, Any]:
        """Trains the teacher (`teacher_steps` on batches of real images) and reports how it went."""
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(stream_seed(self.seed, "refine-teacher"))
        rng = np.random.default_rng(stream_seed(self.seed, "refine-teacher-batches"))
        batch = min(TEACHER_BATCH, len(self.real.labels))

        def sample() -> tuple[torch.Tensor, torch.Tensor]:
            index = np.sort(rng.choice(len(self.real.labels), batch, replace=False))
            return self.normalize(self.real.images[index]), torch.as_tensor(self.real.labels[index], device=self.device)

        side = self.real.images.shape[1]
        self.teacher, losses = train_teacher(sample, len(self.by_class), self.config.teacher_width,
                                             self.config.depth, side, self.config.teacher_steps, generator,
                                             self.device, progress)
        return {"teacher_seconds": round(time.perf_counter() - start, 1),
                "teacher_loss_last_20_mean": round(float(np.mean(losses[-20:])), 4)}

    def normalize(self, images: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(np.asarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255
        return (pixels - self.mean) / self.std

    def to_uint8(self, pixels: torch.Tensor) -> np.ndarray:
        images = ((pixels.detach() * self.std + self.mean).clamp(0, 1) * 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    def real_batch(self, iteration: int) -> torch.Tensor:
        """`real_per_class` real images of every class, class by class, drawn for `iteration`."""
        rng = np.random.default_rng(stream_seed(self.seed, "refine-real", iteration))
        count = self.config.real_per_class
        picks = [rng.choice(members, count, replace=len(members) < count) for members in self.by_class]
        return self.normalize(self.real.images[np.concatenate(picks)])

    def loss(self, synthetic: torch.Tensor, labels: torch.Tensor, class_means: torch.Tensor,
             iteration: int) -> torch.Tensor:
        """Sum over classes of `objective`'s distance between real and synthetic embeddings (``mean``: of their
        means; see `rsdistill.synthesis.objectives`), plus, with a teacher, `teacher_weight` times its
        cross-entropy on the (augmented) synthetic images."""
        generator = torch.Generator().manual_seed(stream_seed(self.seed, "refine-net", iteration))
        weights = [w.to(self.device) for w in random_weights(self.config.width, self.config.depth, generator)]
        augmentation = generator.get_state()
        with torch.autocast(self.device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
            with torch.no_grad():
                real = self.embed(siamese_augment(self.real_batch(iteration), generator), weights).float()
            generator.set_state(augmentation)
            fake = self.embed(siamese_augment(synthetic, generator), weights).float()
            teacher_logits = (logits(siamese_augment(synthetic, generator), self.teacher).float()
                              if self.teacher is not None else None)
        real_by_class = real.view(len(self.by_class), self.config.real_per_class, -1)
        loss = matching_loss(self.config.objective, real_by_class, fake, labels, class_means)
        if teacher_logits is not None:
            loss = loss + self.config.teacher_weight * F.cross_entropy(teacher_logits, labels)
        return loss


def refine_autocast_dtype(config: RefineConfig) -> torch.dtype | None:
    """The autocast dtype of `refine.mixed_precision` (None for ``no``); fp16 is refused, since the pixel
    gradients would need loss scaling."""
    if config.mixed_precision not in ("no", "bf16"):
        raise RSDistillError(f"refine.mixed_precision must be no or bf16, not {config.mixed_precision!r}.")
    return autocast_dtype(config.mixed_precision)


def check_refine(config: RefineConfig) -> None:
    """Refuses refinement settings the stage cannot run with, naming the setting (before anything is read)."""
    if config.iterations < 1:
        raise RSDistillError(f"refine.iterations must be at least 1, not {config.iterations} (set it to 0 to "
                             "leave refinement out).")
    if config.teacher_steps < 0 or config.teacher_weight < 0:
        raise RSDistillError("refine.teacher_steps and refine.teacher_weight must be >= 0 (teacher_steps 0: "
                             "no teacher).")
    for name in ("width", "depth", "real_per_class", "checkpoint_every"):
        if getattr(config, name) < 1:
            raise RSDistillError(f"refine.{name} must be at least 1, not {getattr(config, name)}.")
    check_objective(config.objective)
    refine_autocast_dtype(config)


def stage_settings(config: RefineConfig) -> dict[str, Any]:
    """The settings a refine stage is identified by: the config's fields, `objective` only when it is not
    ``mean`` (a set refined before the setting existed keeps its stage)."""
    settings = asdict(config)
    if settings["objective"] == "mean":
        del settings["objective"]
    return settings


def refine_images(
    images: np.ndarray,
    labels: np.ndarray,
    real: ImageArray,
    num_classes: int,
    config: RefineConfig,
    seed: int = 0,
    device: str | torch.device = "cpu",
    state_path: Path | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Runs distribution matching on uint8 `images` (N, H, W, 3) with class `labels`.

    Args:
        images: The images to refine.
        labels: Their classes (every class needs real images; a class absent from the set is skipped).
        real: Real train images with labels, matched against.
        num_classes: Number of classes.
        config: The refinement settings.
        seed: Seeds every iteration.
        device: Where to run.
        state_path: Checkpoint file: resumed from when present, written every `checkpoint_every` iterations.
        progress: Show a progress bar.

    Returns:
        The refined uint8 images and what happened (losses, seconds per iteration).
    """
    device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    matcher = DistributionMatcher(real, num_classes, config, seed, device)
    synthetic = matcher.normalize(images).requires_grad_(True)
    labels_t = torch.as_tensor(np.asarray(labels), device=device)
    one_hot = F.one_hot(labels_t, num_classes).T.float()
    class_means = one_hot / one_hot.sum(dim=1, keepdim=True).clamp_min(1)
    step = step_size(config, labels)
    optimizer = torch.optim.SGD([synthetic], lr=step, momentum=config.momentum)
    start_iteration, losses = 0, []
    if state_path is not None and state_path.is_file():
        try:  # plain tensors and numbers only: a checkpoint cannot run code when it is read
            state = torch.load(state_path, map_location=device, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            why = ("it holds Python objects other than tensors and numbers, which are not unpickled (they could "
                   "run code)" if isinstance(error, pickle.UnpicklingError) else "it is damaged")
            raise RSDistillError(f"The refinement checkpoint {state_path} cannot be read as plain tensors: {why}. "
                                 "Delete it to start the refinement over.") from None
        with torch.no_grad():
            synthetic.copy_(state["synthetic"])
        optimizer.load_state_dict(state["optimizer"])
        matcher.teacher = state.get("teacher")
        start_iteration, losses = state["iteration"], state["losses"]

    def save_state(done: int) -> None:
        if state_path is not None:
            state = {"synthetic": synthetic.detach(), "optimizer": optimizer.state_dict(), "iteration": done,
                     "losses": losses, "teacher": matcher.teacher}
            replace_atomically(state_path, lambda tmp: torch.save(state, tmp),
                               "Free space there or choose another --out.", what="the refinement checkpoint ")

    teacher_report: dict[str, Any] = {}
    if config.teacher_steps > 0 and matcher.teacher is None:
        teacher_report = matcher.train_teacher(progress)
        save_state(start_iteration)
    start = time.perf_counter()
    bar = tqdm(range(start_iteration, config.iterations), desc=f"refining ({REFINED[config.objective]})",
               initial=start_iteration, total=config.iterations, disable=not progress, leave=False)
    for iteration in bar:
        loss = matcher.loss(synthetic, labels_t, class_means, iteration)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 4))
        bar.set_postfix(loss=f"{losses[-1]:.1f}")
        done = iteration + 1
        if done % config.checkpoint_every == 0 and done < config.iterations:
            save_state(done)
    ran = config.iterations - start_iteration
    report = {
        "iterations": config.iterations,
        "iterations_this_run": ran,
        "step_size": step,
        "objective": config.objective,
        "seconds_per_iteration": round((time.perf_counter() - start) / ran, 4) if ran else None,
        "loss_first": losses[0] if losses else None,
        "loss_last_10_mean": round(float(np.mean(losses[-10:])), 4) if losses else None,
        **teacher_report,
    }
    return matcher.to_uint8(synthetic), report


def refine_set(
    context: RunContext,
    config: RefineConfig,
    out: str | Path,
    set_dir: str | Path,
    inputs: dict[str, str] | None = None,
) -> Path:
    """Refines the set at `set_dir` into the stage folder `out` and returns the refined set (`out/set`).

    Args:
        context: The dataset whose real train images are matched, decoded at the context's resolution (the
            set's images must have it), the seed of every iteration and the device.
        config: The refinement settings.
        out: The stage folder; a finished one with the same settings and inputs is kept.
        set_dir: A set in the common format (the synthesis stage's `set/`).
        inputs: What identifies the set (e.g. the synthesis stage's fingerprint); default: the folder path.

    Under ``accelerate launch`` or ``torchrun`` the main process refines while the others wait: every iteration
    draws one network and one augmentation for the whole set, so the classes are not split (see docs/scaling.md).
    """
    procs = processes(context.device)
    if procs.distributed:
        return procs.on_main(lambda: refine_set(context, config, out, set_dir, inputs))
    dataset, seed, resolution = context.dataset, context.seed, context.resolution
    check_refine(config)
    out = Path(out)
    # The stage records the step it takes, so equal steps at any IPC are one and the same stage.
    step = step_size(config, [record["label"] for record in read_records(Path(set_dir))])
    stage = Stage(out.parent, out.name, {**stage_settings(config), "learning_rate": step, "seed": seed,
                                         "resolution": resolution},
                  {"dataset": dataset.fingerprint, **(inputs or {"set": str(set_dir)})}, overwrite=context.overwrite)
    if stage.done:
        return stage.path / SET_FOLDER
    image_set = read_image_set(set_dir, dataset.classes, resolution=resolution)
    real = context.images("train")
    extra: dict[str, Any] = {}
    with stage.build(extra) as work:
        refined, report = refine_images(image_set.images, image_set.labels, real, len(dataset.classes), config,
                                        seed=seed, device=context.device, state_path=work / STATE_FILE)
        # Refinement moves the images, so how near each now lies to a train image is measured again, in
        # synthesis's default space and threshold.
        nearest = NearestReal.in_pixels16(real)
        nearest_keys, distances = nearest.query(refined)
        threshold = SynthesisConfig.near_copy_threshold
        records = [{**record, "refined": REFINED[config.objective], "nearest_real": key,
                    "nearest_real_distance": round(float(distance), 4)}
                   for record, key, distance in zip(image_set.records, nearest_keys, distances, strict=True)]
        stems = [Path(record["file_name"]).stem for record in image_set.records]
        write_image_set(work / SET_FOLDER, refined, image_set.labels, dataset.classes, records, stems)
        grid = sample_grid(refined, image_set.labels, len(dataset.classes))
        Image.fromarray(grid).save(work / GRID_FILE, format="PNG")
        (work / STATE_FILE).unlink(missing_ok=True)
        change = np.abs(refined.astype(np.int16) - image_set.images.astype(np.int16)).mean()
        extra.update(report, images=len(refined), mean_abs_pixel_change=round(float(change), 3),
                     near_copies=int((distances < threshold).sum()), near_copy_space=nearest.space,
                     near_copy_threshold=threshold)
    return stage.path / SET_FOLDER
