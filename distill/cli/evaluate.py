"""`rsdistill evaluate SET... --dataset NAME --out REPORT_DIR`: score sets by BENCHMARK.md (or a labelled
variant), next to the baselines, with realism and privacy metrics, in one report."""

from __future__ import annotations

import argparse

from rsdistill.core.config import EvalConfig, load_config
from rsdistill.core.errors import RSDistillError
from rsdistill.evaluate.evaluation import METRICS, TRAIN_ON
from rsdistill.evaluate.networks import MODELS
from rsdistill.evaluate.protocol import LABELS, PRECISIONS


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(item) for item in _list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    from rsdistill.cli.common import COMMANDS, add_data_arguments

    parser = subparsers.add_parser("evaluate", help=COMMANDS["evaluate"].help,
                                   description=__doc__)
    parser.add_argument("sets", nargs="*", metavar="SET", help="set folders in the common format")
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="report folder (report.json, report.md, pictures)")
    parser.add_argument("--config", help="YAML run config; its `evaluation` section is the starting point")
    parser.add_argument("--runs", type=int, help="training runs, seeds 0..N-1 (default 3)")
    parser.add_argument("--steps", type=int, help="training steps (default 500 on a set, the full schedule on "
                        "real data)")
    parser.add_argument("--model", choices=MODELS, help="downstream network (default convnet3)")
    parser.add_argument("--labels", choices=LABELS, help="hard labels, or soft labels from the full-data teacher")
    parser.add_argument("--temperature", type=float, help="soft-label temperature (default 4)")
    parser.add_argument("--train-on", "--train_on", dest="train_on", choices=TRAIN_ON,
                        help="the set alone (default), the real train split plus the set, or real data alone")
    parser.add_argument("--baselines", type=_list, help="comma list of random,full (default both)")
    parser.add_argument("--ipc", type=_ints, help="extra IPCs for the random baseline, e.g. 1,10,50")
    parser.add_argument("--metrics", type=_list, help=f"comma list of {','.join(METRICS)}")
    parser.add_argument("--precision", choices=PRECISIONS, help="bf16 autocast, fp32, or auto (default)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", default=None,
                        help="train without torch.compile (for tiny step counts)")
    parser.add_argument("--full-passes", type=int, help="passes of the full reference (default 30, eurosat 10)")
    parser.add_argument("--near-copy-ssim", type=float, help="SSIM from which a set image is a near-copy (0.9)")
    parser.add_argument("--clip-model", help="open_clip model: a name, hf-hub:ID or local-dir:PATH")
    parser.add_argument("--clip-pretrained", help="open_clip pretrained tag or checkpoint file (with a name)")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(func=cmd_evaluate)


FLAGS = ("runs", "steps", "model", "labels", "temperature", "train_on", "baselines", "ipc", "metrics", "precision",
         "compile", "full_passes", "near_copy_ssim", "clip_model", "clip_pretrained")


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The `evaluation` config section: YAML file, then flags that were given."""
    config = load_config(args.config).evaluation if args.config else EvalConfig()
    config.resolution = args.resolution
    for name in FLAGS:
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    if config.runs < 1:
        raise RSDistillError("--runs must be at least 1.")
    return config


def cmd_evaluate(args: argparse.Namespace) -> None:
    from rsdistill.cli.common import dataset_from_args
    from rsdistill.evaluate.evaluation import evaluate_sets
    from rsdistill.evaluate.report import markdown

    dataset = dataset_from_args(args)
    report = evaluate_sets(args.sets, dataset, config_from_args(args), args.out, device=args.device,
                           cache_dir=args.cache_dir)
    print(markdown(report))
    print(f"wrote {args.out}/report.json and report.md")
