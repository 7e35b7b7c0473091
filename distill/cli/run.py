"""`rsdistill run`: the whole pipeline from a YAML config, any setting overridable by flag."""

from __future__ import annotations

import argparse

from rsdistill.cli.common import COMMANDS
from rsdistill.core.config import apply_override, dump_config, load_config

# Short flags (diffusers' names where they mean the same) and the config fields they set.
SHORT_FLAGS: dict[str, tuple[str, ...]] = {
    "dataset": ("data.dataset",),
    "data_root": ("data.root",),
    "ipc": ("prototypes.ipc",),
    "seed": ("seed",),
    "out": ("run_dir",),
    "shared_dir": ("shared_dir",),
    "device": ("device",),
    "resolution": ("data.resolution", "generator.resolution"),
    "pretrained_model_name_or_path": ("generator.pretrained_model_name_or_path",),
    "preset": ("generator.preset",),
    "max_train_steps": ("generator.max_train_steps",),
    "train_batch_size": ("generator.train_batch_size",),
    "learning_rate": ("generator.learning_rate",),
    "mixed_precision": ("generator.mixed_precision",),
    "use_lora": ("generator.use_lora",),
    "consistency_lambda": ("generator.consistency_lambda",),
    "class_labels_value": ("generator.class_labels_value",),
    "num_inference_steps": ("synthesis.num_inference_steps",),
    "guidance_scale": ("synthesis.guidance_scale",),
    "guidance": ("synthesis.guidance",),
    "candidates": ("synthesis.candidates",),
    "encoder": ("prototypes.encoder",),
    "captioner": ("captions.captioner",),
    "runs": ("evaluation.runs",),
    "steps": ("evaluation.steps",),
}
BOOLEAN_FLAGS = frozenset({"use_lora"})


def cmd_run(args: argparse.Namespace) -> None:
    from rsdistill.pipeline import run_pipeline

    config = load_config(args.config, args.overrides)
    for flag, fields in SHORT_FLAGS.items():
        value = getattr(args, flag)
        if value is None or (flag in BOOLEAN_FLAGS and value is False):
            continue
        for field in fields:
            apply_override(config, field, value)
    if args.show:
        print(dump_config(config), end="")
        return
    run_pipeline(config, evaluate=not args.no_evaluate)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help=COMMANDS["run"].help)
    parser.add_argument("--config", help="YAML run config (see scripts/configs/)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="any setting, e.g. prototypes.rule=medoid")
    for flag in SHORT_FLAGS:
        if flag in BOOLEAN_FLAGS:
            parser.add_argument(f"--{flag}", action="store_true", default=False)
        else:
            dashed = flag.replace("_", "-")
            names = [f"--{flag}"] + ([f"--{dashed}"] if dashed != flag else [])
            parser.add_argument(*names, dest=flag, default=None, help=f"sets {', '.join(SHORT_FLAGS[flag])}")
    parser.add_argument("--show", action="store_true", help="print the effective config and stop")
    parser.add_argument("--no-evaluate", action="store_true", help="stop after writing the distilled set")
    parser.set_defaults(func=cmd_run)
