"""Stage 5: one synthetic image per prototype, the best of several guided candidates, written as a set.

For every prototype (class, cluster) the sampler draws ``candidates`` images from the prototype's prompt,
steered toward the prototype latent (`rsdistill.generator.sampling`). Candidate ``c`` of prototype ``id`` starts from
the seed ``candidate_seed(seed, id, c)``, so every image can be regenerated alone. The bundle's latent
classifier scores each candidate (on the latent of the decoded, 8-bit image: what is kept is what is
scored) and the best one is kept. Each kept image is checked against the real train images
(`rsdistill.synthesis.near_copy`); with ``reject_near_copies`` a near copy is passed over for the next-best candidate,
and when every candidate is one, a new round of candidates with fresh seeds is drawn.

Work is split into fixed chunks of prototypes (``batch_size // candidates`` of them, all their candidates in
one sampling batch). A finished prototype's image and record are written at once to the stage's partial
folder; an interrupted run redoes only the chunks with missing prototypes, with the same batches, so its
final files are byte-identical to an uninterrupted run's. Under ``accelerate launch`` or ``torchrun``
(`rsdistill.core.distributed`) each process takes every N-th chunk from its rank on, so every prototype is
sampled in the same batch as in a single process and the set is byte-identical to one process's (on the same
device and thread count); once every process is done, the main process writes the set.

Stage folder: ``set/`` (the distilled set, `rsdistill.data.imageset` format), ``sample_grid.png`` (one row per
class) and ``manifest.json`` (counts: prompts truncated, near copies, seconds per kept image...).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from rsdistill.core.artifacts import Stage, read_manifest
from rsdistill.core.atomic import temporary_sibling, write_text_atomic
from rsdistill.core.config import SynthesisConfig
from rsdistill.core.distributed import build_stage, processes
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import SceneDataset, dataset_reader
from rsdistill.data.imageset import sample_grid, write_image_set
from rsdistill.data.names import class_prompt
from rsdistill.generator.bundle import CLASSIFIER_FOLDER, DiffusionBundle, load_bundle
from rsdistill.generator.latent_classifier import LatentClassifier, dihedral_average
from rsdistill.generator.sampling import SamplerSettings, sample_latents
from rsdistill.synthesis.near_copy import NearestReal

SET_FOLDER = "set"
GRID_FILE = "sample_grid.png"
PROGRESS_FOLDER = "progress"
MAX_ROUNDS = 4
SELECTIONS = ("margin", "probability")
PROTOTYPE_TARGETS = ("representative", "centroid")


@dataclass(frozen=True)
class Target:
    """One image of the set to make: a prototype (or, without prototypes, a class slot) and its prompt."""

    index: int
    id: str
    label: int
    class_name: str
    prompt: str
    source_key: str | None = None
    members: tuple[str, ...] = ()


@dataclass
class Candidate:
    """One sampled image of a target, with what selection needs to know about it."""

    target: Target
    number: int
    seed: int
    image: np.ndarray
    score: float | None
    predicted: int | None
    nearest_key: str
    nearest_distance: float


def candidate_seed(seed: int, target_id: str, number: int) -> int:
    """The seed of candidate `number` of a target, independent of batching and process count."""
    digest = hashlib.sha256(f"{seed}/{target_id}/{number}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def load_targets(
    dataset: SceneDataset,
    prototypes_dir: str | Path | None,
    prompts_dir: str | Path | None,
    ipc: int | None,
) -> list[Target]:
    """The images to make, in set order, checked against the dataset and IPC asked for.

    Without a prototypes folder (guidance ``none`` only) there are `ipc` slots per class.
    """
    if prototypes_dir is None:
        if ipc is None:
            raise RSDistillError("Without --prototypes, give the images per class with --ipc.")
        slots = [
            (f"{name}/{i}", label, None, ()) for label, name in enumerate(dataset.classes) for i in range(ipc)
        ]
    else:
        from rsdistill.prototypes import load_prototypes

        found = load_prototypes(prototypes_dir)
        where = Path(prototypes_dir) / "prototypes.json"
        fingerprint = getattr(found, "dataset_fingerprint", None)
        if found.dataset != dataset.name or (fingerprint and fingerprint != dataset.fingerprint):
            raise RSDistillError(
                f"{where} was made for dataset {found.dataset!r} (fingerprint {fingerprint}), but the "
                f"dataset asked for is {dataset.name!r} (fingerprint {dataset.fingerprint}). Run the "
                f"prototypes stage for {dataset.name!r} or pass its folder."
            )
        if ipc is not None and found.ipc != ipc:
            raise RSDistillError(
                f"{where} holds {found.ipc} prototypes per class, but IPC {ipc} was asked for. Run the "
                f"prototypes stage with --ipc {ipc} or ask for IPC {found.ipc}."
            )
        if list(found.classes) != list(dataset.classes):
            raise RSDistillError(
                f"{where} lists classes {found.classes}, not the dataset's {dataset.classes}."
            )
        slots = [(p.id, p.label, p.source_key, tuple(p.members)) for p in found.prototypes]
    prompts = _prompt_lookup(prompts_dir)
    targets = []
    for index, (target_id, label, source_key, members) in enumerate(slots):
        name = dataset.classes[label]
        prompt = class_prompt(name)
        if prompts is not None:
            prompt = prompts.get(target_id, prompts.get(f"{name}/class"))
            if prompt is None:
                raise RSDistillError(
                    f"{Path(prompts_dir) / 'prompts.json'} has no prompt for {target_id!r} (nor a class "
                    f"prompt {name + '/class'!r}); run the captioning stage on these prototypes."
                )
        targets.append(Target(index, target_id, label, name, prompt, source_key, members))
    return targets


def _prompt_lookup(prompts_dir: str | Path | None) -> dict[str, str] | None:
    if prompts_dir is None:
        return None
    from rsdistill.captioning import load_prompts

    return {entry["id"]: entry["prompt"] for entry in load_prompts(prompts_dir)}


def folder_fingerprint(folder: str | Path | None) -> str:
    """What identifies an input folder: its stage fingerprint, else its files' names, sizes and times."""
    if folder is None:
        return ""
    path = Path(folder)
    if not path.exists():
        return str(folder)
    manifest = read_manifest(path)
    if manifest and manifest.get("fingerprint"):
        return str(manifest["fingerprint"])
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def synthesis_stage(
    context: RunContext,
    out: str | Path,
    settings: dict[str, Any],
    ipc: int | None,
    generator_dir: str | Path,
    prototypes_dir: str | Path | None,
    **more_inputs: str | Path | None,
) -> Stage:
    """The synthesis stage folder `out`, identified by `settings` with the run's seed, `ipc` and resolution, and by
    the fingerprints of the generator, the prototypes, `more_inputs` (folders) and the dataset."""
    out = Path(out)
    stage_config = {**settings, "seed": context.seed, "ipc": ipc, "data_resolution": context.resolution}
    folders = {"generator": generator_dir, "prototypes": prototypes_dir, **more_inputs}
    inputs = {name: folder_fingerprint(folder) for name, folder in folders.items()}
    inputs["dataset"] = context.dataset.fingerprint
    return Stage(out.parent, out.name, stage_config, inputs, overwrite=context.overwrite)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Pixels in [-1, 1] (N, 3, H, W) -> uint8 (N, H, W, 3), rounded like diffusers' pipelines."""
    scaled = ((pixels.float().cpu() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).numpy()


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float pixels in [-1, 1] (N, 3, H, W)."""
    return torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def selection_scores(logits: torch.Tensor, labels: torch.Tensor, selection: str) -> torch.Tensor:
    """Target-class margin (its logit minus the best other) or probability, per row."""
    target = logits.gather(1, labels[:, None]).squeeze(1)
    if selection == "probability":
        return logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return target - others


def choose(candidates: Sequence[Candidate], threshold: float, reject: bool) -> Candidate | None:
    """Best-scoring candidate (ties: the earlier), skipping near copies when `reject`; None if none left."""
    allowed = [c for c in candidates if not (reject and c.nearest_distance < threshold)]
    if not allowed:
        return None
    return max(allowed, key=lambda c: (c.score if c.score is not None else 0.0, -c.number))


def load_classifier(bundle_dir: str | Path, classes: list[str], candidates: int) -> LatentClassifier | None:
    """The bundle's latent classifier, checked against the dataset's classes (None if it has none)."""
    folder = Path(bundle_dir) / CLASSIFIER_FOLDER
    if not folder.is_dir():
        if candidates > 1:
            raise RSDistillError(
                f"{bundle_dir} has no {CLASSIFIER_FOLDER}/ to choose among {candidates} candidates; train "
                "one with the generator stage or pass --candidates 1."
            )
        return None
    model = LatentClassifier.from_pretrained(folder)
    known = model.config.classes
    if model.config.num_classes != len(classes) or (known and list(known) != list(classes)):
        raise RSDistillError(
            f"The latent classifier in {folder} was trained for classes {known or model.config.num_classes}, "
            f"not the dataset's {classes}. Use the generator trained on this dataset."
        )
    return model


def pixels_for(dataset: SceneDataset, keys: Sequence[str], resolution: int) -> torch.Tensor:
    """The train images `keys` of `dataset`, decoded at `resolution`, as pixels in [-1, 1] (N, 3, R, R)."""
    read = dataset_reader(dataset)
    return to_pixels(np.stack([read(dataset.source, key, resolution) for key in keys]))


@torch.no_grad()
def prototype_latent(
    bundle: DiffusionBundle, dataset: SceneDataset, target: Target, how: str, batch_size: int
) -> torch.Tensor:
    """Latent of the prototype's representative train image, or the mean latent of its cluster members."""
    resolution = bundle.latent_size * bundle.vae_scale_factor
    keys = [target.source_key] if how == "representative" else list(target.members)
    if not keys or keys[0] is None:
        raise RSDistillError(
            f"Prototype {target.id} has no {'source_key' if how == 'representative' else 'members'}."
        )
    total = None
    for start in range(0, len(keys), batch_size):
        latents = bundle.encode_images(
            pixels_for(dataset, keys[start : start + batch_size], resolution)
        ).float()
        total = latents.sum(0) if total is None else total + latents.sum(0)
    return (total / len(keys)).cpu()


class CandidateSelection:
    """Keeps, for every target, the best of its candidates (`candidates`, made by a subclass), passing over near
    copies with ``reject_near_copies`` (`config`: the synthesis settings; `nearest`: the real train images'
    index)."""

    config: SynthesisConfig
    nearest: NearestReal

    def described(
        self,
        batch: Sequence[tuple[Target, int]],
        seeds: Sequence[int],
        images: np.ndarray,
        scores: Sequence[float | None],
        predicted: Sequence[int | None],
    ) -> list[Candidate]:
        """The candidates of `batch` ((target, number) pairs), each with its nearest real train image."""
        keys, distances = self.nearest.query(images)
        return [
            Candidate(target, number, seed, image, score, guess, key, float(distance))
            for (target, number), seed, image, score, guess, key, distance in zip(
                batch, seeds, images, scores, predicted, keys, distances, strict=True
            )
        ]

    def candidates(self, targets: Sequence[Target], numbers: Sequence[int]) -> list[Candidate]:
        """Candidates `numbers` of every target, in (target, number) order."""
        raise NotImplementedError

    def make(self, targets: Sequence[Target]) -> Iterator[tuple[Target, Candidate, dict[str, Any]]]:
        """The kept candidate of every target, with what it took (candidates tried, near copies rejected)."""
        count, threshold, reject = (
            self.config.candidates,
            self.config.near_copy_threshold,
            self.config.reject_near_copies,
        )
        pending = list(targets)
        tried: dict[int, list[Candidate]] = {t.index: [] for t in targets}
        for round_ in range(MAX_ROUNDS if reject else 1):
            drawn = self.candidates(pending, range(round_ * count, (round_ + 1) * count))
            for candidate in drawn:
                tried[candidate.target.index].append(candidate)
            still = []
            for target in pending:
                kept = choose(tried[target.index], threshold, reject)
                if kept is None:
                    still.append(target)
                else:
                    yield target, kept, self._stats(tried[target.index], threshold, unresolved=False)
            pending = still
            if not pending:
                return
        for target in pending:
            farthest = max(tried[target.index], key=lambda c: (c.nearest_distance, -c.number))
            yield target, farthest, self._stats(tried[target.index], threshold, unresolved=True)

    def _stats(self, tried: list[Candidate], threshold: float, unresolved: bool) -> dict[str, Any]:
        return {
            "candidates_tried": len(tried),
            "near_copy_candidates": sum(c.nearest_distance < threshold for c in tried),
            "near_copy_unresolved": unresolved,
        }


class Synthesizer(CandidateSelection):
    """Samples, scores and checks candidates for targets; holds the models and the real-image index."""

    def __init__(
        self,
        bundle: DiffusionBundle,
        classifier: LatentClassifier | None,
        nearest: NearestReal,
        dataset: SceneDataset,
        config: SynthesisConfig,
        seed: int,
    ) -> None:
        self.bundle, self.classifier, self.nearest, self.dataset = bundle, classifier, nearest, dataset
        self.config, self.seed = config, seed
        self.settings = sampler_settings(config)
        self.negative, _ = bundle.encode_prompt([""])
        self._prompts: dict[int, torch.Tensor] = {}
        self._latents: dict[int, torch.Tensor] = {}

    def _prompt_embeds(self, target: Target) -> torch.Tensor:
        if target.index not in self._prompts:
            self._prompts[target.index] = self.bundle.encode_prompt([target.prompt])[0][0]
        return self._prompts[target.index]

    def _prototype_latents(self, target: Target) -> torch.Tensor:
        if target.index not in self._latents:
            self._latents[target.index] = prototype_latent(
                self.bundle, self.dataset, target, self.config.prototype_target, self.config.batch_size
            )
        return self._latents[target.index]

    @torch.no_grad()
    def candidates(self, targets: Sequence[Target], numbers: Sequence[int]) -> list[Candidate]:
        """Candidates `numbers` of every target, sampled `batch_size` at a time in (target, number) order."""
        items = [(target, number) for target in targets for number in numbers]
        out: list[Candidate] = []
        for start in range(0, len(items), self.config.batch_size):
            batch = items[start : start + self.config.batch_size]
            seeds = [candidate_seed(self.seed, target.id, number) for target, number in batch]
            embeds = torch.stack([self._prompt_embeds(target) for target, _ in batch])
            prototypes = None
            if self.settings.mode != "none":
                prototypes = torch.stack([self._prototype_latents(target) for target, _ in batch])
            latents = sample_latents(self.bundle, embeds, self.negative, seeds, self.settings, prototypes)
            images = to_uint8(self.bundle.decode_latents(latents))
            scores: list[float | None] = [None] * len(batch)
            predicted: list[int | None] = [None] * len(batch)
            if self.classifier is not None:
                logits = dihedral_average(self.classifier, self.bundle.encode_images(to_pixels(images)).float()).cpu()
                labels = torch.tensor([target.label for target, _ in batch])
                scores = selection_scores(logits, labels, self.config.selection).tolist()
                predicted = logits.argmax(dim=1).tolist()
            out += self.described(batch, seeds, images, scores, predicted)
        return out


def sampler_settings(config: SynthesisConfig) -> SamplerSettings:
    """The sampler's part of the config, validated with the rest of the synthesis settings."""
    if config.selection not in SELECTIONS:
        raise RSDistillError(
            f"synthesis.selection {config.selection!r} is unknown; use {' or '.join(SELECTIONS)}."
        )
    if config.prototype_target not in PROTOTYPE_TARGETS:
        raise RSDistillError(
            f"synthesis.prototype_target {config.prototype_target!r} is unknown; "
            f"use {' or '.join(PROTOTYPE_TARGETS)}."
        )
    if config.candidates < 1 or config.batch_size < 1:
        raise RSDistillError("synthesis.candidates and synthesis.batch_size must be at least 1.")
    return SamplerSettings.from_config(config)


def guidance_record(config: SynthesisConfig) -> dict[str, Any]:
    """The settings that made an image, as written in its metadata line."""
    record: dict[str, Any] = {
        "guidance": config.guidance,
        "scheduler": config.scheduler,
        "num_inference_steps": config.num_inference_steps,
        "guidance_scale": config.guidance_scale,
    }
    if config.guidance == "prototype":
        record.update(
            prototype_fraction=config.prototype_fraction, prototype_strength=config.prototype_strength
        )
    if config.guidance == "img2img":
        record["img2img_strength"] = config.img2img_strength
    if config.guidance != "none":
        record["prototype_target"] = config.prototype_target
    return record


def _progress_files(work: Path, index: int) -> tuple[Path, Path]:
    folder = work / PROGRESS_FOLDER
    return folder / f"{index:06d}.png", folder / f"{index:06d}.json"


def save_progress(
    work: Path, target: Target, kept: Candidate, stats: dict[str, Any], threshold: float
) -> None:
    """Writes one finished target: its PNG, then its record (the record's presence marks it done)."""
    png, record_path = _progress_files(work, target.index)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(png)
    Image.fromarray(kept.image).save(tmp, format="PNG")
    os.replace(tmp, png)
    record = {
        "index": target.index,
        "class": target.class_name,
        "text": target.prompt,
        "prototype": target.id,
        "source_key": target.source_key,
        "seed": kept.seed,
        "candidate": kept.number,
        "score": kept.score,
        "predicted": kept.predicted,
        "nearest_key": kept.nearest_key,
        "nearest_distance": round(kept.nearest_distance, 6),
        "near_copy": kept.nearest_distance < threshold,
        **stats,
    }
    write_text_atomic(record_path, json.dumps(record))


def finished(work: Path, count: int) -> dict[int, dict[str, Any]]:
    """Records of the targets already finished in a partial folder."""
    done = {}
    for index in range(count):
        png, record_path = _progress_files(work, index)
        if record_path.is_file() and png.is_file():
            done[index] = json.loads(record_path.read_text())
    return done


def write_outputs(
    work: Path,
    targets: list[Target],
    dataset: SceneDataset,
    config: SynthesisConfig,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merges the finished targets into the set and the grid; returns the figures for the manifest.

    `settings` is what made every image, written in each metadata line (default: `guidance_record(config)`).
    """
    done = finished(work, len(targets))
    missing = [t.id for t in targets if t.index not in done]
    if missing:
        raise RSDistillError(
            f"{len(missing)} prototype(s) were not generated (e.g. {missing[0]}); a process may have failed. "
            "Run the same command again to finish them."
        )
    images, records = [], []
    settings = guidance_record(config) if settings is None else settings
    for target in targets:
        with Image.open(_progress_files(work, target.index)[0]) as image:
            images.append(np.asarray(image.convert("RGB")))
        record = dict(done[target.index])
        record.pop("index")
        predicted = record.pop("predicted")
        record["predicted"] = None if predicted is None else dataset.classes[predicted]
        records.append({**record, **settings, "selection": config.selection})
    array = np.stack(images)
    labels = np.array([t.label for t in targets])
    stems = [f"{t.class_name}_{t.index:05d}" for t in targets]
    write_image_set(work / SET_FOLDER, array, labels, dataset.classes, records, stems)
    Image.fromarray(sample_grid(array, labels, len(dataset.classes))).save(work / GRID_FILE, format="PNG")
    shutil.rmtree(work / PROGRESS_FOLDER)
    agree = [r["predicted"] == r["class"] for r in records if r["predicted"] is not None]
    return {
        "images": len(records),
        "per_class": dict(Counter(r["class"] for r in records)),
        "classifier_agreement": sum(agree) / len(agree) if agree else None,
        "near_copies": sum(r["near_copy"] for r in records),
        "near_copy_candidates": sum(r["near_copy_candidates"] for r in records),
        "near_copy_unresolved": sum(r["near_copy_unresolved"] for r in records),
        "candidates_drawn": sum(r["candidates_tried"] for r in records),
        "extra_candidates": sum(r["candidates_tried"] - config.candidates for r in records),
    }


def synthesize(
    context: RunContext,
    config: SynthesisConfig,
    out: str | Path,
    bundle_dir: str | Path,
    prototypes_dir: str | Path | None,
    prompts_dir: str | Path | None,
    ipc: int | None = None,
    class_labels_value: int | None = None,
) -> Path:
    """Generates the distilled set into the stage folder `out` and returns the set folder (`out/set`).

    Args:
        context: The dataset the prototypes were made from (its train images, decoded at the context's
            resolution, are the near-copy reference), the seed of every candidate (see `candidate_seed`) and
            the device (under ``accelerate launch`` each process uses its own).
        config: The synthesis settings.
        out: The stage folder; a finished one with the same settings and inputs is kept as it is.
        bundle_dir: The diffusion bundle (with ``latent_classifier/`` for candidate selection).
        prototypes_dir: The prototypes stage folder; None only with guidance ``none`` (then `ipc` per class).
        prompts_dir: The captions stage folder (``prompts.json``); None for ``a satellite image of <class>``.
        ipc: Images per class asked for; a prototypes file with another IPC is refused.
        class_labels_value: Overrides the bundle's value for a UNet that requires class labels.

    Returns:
        The set folder.
    """
    dataset, seed = context.dataset, context.seed
    sampler_settings(config)
    if config.guidance != "none" and prototypes_dir is None:
        raise RSDistillError(f"Guidance {config.guidance!r} needs --prototypes (or use --guidance none).")
    targets = load_targets(dataset, prototypes_dir, prompts_dir, ipc)
    stage = synthesis_stage(context, out, asdict(config), ipc, bundle_dir, prototypes_dir, prompts=prompts_dir)
    if stage.done:
        print(f"{stage.path} is finished for these settings; kept as it is.")
        return stage.path / SET_FOLDER
    procs = processes(context.device)
    torch_device = procs.device
    bundle = load_bundle(str(bundle_dir), class_labels_value).to(torch_device)
    classifier = load_classifier(bundle_dir, dataset.classes, config.candidates)
    if classifier is not None:
        classifier.to(torch_device)

    def truncation() -> dict[str, Any]:
        _, truncated = bundle.tokenize([t.prompt for t in targets])
        if truncated:
            print(
                f"warning: {truncated} prompt(s) were longer than the text encoder's "
                f"{bundle.tokenizer.model_max_length} tokens and were truncated."
            )
        return {"prompts_truncated": truncated}

    return generate_set(
        context,
        config,
        stage,
        targets,
        lambda nearest: Synthesizer(bundle, classifier, nearest, dataset, config, seed),
        guidance_record(config),
        truncation,
    )


def generate_set(
    context: RunContext,
    config: SynthesisConfig,
    stage: Stage,
    targets: list[Target],
    make_selection: Callable[[NearestReal], CandidateSelection],
    settings: dict[str, Any],
    finish: Callable[[], dict[str, Any]] = dict,
) -> Path:
    """Builds `stage`: the kept candidate of every target, written as it is finished and resumed by target, then
    merged into the set (see the module docstring); returns the set folder.

    Args:
        context: The dataset (the near-copy reference), the device and the processes of a launch.
        config: The synthesis settings (batching, candidates, near copies, selection).
        stage: The synthesis stage folder.
        targets: The images to make, in set order.
        make_selection: Builds what draws and scores the candidates, given the near-copy index.
        settings: What made every image, written in each metadata line.
        finish: Figures for the manifest, computed on the main process once the set is written.
    """
    dataset, data_resolution = context.dataset, context.resolution
    procs = processes(context.device)
    torch_device = procs.device
    extra: dict[str, Any] = {}
    with build_stage(stage, procs, extra) as work:
        done = finished(work, len(targets))
        start = time.perf_counter()
        nearest = NearestReal.for_dataset(
            dataset, config.near_copy_space, data_resolution, context.cache_dir, torch_device
        )
        selection = make_selection(nearest)
        per_chunk = max(1, config.batch_size // config.candidates)
        chunks = procs.shard([targets[i : i + per_chunk] for i in range(0, len(targets), per_chunk)])
        share = [target for chunk in chunks for target in chunk]
        todo = [chunk for chunk in chunks if any(t.index not in done for t in chunk)]
        setup = time.perf_counter() - start
        for chunk in tqdm(
            todo,
            desc=f"generating ({len(share)} prototypes)",
            unit="batch",
            disable=not procs.is_main,
        ):
            for target, kept, stats in selection.make(chunk):
                if target.index not in done:
                    save_progress(work, target, kept, stats, config.near_copy_threshold)
        procs.barrier()
        if procs.is_main:
            generated = len(targets) - len(done)
            wall = time.perf_counter() - start - setup
            extra.update(write_outputs(work, targets, dataset, config, settings))
            extra.update(finish())
            extra.update(
                {
                    "generated_now": generated,
                    "kept_from_earlier_run": len(done),
                    "seconds_per_image": round(wall / generated, 4) if generated else None,
                    "setup_seconds": round(setup, 3),
                    "processes": procs.count,
                    "device": str(torch_device),
                    "near_copy_space": config.near_copy_space,
                    "near_copy_threshold": config.near_copy_threshold,
                }
            )
    return stage.path / SET_FOLDER
