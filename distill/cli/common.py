"""What every `rsdistill` sub-command shares: the command table and the flags that bind to config fields."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

from rsdistill.core.config import SECTIONS, RunConfig, apply_override, field_help, load_config, section_class
from rsdistill.data.context import RunContext


class Command(NamedTuple):
    """A sub-command: the module that defines it (through `register(subparsers)`) and its one-line help."""

    module: str
    help: str


# Only the module of the command being run is imported: `rsdistill --help`, `data` and `config` start without
# torch, and a command pays only for the libraries it uses.
COMMANDS: dict[str, Command] = {
    "xbd": Command("rsdistill.cli.xbd", "xBD building-damage data: classes, split, bad input"),
    "prototypes": Command("rsdistill.cli.prototypes", "per-class k-means prototypes (stage 2)"),
    "coreset": Command("rsdistill.cli.prototypes", "coreset baseline (random, herding, kcenter, kmeans)"),
    "caption": Command("rsdistill.cli.caption", "caption the train split and aggregate prompts (stage 3)"),
    "generator": Command("rsdistill.cli.generator", "build a diffusion bundle or its latent classifier"),
    "finetune": Command("rsdistill.cli.generator", "train a bundle's UNet (LoRA or full) on the train split"),
    "generate": Command("rsdistill.cli.synthesis", "generate the distilled set (stage 5)"),
    "refine": Command("rsdistill.cli.refine", "refine a set by distribution matching (stage 5b)"),
    "edit": Command("rsdistill.cli.edit", "edited copies of real train images through InstructPix2Pix"),
    "peer": Command("rsdistill.cli.peer", "a peer method from real images (dm or m3d) as a set, not privacy-safe"),
    "evaluate": Command("rsdistill.cli.evaluate", "score sets by downstream training, with baselines and metrics"),
    "run": Command("rsdistill.cli.run", "run every stage from one config (skips done stages, resumes)"),
    "export": Command("rsdistill.cli.export", "a set as a Hugging Face dataset with its card, once its privacy allows"),
}


OVERRIDE = re.compile(r"^[a-z_]+(\.[a-z_]+)+=")
FLAG_ALIASES: dict[str, tuple[str, ...]] = {"run_dir": ("--out",)}


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates ``section.key=value`` overrides (anywhere on the line) from the rest of `argv`."""
    overrides = [word for word in argv if OVERRIDE.match(word)]
    return [word for word in argv if not OVERRIDE.match(word)], overrides


def add_config_flags(parser: argparse.ArgumentParser, *bindings: str) -> None:
    """Binds flags to `RunConfig` fields, the one way every command takes its settings.

    Each binding is a section (``data``: one flag per field of `DataConfig`), a dotted field
    (``generator.class_labels_value``) or a top-level field (``seed``). A flag is named after its field
    (``--max_train_steps`` and ``--max-train-steps``); where two bound sections share a field name, the first
    binding owns the flag and the other is set as ``section.key=value``. The command also takes ``--config
    YAML`` and ``section.key=value`` overrides. A flag that is not given leaves the YAML (or the default)
    alone; :func:`config_from_args` applies them in the order defaults, YAML, overrides, flags.
    """
    parser.add_argument("--config", help="YAML run config (see scripts/configs/); flags and section.key=value "
                        "overrides apply on top of it")
    bound: list[str] = []
    taken: set[str] = set()
    for binding in bindings:
        if binding in SECTIONS:
            section, names = binding, None
        else:
            section, _, name = binding.rpartition(".")
            names = {name}
        cls = section_class(section)
        group = parser.add_argument_group(section) if section else parser
        help = field_help(cls)
        defaults = cls()
        for field in dataclasses.fields(cls):
            nested = dataclasses.is_dataclass(getattr(defaults, field.name))
            if (names is not None and field.name not in names) or field.name in taken or nested:
                continue
            taken.add(field.name)
            dest = f"{section}.{field.name}" if section else field.name
            dashed = field.name.replace("_", "-")
            flags = [f"--{field.name}", *([f"--{dashed}"] if dashed != field.name else [])]
            flags += FLAG_ALIASES.get(field.name, ())
            default = getattr(defaults, field.name)
            text = f"{help.get(field.name, dest)} ({dest}, default {default})"
            if isinstance(default, bool):
                group.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=text)
            else:
                group.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, metavar=field.name.upper(),
                                   help=text)
            bound.append(dest)
    parser.set_defaults(config_flags=tuple(bound), overrides=[])


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The `RunConfig` of a command line: defaults, then ``--config``, then overrides, then the flags given."""
    config = load_config(args.config, args.overrides)
    given = vars(args)
    for dest in args.config_flags:
        if dest in given:
            apply_override(config, dest, given[dest])
    return config


def add_overwrite_flag(parser: argparse.ArgumentParser, what: str = "a stage made with other settings") -> None:
    """``--overwrite``: let the command replace `what` at its output (never a folder rsdistill did not write)."""
    parser.add_argument("--overwrite", action="store_true", help=f"replace --out if it holds {what} (a folder "
                        "holding files rsdistill did not write is never deleted)")


def context_from_args(args: argparse.Namespace) -> tuple[RunConfig, RunContext]:
    """The command line's config and the run context it describes (the dataset loaded); a command with
    ``--overwrite`` replaces its own finished stages only when it is given."""
    config = config_from_args(args)
    context = RunContext.load(config)
    return config, replace(context, overwrite=vars(args).get("overwrite", True))
