"""`rsdistill run`: every stage in order, from one config, skipping what is done and resuming the rest.

Stages that do not depend on the IPC (the base generator, per-image captions, the fine-tuned generator) live
in a shared folder keyed by their fingerprint, so one generator trained per dataset serves IPC 1, 10 and 50::

    <shared_dir>/<dataset>/base-<fp>/          from-scratch bundle (VAE + UNet + text encoder) + latent classifier
    <shared_dir>/<dataset>/captions-<fp>/      one caption per train image
    <shared_dir>/<dataset>/generator-<fp>/     the fine-tuned bundle (checkpoints while training)
    <run_dir>/prototypes/  <run_dir>/prompts/  <run_dir>/synthesis/set/  <run_dir>/refine/set/  <run_dir>/report/
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsdistill.core.artifacts import Stage, fingerprint, read_manifest
from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.config import GeneratorConfig, RunConfig, dump_config, to_dict
from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import resolve_device, seed_everything
from rsdistill.data.dataset import SceneDataset, stratified_holdout
from rsdistill.data.sources import load_dataset

if TYPE_CHECKING:
    from rsdistill.generator.scratch import ScratchPreset


def slug(dataset: SceneDataset) -> str:
    return dataset.name.replace(":", "_").replace("/", "_").strip("_")[-40:]


class Run:
    """One pipeline run: the dataset, the config and where each stage's folder goes."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        data = config.data
        self.run_dir = Path(config.run_dir)
        self.dataset = load_dataset(
            data.dataset, root=data.root, split_file=self._split_file(), split_seed=data.split_seed,
            test_fraction=data.test_fraction,
        )
        shared_root = Path(config.shared_dir) if config.shared_dir else self.run_dir.parent / "shared"
        self.shared = shared_root / slug(self.dataset)
        self.timings: dict[str, dict[str, Any]] = {}

    def _split_file(self) -> Path:
        return self.run_dir / "split-test.txt"

    def shared_path(self, name: str, config: Any, inputs: dict[str, str]) -> Path:
        return self.shared / f"{name}-{fingerprint(name, config, inputs)}"

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
        from rsdistill.generator.bundle import CLASSIFIER_FOLDER

        g = self.config.generator
        settings = base_settings(g)
        inputs = {"data": self.dataset.fingerprint, "seed": str(self.config.seed)}
        folder = self.shared_path("base", settings, inputs)
        stage = Stage(folder.parent, folder.name, settings, inputs)
        if not stage.done:
            print(f"[base] building into {folder}")
            with stage.build() as work:
                self._build_base(work)
        self.record("base", folder)
        bundle = Path(g.pretrained_model_name_or_path) if g.pretrained_model_name_or_path else folder
        return bundle, folder / CLASSIFIER_FOLDER

    def _build_base(self, work: Path) -> None:
        g, data = self.config.generator, self.config.data
        if g.pretrained_model_name_or_path is None:
            from rsdistill.generator.scratch import init_scratch

            init_scratch(self.dataset, work, preset=scratch_preset(g), preset_name=g.preset, seed=self.config.seed,
                         cache_dir=data.cache_dir, device=resolve_device(self.config.device),
                         mixed_precision=g.mixed_precision)
            return
        from rsdistill.generator.bundle import CLASSIFIER_FOLDER, load_bundle
        from rsdistill.generator.finetune_data import encode_latents
        from rsdistill.generator.latent_classifier import DEFAULT_CLASSIFIER_STEPS, train_latent_classifier

        bundle = load_bundle(g.pretrained_model_name_or_path, g.class_labels_value)
        train = self.dataset.images("train", g.resolution, cache_dir=data.cache_dir)
        latents = encode_latents(bundle.to(resolve_device(self.config.device)), train.images)
        kept, held = stratified_holdout(train.labels, data.val_fraction, self.config.seed)
        model, _ = train_latent_classifier(
            latents[kept], train.labels[kept], self.dataset.classes, latents[held], train.labels[held],
            steps=g.classifier_steps or DEFAULT_CLASSIFIER_STEPS, seed=self.config.seed,
            device=resolve_device(self.config.device),
        )
        model.save_pretrained(work / CLASSIFIER_FOLDER)

    # Stage 3a: one caption per train image (what the generator is fine-tuned on).
    def image_captions(self) -> Path | None:
        if self.config.generator.prompts != "captions":
            return None
        from rsdistill.captioning import run_captions

        settings = to_dict(self.config.captions)
        inputs = {"data": self.dataset.fingerprint, "resolution": str(self.config.data.resolution)}
        folder = self.shared_path("captions", settings, inputs)
        run_captions(self.dataset, self.config.captions, folder, resolution=self.config.data.resolution,
                     cache_dir=self.config.data.cache_dir, on_bad_image=self.config.data.on_bad_image,
                     device=self.config.device)
        self.record("captions", folder)
        return folder

    # Stage 4b: the generator fine-tuned with the classifier-consistency loss.
    def generator(self, base: Path, classifier: Path, captions: Path | None) -> Path:
        from rsdistill.generator.finetune import finetune
        from rsdistill.generator.finetune_config import config_from_generator

        g = self.config.generator
        settings = {k: v for k, v in asdict(g).items() if k in FINETUNE_SETTINGS}
        inputs = {"base": fingerprint_of(classifier.parent), "captions": fingerprint_of(captions),
                  "seed": str(self.config.seed)}
        folder = self.shared_path("generator", settings, inputs)
        stage = Stage(folder.parent, folder.name, settings, inputs)
        if not stage.done:
            print(f"[generator] training into {folder} (resumes from its latest checkpoint)")
            with stage.build() as work:
                training = config_from_generator(g, str(base), str(work), self.config.data, seed=self.config.seed,
                                                 captions=str(captions) if captions else None)
                training.latent_classifier = str(classifier)
                finetune(training, dataset=self.dataset)
        self.record("generator", folder)
        return folder

    def prototypes(self, bundle: Path) -> Path:
        from rsdistill.prototypes import run_prototypes

        data = self.config.data
        folder = run_prototypes(self.dataset, self.config.prototypes, self.run_dir, seed=self.config.seed,
                                resolution=data.resolution, cache_dir=data.cache_dir, device=self.config.device,
                                on_bad_image=data.on_bad_image, vae=str(bundle))
        self.record("prototypes", folder)
        return folder

    def prompts(self, prototypes: Path, captions: Path | None) -> Path | None:
        if self.config.generator.prompts != "captions":
            return None
        from rsdistill.captioning import run_captions

        folder = run_captions(self.dataset, self.config.captions, self.run_dir / "prompts",
                              resolution=self.config.data.resolution, prototypes=prototypes,
                              cache_dir=self.config.data.cache_dir, on_bad_image=self.config.data.on_bad_image,
                              device=self.config.device, captions_from=captions)
        self.record("prompts", folder)
        return folder

    def synthesis(self, bundle: Path, prototypes: Path, prompts: Path | None) -> Path:
        from rsdistill.synthesis.synthesize import synthesize

        set_dir = synthesize(bundle, prototypes, prompts, self.dataset, self.config.synthesis,
                             self.run_dir / "synthesis", seed=self.config.seed, ipc=self.config.prototypes.ipc,
                             device=self.config.device, data_resolution=self.config.data.resolution,
                             cache_dir=self.config.data.cache_dir,
                             class_labels_value=self.config.generator.class_labels_value)
        self.record("synthesis", self.run_dir / "synthesis")
        return set_dir

    # Stage 5b: distribution matching against the real train images (0 iterations: the set as synthesized).
    def refinement(self, set_dir: Path) -> Path:
        if self.config.refine.iterations == 0:
            return set_dir
        from rsdistill.synthesis.refine import refine_set

        folder = self.run_dir / "refine"
        refined = refine_set(set_dir, self.dataset, self.config.refine, folder, seed=self.config.seed,
                             resolution=self.config.data.resolution, cache_dir=self.config.data.cache_dir,
                             device=self.config.device, inputs={"synthesis": fingerprint_of(set_dir.parent)})
        self.record("refine", folder)
        return refined

    def evaluation(self, set_dir: Path) -> Path:
        from rsdistill.evaluate.evaluation import evaluate_sets

        out = self.run_dir / "report"
        evaluate_sets([set_dir], self.dataset, self.config.evaluation, out, device=self.config.device,
                      cache_dir=self.config.data.cache_dir)
        return out


BASE_SETTINGS = frozenset({"preset", "pretrained_model_name_or_path", "class_labels_value", "resolution",
                           "vae_steps", "classifier_steps"})
FINETUNE_SETTINGS = frozenset({
    "resolution", "max_train_steps", "train_batch_size", "learning_rate", "lr_scheduler", "lr_warmup_steps",
    "use_lora", "lora_rank", "consistency_lambda", "consistency_max_timestep", "snr_gamma", "caption_dropout",
    "prompts", "mixed_precision", "gradient_accumulation_steps", "class_labels_value",
})


def scratch_preset(g: GeneratorConfig) -> ScratchPreset:
    """The from-scratch preset named by `g`, with the sizes and step counts `g` overrides."""
    from rsdistill.generator.scratch import get_preset

    return get_preset(g.preset, resolution=g.resolution, vae_steps=g.vae_steps, classifier_steps=g.classifier_steps)


def base_settings(g: GeneratorConfig) -> dict[str, Any]:
    """What identifies the base stage: its config keys and, for a preset, the preset's resolved sizes (so that
    a changed preset default builds a new base instead of reusing a stale one) and the precision its VAE
    trains in."""
    settings = {k: v for k, v in asdict(g).items() if k in BASE_SETTINGS}
    if g.pretrained_model_name_or_path is None:
        settings["preset_settings"] = asdict(scratch_preset(g))
        settings["mixed_precision"] = g.mixed_precision
    return settings


def fingerprint_of(folder: Path | None) -> str:
    """The fingerprint recorded in a finished stage folder (its manifest), or 'none'."""
    if folder is None:
        return "none"
    manifest = read_manifest(folder)
    if manifest is None:
        raise RSDistillError(f"{folder} has no manifest: the stage that writes it did not finish.")
    return str(manifest.get("fingerprint"))


def run_pipeline(config: RunConfig, evaluate: bool = True) -> Path:
    """Runs every stage of `config`; returns the report folder (or the set folder without evaluation)."""
    seed_everything(config.seed)
    run = Run(config)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.run_dir / "config.yaml", dump_config(config))
    start = time.perf_counter()
    base, classifier = run.base_generator()
    captions = run.image_captions()
    bundle = run.generator(base, classifier, captions)
    prototypes = run.prototypes(bundle)
    prompts = run.prompts(prototypes, captions)
    set_dir = run.refinement(run.synthesis(bundle, prototypes, prompts))
    distill_wall = time.perf_counter() - start
    write_text_atomic(run.run_dir / "stages.json", json.dumps(
        {"stages": run.timings, "wall_time_s_this_invocation": round(distill_wall, 1)}, indent=2))
    print(f"distilled set: {set_dir}")
    if not evaluate:
        return set_dir
    report = run.evaluation(set_dir)
    print(f"report: {report / 'report.md'}")
    return report

