"""Do generated or edited images help real data? Traditional augmentation against added images, by real fraction.

For each dataset and each fraction of the real train split (a fixed stratified draw per fraction, at least one
image per class), one ConvNet is trained per run on: the real images with each augmentation policy
(`rsdistill.evaluate.policies`); the real images plus a distilled or generated set (--set LABEL=DIR, repeatable,
geometric policy); the real images plus edited images (--edited DIR, from `rsdistill edit`, geometric policy).
Every row of one comparison has the same network, resolution and steps; accuracy is top-1 on the whole real
test split over --runs seeded runs. With --clip-model a zero-shot row (no training) is added per dataset.

Rows accumulate in --out across invocations: a row already there with the same protocol is not trained again,
so an interrupted study resumes and one command can add rows to another's table. Writes ``augmentation.md`` and
``augmentation.json`` (every row with its command) after each row, and
``augmentation.png`` (accuracy against real fraction; not committed) under --out.

    RSDISTILL_DATA=/work/shared/datasets OMP_NUM_THREADS=1 python scripts/augmentation_study.py \\
        --datasets ucmerced --fractions 0.05 0.2 --policies none geometric geometric+colour trivialaugment \\
        --steps 100 --runs 3
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rsdistill.core.atomic import write_text_atomic
from rsdistill.data.names import plain_words
from rsdistill.data.sources import load_dataset
from rsdistill.evaluate.context import load_set
from rsdistill.evaluate.policies import POLICIES
from rsdistill.evaluate.protocol import Protocol
from rsdistill.evaluate.scoring import Scorer, fixed

OUT = Path(__file__).parent / "results" / "augmentation"


def fraction_indices(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A fixed stratified draw of `fraction` of each class (at least one image), sorted."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, round(fraction * len(members)))
        picked.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(picked))


def score_row(scorer: Scorer, images: np.ndarray, labels: np.ndarray, runs: int, desc: str) -> dict[str, Any]:
    score = scorer.score(fixed(images, labels), seeds=range(runs), desc=desc)
    return {"mean": score.mean, "std": score.std, "runs": score.runs, "n_train": score.n_train,
            "protocol": score.protocol_label, "wall_s": score.wall_s}


def zero_shot_row(args: argparse.Namespace, dataset: Any, resolution: int) -> dict[str, Any]:
    """Zero-shot accuracy of an open_clip model on the test split, prompts from the readable class names."""
    from rsdistill.evaluate.clipscore import load_clip, zero_shot_accuracy

    test = dataset.images("test", resolution)
    clip = load_clip(args.clip_model, args.clip_pretrained)
    accuracy = zero_shot_accuracy(clip, np.asarray(test.images), np.asarray(test.labels), dataset.classes)
    return {"mean": accuracy, "std": 0.0, "runs": [accuracy], "n_train": 0,
            "protocol": f"zero-shot {args.clip_model}", "wall_s": 0.0}


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a row: the same key with the same protocol is not trained again."""
    return row["dataset"], row["fraction"], row["training"], row["policy"], row["protocol"]


def added_sets(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(label, folder) of every set added to the real images: ``--set LABEL=DIR`` and ``--edited DIR``."""
    pairs = []
    for spec in args.set or []:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--set {spec!r}: give it as LABEL=DIR (for example distilled=runs/x/refine/set).")
        pairs.append((label, path))
    if args.edited:
        pairs.append(("edited", args.edited))
    return pairs


def study(args: argparse.Namespace, command: str, done: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    """Trains every row not in `done` (updated and written to --out after each row)."""
    for name in args.datasets:
        dataset = load_dataset(name)
        train = dataset.images("train", args.resolution)
        train_images, train_labels = np.asarray(train.images), np.asarray(train.labels)
        extras = {label: load_set(path, dataset, args.resolution) for label, path in added_sets(args)}
        if args.clip_model:
            row = {"dataset": name, "fraction": None, "training": "zero-shot", "policy": "-",
                   **zero_shot_row(args, dataset, args.resolution), "command": command}
            done[row_key(row)] = row
        for fraction in args.fractions:
            index = fraction_indices(train_labels, fraction)
            images, labels = train_images[index], train_labels[index]
            plans = [("real", policy, images, labels) for policy in args.policies]
            for label, extra in extras.items():
                plans.append((f"real+{label} ({len(extra.images)} images)", "geometric",
                              np.concatenate([images, extra.images]), np.concatenate([labels, extra.labels])))
            for training, policy, x, y in plans:
                protocol = Protocol(model=args.model, resolution=args.resolution, steps=args.steps,
                                    augmentation=policy, precision=args.precision)
                scorer = Scorer.for_dataset(dataset, protocol, device=args.device, compile=args.compile)
                key = (name, fraction, training, policy, scorer.protocol.label)
                if key in done:
                    continue
                desc = f"{name} {fraction:g} {training} {policy}"
                row = score_row(scorer, x, y, args.runs, desc)
                done[key] = {"dataset": name, "fraction": fraction, "training": training, "policy": policy,
                             **row, "command": command}
                write(list(done.values()), args.out)
                print(f"{desc}: {row['mean']:.2f} +- {row['std']:.2f} ({row['wall_s']:.0f} s)", flush=True)


def write(rows: list[dict[str, Any]], out: Path) -> None:
    """Writes `rows` together with the rows already in `out` (a study running beside this one keeps its rows)."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "augmentation.json"
    merged = {row_key(row): row for row in json.loads(saved.read_text())} if saved.is_file() else {}
    merged.update({row_key(row): row for row in rows})
    rows = sorted(merged.values(), key=lambda r: (r["dataset"], r["fraction"] or 0.0, r["training"] != "real",
                                                  r["training"], r["policy"]))
    write_text_atomic(saved, json.dumps(rows, indent=1) + "\n")
    write_text_atomic(out / "augmentation.md", markdown(rows))


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | real fraction | training | policy | n train | accuracy % (mean ± std) | runs | protocol |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fraction = "-" if r["fraction"] is None else f"{100 * r['fraction']:g} %"
        runs = ", ".join(f"{a:.1f}" for a in r["runs"])
        lines.append(f"| {r['dataset']} | {fraction} | {r['training']} | {r['policy']} | {r['n_train']} | "
                     f"{r['mean']:.2f} ± {r['std']:.2f} | {runs} | {r['protocol']} |")
    commands = sorted({r["command"] for r in rows})
    return "\n".join(lines) + "\n\nCommand:\n\n" + "\n".join(f"    {c}" for c in commands) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    figure, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for axis, name in zip(axes[0], datasets, strict=True):
        trained = [r for r in rows if r["dataset"] == name and r["fraction"] is not None]
        for series in sorted({(r["training"], r["policy"]) for r in trained}):
            points = sorted((r["fraction"], r["mean"], r["std"]) for r in trained
                            if (r["training"], r["policy"]) == series)
            x, y, e = (np.array(v) for v in zip(*points, strict=True))
            axis.errorbar(100 * x, y, yerr=e, marker="o", capsize=3, label=f"{series[0]}, {series[1]}")
        axis.set(title=plain_words(name), xlabel="real train images used (%)", ylabel="test accuracy (%)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["eurosat", "ucmerced"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.2, 1.0])
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--set", action="append", metavar="LABEL=DIR",
                        help="a distilled or generated set (common format) added to the real images (repeatable)")
    parser.add_argument("--edited", help="edited images (rsdistill edit) added to the real images")
    parser.add_argument("--model", default="convnet3")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps of every run (default 500)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--clip-model", help="open_clip model for a zero-shot row (name, hf-hub:ID, local-dir:PATH)")
    parser.add_argument("--clip-pretrained", help="open_clip pretrained tag or checkpoint file (e.g. RemoteCLIP)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    command = "python scripts/augmentation_study.py " + shlex.join(sys.argv[1:])
    start = time.perf_counter()
    saved = args.out / "augmentation.json"
    done = {row_key(row): row for row in json.loads(saved.read_text())} if saved.is_file() else {}
    study(args, command, done)
    write(list(done.values()), args.out)
    plot(json.loads((args.out / "augmentation.json").read_text()), args.out / "augmentation.png")
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
