"""`rsdistill run`: every stage in order, from one config, skipping what is done and resuming the rest.

Stages that do not depend on the IPC (the base generator, per-image captions, the fine-tuned generator) live
in a shared folder keyed by their fingerprint, so one generator trained per dataset serves IPC 1, 10 and 50::

    <shared_dir>/<dataset>/base-<fp>/          from-scratch bundle (VAE + UNet + text encoder) + latent classifier
    <shared_dir>/<dataset>/captions-<fp>/      one caption per train image
    <shared_dir>/<dataset>/generator-<fp>/     the fine-tuned bundle (checkpoints while training)
    <shared_dir>/<dataset>/gan-<fp>/           generator.kind gan, instead of the three above: the pixel-space GAN
    <run_dir>/prototypes/  <run_dir>/prompts/  <run_dir>/synthesis/set/  <run_dir>/refine/set/  <run_dir>/report/

A run holds the lock of its run folder (``<run_dir>/.rsdistill-run.lock``) from start to end and each stage the
lock of its stage folder, so a second ``rsdistill run`` on the same folder stops with a message. Every setting
is checked before the first stage starts (`Run.check_settings`), with the stages' own checks.

Under ``accelerate launch`` or ``torchrun`` (`rsdistill.core.distributed`) every process runs this, and each
stage is run the way it can be shared: fine-tuning data-parallel, synthesis and evaluation sharded (over
prototypes, over training runs), the features of prototypes and of fid/kid/prdc encoded in shares (k-means and
the metrics on the main process); the base generator, captions, prompts and refinement run on the main process
while the others wait. Whether a stage is done is the main process's answer, shared, so that a process arriving
late never skips a step the others take. Launched plainly, it is one process as before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rsdistill.captioning import run_captions
from rsdistill.captioning.stage import check_captions
from rsdistill.core.artifacts import Stage, fingerprint, read_manifest
from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.config import GeneratorConfig, RunConfig, dump_config, to_dict
from rsdistill.core.distributed import Processes, build_stage, processes
from rsdistill.core.errors import RSDistillError
from rsdistill.core.lock import FolderLock
from rsdistill.core.runtime import resolve_device, seed_everything
from rsdistill.data.context import RUN_SPLIT_FILE, RunContext
from rsdistill.data.dataset import SceneDataset, dataset_slug
from rsdistill.evaluate.evaluation import check_options, evaluate_sets, protocol_from_config
from rsdistill.evaluate.measures import load_metric_models
from rsdistill.generator.base import fit_latent_classifier, scratch_preset
from rsdistill.generator.bundle import CLASSIFIER_FOLDER, check_bundle_source, load_bundle
from rsdistill.generator.finetune import finetune
from rsdistill.generator.finetune_config import check_finetune
from rsdistill.generator.gan import check_gan_shape
from rsdistill.generator.gan_checks import GanSettings
from rsdistill.generator.gan_training import train_gan
from rsdistill.generator.scratch import init_scratch
from rsdistill.prototypes import run_prototypes
from rsdistill.prototypes.checks import check_ipc
from rsdistill.prototypes.encoders import load_encoder
from rsdistill.prototypes.kmeans import faiss_gpu
from rsdistill.synthesis.gan_synthesis import check_gan_synthesis, synthesize_gan
from rsdistill.synthesis.near_copy import DEFAULT_SPACE
from rsdistill.synthesis.refine import check_refine, refine_set
from rsdistill.synthesis.synthesize import folder_fingerprint, sampler_settings, synthesize

SPLIT_FILE = RUN_SPLIT_FILE
GENERATOR_KINDS = ("diffusion", "gan")
RUN_LOCK = ".rsdistill-run.lock"


def slug(dataset: SceneDataset) -> str:
    """The dataset's folder name under the shared folder (checked to be one plain name)."""
    return dataset_slug(dataset.name)


def run_lock(run_dir: Path) -> FolderLock:
    """The lock a run holds on its run folder."""
    return FolderLock(run_dir / RUN_LOCK, f"The run folder {run_dir}")


class Run:
    """One pipeline run: the dataset, the config and where each stage's folder goes."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.context = RunContext.load(config, self.run_dir / SPLIT_FILE)
        self.dataset = self.context.dataset
        shared_root = Path(config.shared_dir) if config.shared_dir else self.run_dir.parent / "shared"
        self.shared = shared_root / slug(self.dataset)
        self.timings: dict[str, dict[str, Any]] = {}
        self.procs = processes(config.device)

    def shared_path(self, name: str, config: Any, inputs: dict[str, str]) -> Path:
        return self.shared / f"{name}-{fingerprint(name, config, inputs)}"

    def shared_alone(
        self, name: str, settings: Any, inputs: dict[str, str], make: Callable[[Path], None], note: str = ""
    ) -> Path:
        """The shared stage `name`, built by `make(work)` on the main process unless it is done, and recorded."""
        folder = self.shared_path(name, settings, inputs)
        stage = Stage(folder.parent, folder.name, settings, inputs, family=name)
        if not self.procs.share(stage.done):  # the main process's view: every process joins the same steps
            print(f"[{name}] building into {folder}{note}")
            build_alone(self.procs, stage, make)
        self.record(name, folder)
        return folder

    def check_settings(self, evaluate: bool = True) -> None:
        """Refuses, before the first stage starts, any setting a later stage would refuse, with that stage's
        own check: the device, the generator (preset, a pretrained bundle that cannot be found offline,
        fine-tuning settings), the captioner and text embedder, the IPC, the prototype and near-copy encoders,
        the sampler, refinement and evaluation (options, protocol, the optional metrics' models)."""
        config, context = self.config, self.context
        resolve_device(config.device)
        g = config.generator
        if is_gan(g):
            check_gan(config, context.resolution)
        else:
            base_settings(g, context.resolution)
            if g.pretrained_model_name_or_path:
                check_bundle_source(g.pretrained_model_name_or_path)
            check_finetune(replace(g, pretrained_model_name_or_path=str(self.shared), output_dir=str(self.shared)))
        if uses_captions(g):
            check_captions(config.captions, config.device)
        check_ipc(self.dataset.class_counts("train"), config.prototypes.ipc, "prototypes.ipc")
        faiss_gpu(config.prototypes.faiss_device)
        for spec in (config.prototypes.encoder, config.synthesis.near_copy_space):
            if spec not in ("vae", DEFAULT_SPACE):
                load_encoder(spec, device=config.device)
        if not is_gan(g):
            sampler_settings(config.synthesis)
        if config.refine.iterations != 0:
            check_refine(config.refine)
        if evaluate:
            check_options(config.evaluation, [self.run_dir / "refine" / "set"])
            protocol_from_config(config.evaluation, self.dataset, context.resolution)
            load_metric_models(config.evaluation, resolve_device(config.device))

    def record(self, name: str, folder: Path) -> None:
        manifest = read_manifest(folder) or {}
        self.timings[name] = {
            "folder": str(folder),
            "wall_time_s": manifest.get("wall_time_s"),
            "peak_memory_mb": manifest.get("peak_memory_mb"),
        }

    # Stage 4a: the base bundle (from scratch) or, for a pretrained bundle, its latent classifier alone.
    def base_generator(self) -> tuple[Path, Path]:
        """Returns (bundle folder to fine-tune, latent classifier folder)."""
        g = self.config.generator
        settings = base_settings(g, self.context.resolution)
        inputs = {"data": self.dataset.fingerprint, "seed": str(self.config.seed)}
        folder = self.shared_alone("base", settings, inputs, self._build_base)
        bundle = Path(g.pretrained_model_name_or_path) if g.pretrained_model_name_or_path else folder
        return bundle, folder / CLASSIFIER_FOLDER

    def _build_base(self, work: Path) -> None:
        g, context = self.config.generator, self.context
        if g.pretrained_model_name_or_path is None:
            init_scratch(context, scratch_preset(g, context.resolution), work, g.preset,
                         mixed_precision=g.mixed_precision, checkpoint_steps=g.checkpointing_steps)
            return
        bundle = load_bundle(g.pretrained_model_name_or_path, g.class_labels_value)
        fit_latent_classifier(context, bundle, g.classifier_steps, self.config.data.val_fraction,
                              work / CLASSIFIER_FOLDER, checkpoint_steps=g.checkpointing_steps)

    # Stage 3a: one caption per train image (what the generator is fine-tuned on).
    def image_captions(self) -> Path | None:
        if not uses_captions(self.config.generator):
            return None
        settings = to_dict(self.config.captions)
        inputs = {"data": self.dataset.fingerprint, "resolution": str(self.config.data.resolution)}
        folder = self.shared_path("captions", settings, inputs)
        self.procs.on_main(lambda: run_captions(self.context, self.config.captions, folder))
        self.record("captions", folder)
        return folder

    # Stage 4b: the generator fine-tuned with the classifier-consistency loss.
    def generator(self, base: Path, classifier: Path, captions: Path | None) -> Path:
        g = self.config.generator
        settings = {k: v for k, v in asdict(g).items() if k in FINETUNE_SETTINGS}
        settings["resolution"] = self.context.resolution
        inputs = {"base": fingerprint_of(classifier.parent), "captions": fingerprint_of(captions),
                  "seed": str(self.config.seed)}
        folder = self.shared_path("generator", settings, inputs)
        stage = Stage(folder.parent, folder.name, settings, inputs, family="generator")
        if not self.procs.share(stage.done):  # the main process's view: every process joins the same steps
            print(f"[generator] training into {folder} (resumes from its latest checkpoint)")
            with build_stage(stage, self.procs) as work:
                training = replace(g, pretrained_model_name_or_path=str(base), output_dir=str(work),
                                   captions=str(captions) if captions else None, latent_classifier=str(classifier),
                                   resume_from_checkpoint="latest")
                finetune(self.context, training)
        self.record("generator", folder)
        return folder

    # Stage 4 for generator.kind gan: the pixel-space GAN and its pixel classifier, instead of stages 3a, 4a, 4b.
    def gan_generator(self) -> Path:
        """Trains the GAN into its shared stage folder (resuming from the latest checkpoint) and returns it."""
        settings = gan_stage_settings(self.config, self.context.resolution)
        inputs = {"data": self.dataset.fingerprint, "seed": str(self.config.seed)}
        return self.shared_alone("gan", settings, inputs, self._build_gan, " (resumes from its latest checkpoint)")

    def _build_gan(self, work: Path) -> None:
        train = self.context.images("train")
        training = replace(self.config.generator, resume_from_checkpoint="latest")
        train_gan(train.images, train.labels, self.dataset.classes, GanSettings.from_config(training), work,
                  seed=self.config.seed, device=resolve_device(self.config.device),
                  val_fraction=self.config.data.val_fraction)

    def prototypes(self, bundle: Path) -> Path:
        """The prototypes stage: every process encodes its share of the train split, the main process clusters."""
        folder = run_prototypes(self.context, self.config.prototypes, self.run_dir / "prototypes", vae=str(bundle))
        self.record("prototypes", folder)
        return folder

    def prompts(self, prototypes: Path, captions: Path | None) -> Path | None:
        if not uses_captions(self.config.generator):
            return None
        folder = self.procs.on_main(lambda: run_captions(self.context, self.config.captions, self.run_dir / "prompts",
                                                         prototypes=prototypes, captions_from=captions))
        self.record("prompts", folder)
        return folder

    def synthesis(self, bundle: Path, prototypes: Path, prompts: Path | None) -> Path:
        if is_gan(self.config.generator):
            set_dir = synthesize_gan(self.context, self.config.synthesis, self.config.generator,
                                     self.run_dir / "synthesis", bundle, prototypes, ipc=self.config.prototypes.ipc)
            self.record("synthesis", self.run_dir / "synthesis")
            return set_dir
        set_dir = synthesize(self.context, self.config.synthesis, self.run_dir / "synthesis", bundle, prototypes,
                             prompts, ipc=self.config.prototypes.ipc,
                             class_labels_value=self.config.generator.class_labels_value)
        self.record("synthesis", self.run_dir / "synthesis")
        return set_dir

    # Stage 5b: distribution matching against the real train images (0 iterations: the set as synthesized).
    def refinement(self, set_dir: Path) -> Path:
        if self.config.refine.iterations == 0:
            return set_dir
        folder = self.run_dir / "refine"
        refined = refine_set(self.context, self.config.refine, folder, set_dir,
                             inputs={"synthesis": fingerprint_of(set_dir.parent)})
        self.record("refine", folder)
        return refined

    def evaluation(self, set_dir: Path) -> Path:
        """Scores the set; with `evaluation.privacy_verdict`, also judges whether it is fit to share
        (report/privacy.json and a section of report.md; see rsdistill.export.verdict)."""
        from rsdistill.export.verdict import record_verdict, with_privacy_attack

        out = self.run_dir / "report"
        evaluation = with_privacy_attack(self.config.evaluation)
        if not evaluation.privacy_verdict:
            evaluate_sets(self.context, evaluation, out, [set_dir])
            return out
        generator = self.timings.get("generator", {}).get("folder")
        space = self.config.synthesis.near_copy_space

        def verdict(report: dict[str, Any], work: Path) -> None:
            record_verdict(self.context, evaluation, set_dir, work, report, space=space, generator=generator)

        inputs = {"verdict_space": space, "verdict_generator": folder_fingerprint(generator)}
        evaluate_sets(self.context, evaluation, out, [set_dir], inputs=inputs, finish=verdict)
        return out


BASE_SETTINGS = frozenset({"preset", "pretrained_model_name_or_path", "class_labels_value", "vae_steps",
                           "classifier_steps"})
FINETUNE_SETTINGS = frozenset({
    "max_train_steps", "train_batch_size", "learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_weight_decay",
    "max_grad_norm", "use_lora", "rank", "consistency_lambda", "consistency_max_timestep", "snr_gamma",
    "caption_dropout", "augment", "prompts", "mixed_precision", "gradient_accumulation_steps", "class_labels_value",
})


def base_settings(g: GeneratorConfig, resolution: int) -> dict[str, Any]:
    """What identifies the base stage: its config keys, the resolution and, for a preset, the preset's resolved
    sizes (so that a changed preset default builds a new base instead of reusing a stale one) and the precision
    its VAE trains in."""
    settings = {k: v for k, v in asdict(g).items() if k in BASE_SETTINGS}
    settings["resolution"] = resolution
    if g.pretrained_model_name_or_path is None:
        settings["preset_settings"] = asdict(scratch_preset(g, resolution))
        settings["mixed_precision"] = g.mixed_precision
    return settings


def is_gan(g: GeneratorConfig) -> bool:
    """Whether `g` asks for the pixel-space GAN (refusing an unknown generator.kind)."""
    if g.kind not in GENERATOR_KINDS:
        raise RSDistillError(f"generator.kind {g.kind!r} is unknown; use {' or '.join(GENERATOR_KINDS)}.")
    return g.kind == "gan"


def uses_captions(g: GeneratorConfig) -> bool:
    """Whether the run captions images: a diffusion generator prompted with captions (the GAN takes classes)."""
    return not is_gan(g) and g.prompts == "captions"


def check_gan(config: RunConfig, resolution: int) -> None:
    """Refuses, by name, the settings a GAN run cannot honour (see `GanSettings`, `check_gan_synthesis`)."""
    g = config.generator
    GanSettings.from_config(g)
    check_gan_shape(resolution, g.gan_latent_dim, g.gan_width)
    if g.pretrained_model_name_or_path:
        raise RSDistillError(
            "generator.pretrained_model_name_or_path names a diffusion bundle; generator.kind=gan trains its GAN "
            "from scratch. Drop the setting, or use generator.kind=diffusion."
        )
    if config.prototypes.encoder == "vae":
        raise RSDistillError(
            "prototypes.encoder=vae means the generator's VAE, and generator.kind=gan has none. Set "
            "prototypes.encoder to efficientnet-lite0 (ImageNet features) or pixels."
        )
    check_gan_synthesis(config.synthesis, g)


def gan_stage_settings(config: RunConfig, resolution: int) -> dict[str, Any]:
    """What identifies the GAN stage: the settings that decide its weights, the resolution and the share of the
    train split held out for its classifier."""
    settings = GanSettings.from_config(config.generator).identity()
    return {**settings, "resolution": resolution, "val_fraction": config.data.val_fraction}


def build_alone(procs: Processes, stage: Stage, make: Callable[[Path], None]) -> None:
    """Builds `stage` with `make(work)` on the main process while the others wait (what is not split)."""

    def build() -> None:
        with stage.build() as work:
            make(work)

    procs.on_main(build)


def fingerprint_of(folder: Path | None) -> str:
    """The fingerprint recorded in a finished stage folder (its manifest), or 'none'."""
    if folder is None:
        return "none"
    manifest = read_manifest(folder)
    if manifest is None:
        raise RSDistillError(f"{folder} has no manifest: the stage that writes it did not finish.")
    return str(manifest.get("fingerprint"))


def run_pipeline(config: RunConfig, evaluate: bool = True) -> Path:
    """Runs every stage of `config`, holding the run folder's lock; returns the report folder (or the set
    folder without evaluation).

    Raises:
        RSDistillError: When another command holds the run folder, or a setting is refused (before any stage).
    """
    seed_everything(config.seed)
    with ExitStack() as stack:
        if processes(config.device).is_main:  # under a launcher, the main process holds the lock for all
            stack.enter_context(run_lock(Path(config.run_dir)).held())
        run = Run(config)
        run.check_settings(evaluate)
        return run_stages(run, evaluate)


def run_stages(run: Run, evaluate: bool) -> Path:
    """Every stage of `run` in order, skipping what is done."""
    config = run.config
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if run.procs.is_main:
        write_text_atomic(run.run_dir / "config.yaml", dump_config(config))
    start = time.perf_counter()
    if is_gan(config.generator):
        bundle, captions = run.gan_generator(), None
    else:
        base, classifier = run.base_generator()
        captions = run.image_captions()
        bundle = run.generator(base, classifier, captions)
    prototypes = run.prototypes(bundle)
    prompts = run.prompts(prototypes, captions)
    set_dir = run.refinement(run.synthesis(bundle, prototypes, prompts))
    distill_wall = time.perf_counter() - start
    if run.procs.is_main:
        write_text_atomic(run.run_dir / "stages.json", json.dumps(
            {"stages": run.timings, "wall_time_s_this_invocation": round(distill_wall, 1)}, indent=2))
    print(f"distilled set: {set_dir}")
    if not evaluate:
        return set_dir
    report = run.evaluation(set_dir)
    print(f"report: {report / 'report.md'}")
    return report

