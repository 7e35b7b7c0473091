"""`rsdistill generator init|classifier` and `rsdistill finetune` (flag names as in diffusers'
train_text_to_image.py; the settings are `GeneratorConfig`'s, with the defaults `rsdistill run` uses).
Several GPUs: ``accelerate launch -m rsdistill finetune ...``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rsdistill.cli.common import COMMANDS, add_config_flags, context_from_args
from rsdistill.core.errors import RSDistillError


def cmd_finetune(args: argparse.Namespace) -> None:
    from rsdistill.generator.finetune import finetune

    config, context = context_from_args(args)
    out = finetune(context, config.generator)
    print(f"wrote {out} (log: {out / 'logs' / 'train_log.jsonl'})")


def cmd_generator_init(args: argparse.Namespace) -> None:
    from rsdistill.generator.base import scratch_preset
    from rsdistill.generator.scratch import init_scratch

    config, context = context_from_args(args)
    g = config.generator
    if not g.output_dir:
        raise RSDistillError("`rsdistill generator init` needs --output_dir (where the bundle goes).")
    out = Path(g.output_dir)
    if (out / "model_index.json").is_file() and not args.overwrite:
        raise RSDistillError(f"{out} holds a bundle already; pass --overwrite or choose another --output_dir.")
    report = init_scratch(context, scratch_preset(g, context.resolution), out, g.preset,
                          mixed_precision=g.mixed_precision, checkpoint_steps=g.checkpointing_steps)
    shown = {k: report[k] for k in ("vae_test_psnr", "latent_classifier_val_accuracy",
                                    "latent_classifier_test_accuracy", "timings_s")}
    print(json.dumps(shown, indent=2))
    print(f"wrote {out}; train its UNet with: rsdistill finetune --pretrained_model_name_or_path {out} "
          f"--dataset {config.data.dataset} --output_dir OUT")


def cmd_generator_classifier(args: argparse.Namespace) -> None:
    from rsdistill.generator.base import fit_latent_classifier, test_accuracy
    from rsdistill.generator.bundle import CLASSIFIER_FOLDER, load_bundle

    config, context = context_from_args(args)
    g = config.generator
    if not g.pretrained_model_name_or_path:
        raise RSDistillError("`rsdistill generator classifier` needs --pretrained_model_name_or_path.")
    bundle = load_bundle(g.pretrained_model_name_or_path, g.class_labels_value)
    out = Path(g.output_dir or Path(g.pretrained_model_name_or_path) / CLASSIFIER_FOLDER)
    model = fit_latent_classifier(context, bundle, g.classifier_steps, config.data.val_fraction, out,
                                  checkpoint_steps=g.checkpointing_steps)
    test, single_view = test_accuracy(context, bundle, model)
    print(f"wrote {out}: validation accuracy {model.config.val_accuracy:.4f}, test accuracy {test:.4f} "
          f"(8-view average; single views {single_view:.4f})")


def register(subparsers: argparse._SubParsersAction) -> None:
    generator = subparsers.add_parser("generator", help=COMMANDS["generator"].help)
    actions = generator.add_subparsers(dest="generator_command", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="from-scratch bundle: VAE, random UNet, MiniLM, latent classifier")
    init.add_argument("--overwrite", action="store_true")
    add_config_flags(init, "seed", "device", "data", "generator.preset", "generator.output_dir",
                     "generator.vae_steps", "generator.classifier_steps", "generator.autoencoder",
                     "generator.mixed_precision", "generator.checkpointing_steps")
    init.set_defaults(func=cmd_generator_init)

    classifier = actions.add_parser("classifier", help="train a latent classifier for a bundle's VAE (written "
                                    "to --output_dir, default <bundle>/latent_classifier)")
    add_config_flags(classifier, "seed", "device", "data", "generator.pretrained_model_name_or_path",
                     "generator.output_dir", "generator.classifier_steps", "generator.class_labels_value",
                     "generator.checkpointing_steps")
    classifier.set_defaults(func=cmd_generator_classifier)

    finetune = subparsers.add_parser("finetune", help=COMMANDS["finetune"].help, description=__doc__)
    add_config_flags(finetune, "seed", "device", "data", "generator")
    finetune.set_defaults(func=cmd_finetune)
