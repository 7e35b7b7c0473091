"""`rsdistill generator init|classifier` and `rsdistill finetune` (flag names as in diffusers'
train_text_to_image.py). Several GPUs: ``accelerate launch -m rsdistill finetune ...``."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from rsdistill.cli.common import COMMANDS, add_data_arguments, dataset_from_args
from rsdistill.core.errors import RSDistillError
from rsdistill.generator.latent_classifier import DEFAULT_CLASSIFIER_STEPS

FINETUNE_HELP = {
    "pretrained_model_name_or_path": "diffusers folder or hub id (SD 1.x/2.x, Text2Earth, a scratch bundle)",
    "output_dir": "where checkpoints, logs, validation grids and the final bundle go",
    "captions": "a captions stage folder (metadata.jsonl); default: 'a satellite image of <class>' prompts",
    "train_batch_size": "images per micro-batch (per device)",
    "max_train_steps": "optimiser steps in total (a resumed run counts from its checkpoint)",
    "learning_rate": "peak learning rate (AdamW)",
    "lr_scheduler": "diffusers schedule name: constant, constant_with_warmup, cosine, linear, ...",
    "lr_warmup_steps": "warm-up steps of the schedule",
    "adam_weight_decay": "AdamW weight decay",
    "max_grad_norm": "gradient clipping norm",
    "gradient_accumulation_steps": "micro-batches per optimiser step",
    "gradient_checkpointing": "recompute UNet activations in the backward pass (less memory, slower)",
    "mixed_precision": "no, fp16 or bf16 (autocast; LoRA keeps its weights in fp32)",
    "checkpointing_steps": "save a resumable checkpoint every N steps",
    "checkpoints_total_limit": "keep at most N checkpoints",
    "resume_from_checkpoint": "'latest' or a checkpoint folder; refused if made with other settings",
    "snr_gamma": "Min-SNR-gamma loss weighting (5.0 is the paper's value); default: plain MSE",
    "validation_steps": "write a sample grid (one image per class) every N steps",
    "seed": "seeds batches, noise, timesteps, caption dropout and LoRA init",
    "use_lora": "train a LoRA adapter on the attention projections instead of the whole UNet",
    "rank": "LoRA rank",
    "consistency_lambda": "weight of the classifier-consistency loss (0: off)",
    "consistency_max_timestep": "the consistency loss applies to timesteps up to this one",
    "caption_dropout": "share of captions replaced by the empty prompt (for classifier-free guidance)",
    "class_labels_value": "class_labels value for a UNet that requires them (Text2Earth-style)",
    "latent_classifier": "latent classifier folder (default: the bundle's latent_classifier/)",
    "augment": "random latent flips and quarter turns",
    "progress": "show progress bars",
}
FROM_DATA_ARGUMENTS = ("dataset", "data_root", "cache_dir", "split_seed", "resolution")


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    from rsdistill.generator.finetune import FinetuneConfig

    add_data_arguments(parser)
    group = parser.add_argument_group("fine-tuning")
    for field in fields(FinetuneConfig):
        if field.name in FROM_DATA_ARGUMENTS:
            continue
        flag = f"--{field.name}"
        required = field.name in ("pretrained_model_name_or_path", "output_dir")
        default = None if required else field.default
        if field.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                               help=FINETUNE_HELP[field.name])
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(field.type), str)
        group.add_argument(flag, type=kind, default=default, required=required,
                           help=f"{FINETUNE_HELP[field.name]}" + ("" if required else f" (default {default})"))


def cmd_finetune(args: argparse.Namespace) -> None:
    from rsdistill.generator.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(**{field.name: getattr(args, field.name) for field in fields(FinetuneConfig)})
    dataset = dataset_from_args(args)
    out = finetune(config, dataset=dataset)
    print(f"wrote {out} (log: {out / 'logs' / 'train_log.jsonl'})")


def cmd_generator_init(args: argparse.Namespace) -> None:
    from rsdistill.core.runtime import resolve_device
    from rsdistill.generator.scratch import get_preset, init_scratch

    preset = get_preset(args.preset, vae_steps=args.vae_steps, classifier_steps=args.classifier_steps,
                        resolution=args.resolution)
    out = Path(args.output_dir)
    if (out / "model_index.json").is_file() and not args.overwrite:
        raise RSDistillError(f"{out} holds a bundle already; pass --overwrite or choose another --output_dir.")
    report = init_scratch(dataset_from_args(args), out, preset, args.preset, seed=args.seed,
                          cache_dir=args.cache_dir, device=resolve_device(args.device),
                          mixed_precision=args.mixed_precision)
    shown = {k: report[k] for k in ("vae_test_psnr", "latent_classifier_val_accuracy",
                                    "latent_classifier_test_accuracy", "timings_s")}
    print(json.dumps(shown, indent=2))
    print(f"wrote {out}; train its UNet with: rsdistill finetune --pretrained_model_name_or_path {out} "
          f"--dataset {args.dataset} --output_dir OUT")


def cmd_generator_classifier(args: argparse.Namespace) -> None:
    from rsdistill.data.dataset import stratified_holdout
    from rsdistill.generator.bundle import CLASSIFIER_FOLDER, load_bundle
    from rsdistill.generator.finetune_data import cached_latents, latents_tag
    from rsdistill.generator.latent_classifier import accuracy, train_latent_classifier

    bundle = load_bundle(args.pretrained_model_name_or_path)
    dataset = dataset_from_args(args)
    train = dataset.images("train", args.resolution, cache_dir=args.cache_dir)
    test = dataset.images("test", args.resolution, cache_dir=args.cache_dir)
    latents = cached_latents(bundle, train, latents_tag(dataset, "train", args.resolution))
    kept, held = stratified_holdout(train.labels, 0.1, args.seed)
    model, _ = train_latent_classifier(latents[kept], train.labels[kept], dataset.classes, latents[held],
                                       train.labels[held], steps=args.classifier_steps, seed=args.seed)
    out = Path(args.output_dir or Path(args.pretrained_model_name_or_path) / CLASSIFIER_FOLDER)
    model.save_pretrained(out)
    test_latents = cached_latents(bundle, test, latents_tag(dataset, "test", args.resolution))
    test_accuracy = accuracy(model, test_latents, test.labels)
    single_view = accuracy(model, test_latents, test.labels, views=1)
    print(f"wrote {out}: validation accuracy {model.config.val_accuracy:.4f}, test accuracy {test_accuracy:.4f} "
          f"(8-view average; single views {single_view:.4f})")


def register(subparsers: argparse._SubParsersAction) -> None:
    from rsdistill.generator.scratch import PRESETS

    generator = subparsers.add_parser("generator", help=COMMANDS["generator"].help)
    actions = generator.add_subparsers(dest="generator_command", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="from-scratch bundle: VAE, random UNet, MiniLM, latent classifier")
    add_data_arguments(init)
    init.add_argument("--preset", choices=tuple(PRESETS), default="scratch-cpu")
    init.add_argument("--output_dir", "--output-dir", dest="output_dir", required=True)
    init.add_argument("--vae_steps", type=int, help="VAE optimiser steps (default: the preset's)")
    init.add_argument("--classifier_steps", type=int, help="latent classifier steps (default: the preset's)")
    init.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no",
                      help="train the VAE under autocast in this precision (weights stay fp32)")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--device", default="auto")
    init.add_argument("--overwrite", action="store_true")
    init.set_defaults(func=cmd_generator_init)

    classifier = actions.add_parser("classifier", help="train a latent classifier for a bundle's VAE")
    add_data_arguments(classifier)
    classifier.add_argument("--pretrained_model_name_or_path", required=True)
    classifier.add_argument("--output_dir", help="default: <bundle>/latent_classifier")
    classifier.add_argument("--classifier_steps", type=int, default=DEFAULT_CLASSIFIER_STEPS)
    classifier.add_argument("--seed", type=int, default=0)
    classifier.set_defaults(func=cmd_generator_classifier)

    finetune = subparsers.add_parser("finetune", help=COMMANDS["finetune"].help)
    add_finetune_arguments(finetune)
    finetune.set_defaults(func=cmd_finetune)
