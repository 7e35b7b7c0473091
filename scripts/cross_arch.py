"""The cross-architecture table of docs/peers.md: the benchmark's sets at one IPC, scored by other networks.

    RSDISTILL_DATA=../shared/datasets python scripts/cross_arch.py --datasets ucmerced --ipc 10 \\
        --models resnet18-in efficientnet-lite0

A set tuned to one network may collapse on another. This scores the sets `scripts/benchmark.py` made under
--work (the distilled set, herding, and the peers dm and m3d) with every --models network (rsdistill.evaluate.
networks: convnet3, resnet18, resnet18-in, efficientnet-lite0), hard labels, the benchmark's protocol otherwise
(500 steps, 3 runs unless --runs says otherwise, geometric augmentation, the test split). A set the benchmark
has not made yet stops the script with the benchmark command that makes it. Each (set, network) item is cached
under --work/<dataset>/ipc<k>/cross_arch/, so an interrupted table resumes; the table goes to
scripts/results/cross_arch.{json,md} (merged with the items already there). The ConvNet-3 column is the
benchmark's own score of each set (scripts/results/benchmark.json, marked ‡) unless --models names convnet3.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.config import EvalConfig, load_config
from rsdistill.data.context import RunContext
from rsdistill.data.sources import load_dataset
from rsdistill.evaluate.networks import MODELS

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCHMARK_MODEL = "convnet3"  # the network of the benchmark's protocol, whose scores cross_arch need not repeat
# Where scripts/benchmark.py leaves each set (its --methods name) under --work/<dataset>/ipc<k>/, and its row.
SETS = {
    "distilled": ("distilled/refine/set", "distilled"),
    "herding": ("coresets/herding", "herding"),
    "dm": ("peers/dm/set", "dm (from real images)"),
    "m3d": ("peers/m3d/set", "m3d (from real images)"),
}


def set_folder(work: Path, dataset: str, ipc: int, method: str) -> Path:
    """The benchmark's folder of the set `method` made; a clear stop when the benchmark has not made it."""
    folder = work / dataset / f"ipc{ipc}" / SETS[method][0]
    if not (folder / "metadata.jsonl").is_file():
        raise SystemExit(
            f"No {method} set at {folder}: make it first with\n    python scripts/benchmark.py --datasets {dataset} "
            f"--ipcs {ipc} --methods {method} --no-ablations --work {work}"
        )
    return folder


def score(context: RunContext, evaluation: EvalConfig, folder: Path, model: str, out: Path) -> dict[str, Any]:
    """Accuracy (percent) of `model` trained on the set in `folder` by the benchmark protocol."""
    from rsdistill.evaluate.evaluation import evaluate_sets

    config = replace(evaluation, model=model, baselines=[], ipc=[], metrics=[], labels="hard")
    report = evaluate_sets(context, config, out, [folder])
    row = next(r for r in report["rows"] if r["kind"] == "set")
    return {"accuracy_mean": row["accuracy"]["mean"], "accuracy_std": row["accuracy"]["std"],
            "accuracies": row["accuracy"]["runs"], "protocol": report["protocol_label"],
            "wall_s": report["wall_s"], "runs": len(row["accuracy"]["runs"]), "set": str(folder)}


def cell(item: dict[str, Any] | None, mark: str = "") -> str:
    """Mean ± std over an item's runs; a single run says so, an unscored item is a dash."""
    if not item:
        return "–"
    if item.get("runs") == 1:
        return f"{item['accuracy_mean']:.2f}{mark} (1 run)"
    return f"{item['accuracy_mean']:.2f} ± {item['accuracy_std']:.2f}{mark}"


def table(results: dict[str, Any], models: list[str], benchmark: dict[str, Any] | None = None) -> str:
    """One row per (dataset, IPC, set), one column per network.

    A ConvNet-3 cell this script has not scored is the benchmark's own score of the same set (its row in
    `benchmark`, scripts/results/benchmark.json), marked ‡: the same network, protocol and test split.
    """
    benchmark = benchmark or {}
    lines = ["| dataset | IPC | set | " + " | ".join(models) + " |", "|---|---|---" + "|---" * len(models) + "|"]
    rows = sorted({key.rsplit("/", 1)[0] for key in results})
    for row in rows:
        dataset, ipc, label = row.split("/", 2)
        cells = []
        for model in models:
            item = results.get(f"{row}/{model}")
            if item is None and model == BENCHMARK_MODEL and row in benchmark:
                cells.append(cell(benchmark[row], " ‡"))
            else:
                cells.append(cell(item))
        lines.append(f"| {dataset} | {ipc} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def record(new: dict[str, Any], command: str) -> str:
    """Merges `new` items into scripts/results/cross_arch.json (read afresh) and rewrites the table."""
    path = RESULTS / "cross_arch.json"
    saved = json.loads(path.read_text()) if path.is_file() else {"commands": [], "results": {}}
    results = {**saved["results"], **{key: {**item, "command": command} for key, item in new.items()}}
    commands = sorted({item["command"] for item in results.values()})
    write_text_atomic(path, json.dumps({"commands": commands, "results": results}, indent=2))
    models = [m for m in MODELS if m == BENCHMARK_MODEL or any(key.endswith(f"/{m}") for key in results)]
    bench_path = RESULTS / "benchmark.json"
    benchmark = json.loads(bench_path.read_text())["results"] if bench_path.is_file() else {}
    produced = "\n".join(f"    RSDISTILL_DATA=../shared/datasets {c}" for c in commands)
    text = (f"# Cross-architecture scores (hard labels, docs/benchmark.md protocol otherwise)\n\nProduced by\n\n"
            f"{produced}\n\nTest accuracy (%) of each network trained on the set alone, mean ± std over "
            f"the runs of each item (`runs` in cross_arch.json). ‡: the benchmark's own score of the set "
            f"(scripts/results/benchmark.md), same network and protocol.\n\n{table(results, models, benchmark)}\n")
    write_text_atomic(RESULTS / "cross_arch.md", text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["eurosat", "ucmerced"])
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--models", nargs="+", default=["resnet18-in", "efficientnet-lite0"],
                        choices=MODELS, help="networks to train (default: all but convnet3, whose column is the "
                        "benchmark's own score unless convnet3 is named here)")
    parser.add_argument("--runs", type=int, help="training runs per item (default: the protocol's 3)")
    parser.add_argument("--work", type=Path, default=Path("runs/benchmark"), help="the benchmark's --work")
    args = parser.parse_args()
    command = "python scripts/cross_arch.py " + shlex.join(sys.argv[1:])
    for name in args.datasets:
        folders = {method: set_folder(args.work, name, args.ipc, method) for method in args.sets}
        config = load_config(HERE / "configs" / f"{name}-ipc{args.ipc}.yaml")
        context = RunContext.from_config(load_dataset(name), config)
        evaluation = replace(config.evaluation, runs=args.runs or config.evaluation.runs)
        for model in args.models:  # one network's column for every set first: an interrupted table is by column
            for method, folder in folders.items():
                key = f"{name}/{args.ipc}/{SETS[method][1]}/{model}"
                out = args.work / name / f"ipc{args.ipc}" / "cross_arch" / f"{method}-{model}-{evaluation.runs}runs"
                record({key: score(context, evaluation, folder, model, out)}, command)
    print((RESULTS / "cross_arch.md").read_text())


if __name__ == "__main__":
    main()
