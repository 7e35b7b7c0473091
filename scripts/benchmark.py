"""The benchmark table of docs/benchmark.md: distilled sets next to real coresets and full data.

    RSDISTILL_DATA=../shared/datasets python scripts/benchmark.py                 # everything
    python scripts/benchmark.py --datasets eurosat --ipcs 10 --methods distilled random herding

For every dataset and IPC it scores, by the one protocol (ConvNet-3, 500 steps, 3 runs): the distilled set
(`rsdistill run` with `scripts/configs/<dataset>-ipc<k>.yaml`), the coresets random / herding / kcenter /
kmeans (herding and k-center in the penultimate features of the `full` ConvNet-3, as docs/benchmark.md defines
them; k-means medoids in the same space), the peers dm and m3d (rsdistill.peers: a random real coreset refined
by the dataset config's refinement with that method's objective; rows labelled "(from real images)", since such
sets are not privacy-safe; docs/peers.md), and `full`. At IPC 10 it adds the ablations. Each scored item is
kept as JSON under --work (a distilled item under a hash of its effective config, so a changed config is
scored again), so an interrupted benchmark resumes and a partial one can be extended; the merged
table goes to scripts/results/benchmark.{json,md} (no images) and, with --readme, into README.md and
docs/results.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

from rsdistill.core.artifacts import package_versions, torch_threads
from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.config import EvalConfig, PrototypeConfig, RunConfig, dump_config, load_config
from rsdistill.core.runtime import resolve_device
from rsdistill.data.context import RUN_SPLIT_FILE, RunContext
from rsdistill.data.sources import load_dataset
from rsdistill.evaluate.ranking import hard_label_recovery, improvement_over_random
from rsdistill.pipeline import base_settings

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
RESULTS = HERE / "results"
QUOTING = (HERE.parent / "README.md", HERE.parent / "docs" / "results.md")  # files whose table --readme rewrites
CORESETS = ("random", "herding", "kcenter", "kmeans")
PEERS = ("dm", "m3d")
METHODS = ("distilled", *CORESETS, *PEERS)
ABLATIONS: dict[str, list[str]] = {
    "no-consistency (lambda=0)": ["generator.consistency_lambda=0"],
    "aggregated captions (DPD) instead of class names": ["generator.prompts=captions"],
    "no prototype guidance": ["synthesis.guidance=none"],
    "img2img guidance (D4M)": ["synthesis.guidance=img2img"],
    "selection among 4 candidates": ["synthesis.candidates=4"],
    "no refinement": ["refine.iterations=0"],
}


def tag(label: str) -> str:
    """The folder-safe name of an ablation."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def run_config(dataset: str, ipc: int, work: Path, overrides: list[str], tag: str) -> RunConfig:
    config = load_config(CONFIGS / f"{dataset}-ipc{ipc}.yaml", overrides)
    return replace(config, run_dir=str(work / dataset / f"ipc{ipc}" / tag), shared_dir=str(work / "shared"))


def config_tag(dataset: str, ipc: int, overrides: list[str]) -> str:
    """Short hash of a run's effective config (its folders left out) and of what identifies its base generator
    (the preset's sizes and training precision): a changed config or preset is scored afresh."""
    config = replace(load_config(CONFIGS / f"{dataset}-ipc{ipc}.yaml", overrides), run_dir="", shared_dir=None)
    base = json.dumps(base_settings(config.generator, config.data.resolution), sort_keys=True)
    text = dump_config(config)
    if config.refine.objective == "mean":  # the default, as before the setting existed: the same tag
        text = text.replace("  objective: mean\n", "", 1)
    if config.generator.kind == "diffusion":  # a diffusion run reads none of the GAN's settings: the same tag
        text = re.sub(r"  (kind: diffusion|gan_\w+: .*)\n", "", text)
    return hashlib.sha256((text + base).encode()).hexdigest()[:10]


def scored(path: Path, make: Any) -> dict[str, Any]:
    """The cached result at `path`, or `make()` computed and saved there."""
    if path.is_file():
        return json.loads(path.read_text())
    # A re-run matches bit for bit only with the same versions and thread count (docs/method.md#determinism).
    result = {**make(), "environment": {"versions": package_versions(), "torch_threads": torch_threads()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    return result


def accuracy_of(report: dict[str, Any], kind: str, index: int = 0) -> dict[str, Any]:
    """Accuracy figures (percent) of the `index`-th row of `kind` in an evaluation report."""
    row = [r for r in report["rows"] if r["kind"] == kind][index]
    return {"accuracy_mean": row["accuracy"]["mean"], "accuracy_std": row["accuracy"]["std"],
            "accuracies": row["accuracy"]["runs"], "storage_ratio": row.get("storage_ratio"),
            "ratio_to_full": row.get("ratio_to_full"), "n_images": row.get("n_images") or row.get("n_train"),
            "uneven": row.get("uneven", False)}


def report_fields(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """What every benchmark item keeps of its evaluation report besides the accuracy."""
    return {"protocol": report["protocol_label"], "full": report["full"], "wall_s": report["wall_s"],
            "report": str(out)}


def score_set(context: RunContext, set_dir: Path, evaluation: EvalConfig, out: Path) -> dict[str, Any]:
    """One set scored next to `full` (the random baseline is scored with the coresets)."""
    from rsdistill.evaluate.evaluation import evaluate_sets

    report = evaluate_sets(context, replace(evaluation, baselines=["full"], ipc=[]), out, [set_dir])
    return {**accuracy_of(report, "set"), **report_fields(report, out)}


REALISM = ("fid", "kid")  # measured on every distilled set, before and after refinement


def realism_of(context: RunContext, set_dir: Path) -> dict[str, Any]:
    """FID and KID of a set against the real test split's Inception features (cached beside the images)."""
    from rsdistill.evaluate.context import load_set
    from rsdistill.evaluate.metrics import inception_features, realism_metrics, split_features

    entry = load_set(set_dir, context.dataset, context.resolution)
    device = resolve_device(context.device)
    real = split_features(context.dataset, "test", context.resolution, context.cache_dir, device)
    fake = inception_features(entry.images, device=device, desc=f"inception features ({set_dir})")
    test_labels = context.images("test").labels
    return realism_metrics(real, test_labels, fake, entry.labels, context.dataset.classes, set(REALISM))


def privacy_of(report_dir: Path) -> dict[str, Any] | None:
    """The figures of the run's privacy verdict (report/privacy.json, rsdistill.export.verdict), names left out."""
    path = report_dir / "privacy.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    near, attack, generator = record["near_copies"], record["membership"], record.get("generator_attack") or {}
    return {
        "safe": record["verdict"]["safe"], "reasons": record["verdict"]["reasons"],
        "near_copies_failing": near["failing"], "images": len(near["images"]),
        "near_copy_threshold": near["threshold_distance"], "set_distance_min": near["set_distance_min"],
        "set_model_auc": attack["set_model_auc_train_vs_test"],
        "coreset_model_auc": attack["coreset_model_auc_train_vs_test"],
        "generator_auc": generator.get("auc"), "generator_tpr_at_1pct_fpr": generator.get("tpr_at_1pct_fpr"),
    }


def distilled(dataset_name: str, ipc: int, work: Path, overrides: list[str], tag: str) -> dict[str, Any]:
    """`rsdistill run` with the dataset's config, scored next to `full` with FID/KID and its privacy verdict;
    the set before refinement is measured for FID/KID too."""
    from rsdistill.evaluate.evaluation import read_report
    from rsdistill.pipeline import run_pipeline

    config = run_config(dataset_name, ipc, work, overrides, tag)
    metrics = sorted({*config.evaluation.metrics, *REALISM})
    config = replace(config, evaluation=replace(config.evaluation, baselines=["full"], ipc=[], metrics=metrics))
    run_dir = Path(config.run_dir)
    report_dir = run_pipeline(config, evaluate=True)
    report = read_report(report_dir)
    stages = json.loads((run_dir / "stages.json").read_text())
    context = RunContext.load(config, run_dir / RUN_SPLIT_FILE)
    row = next(r for r in report["rows"] if r["kind"] == "set")
    after = {name: row["metrics"][name] for name in REALISM}
    refined = config.refine.iterations != 0
    realism = {"after_refinement": after} if refined else {"no_refinement": after}
    if refined:
        realism["before_refinement"] = realism_of(context, run_dir / "synthesis" / "set")
    return {**accuracy_of(report, "set"), **report_fields(report, report_dir), "realism": realism,
            "privacy": privacy_of(report_dir), "stages": stages["stages"],
            "pipeline_wall_s_this_invocation": stages["wall_time_s_this_invocation"], "overrides": overrides,
            "config_tag": config_tag(dataset_name, ipc, overrides)}


def coresets(context: RunContext, methods: list[str], ipc: int, work: Path, evaluation: EvalConfig) -> dict[str, Any]:
    """Every coreset at one IPC, scored in one evaluation (one report with their pictures side by side)."""
    from rsdistill.evaluate.evaluation import evaluate_sets, protocol_from_config
    from rsdistill.evaluate.scoring import Scorer
    from rsdistill.evaluate.teacher import full_reference
    from rsdistill.prototypes import write_coreset

    dataset = context.dataset
    out = work / dataset.name / f"ipc{ipc}" / "coresets"
    selected = [m for m in methods if m != "random"]
    set_dirs = []
    if selected:
        protocol = protocol_from_config(evaluation, dataset, context.resolution)
        reference = full_reference(dataset, Scorer.for_dataset(dataset, protocol), evaluation.full_passes)
        encoder = f"torchscript:{reference.extractor}"
        set_dirs = [write_coreset(replace(context, seed=0), PrototypeConfig(), out / method, method, ipc,
                                  encoder=encoder) for method in selected]
    baselines = ["random", "full"] if "random" in methods else ["full"]
    config = replace(evaluation, baselines=baselines, ipc=[ipc] if "random" in methods else [])
    report = evaluate_sets(context, config, out / "report", set_dirs)
    common = report_fields(report, out / "report")
    results = {method: {**accuracy_of(report, "set", index), **common} for index, method in enumerate(selected)}
    if "random" in methods:
        results["random"] = {**accuracy_of(report, "baseline"), **common}
    return results


def peer(context: RunContext, method: str, ipc: int, work: Path, config: RunConfig) -> dict[str, Any]:
    """A peer's set (rsdistill.peers, from a random real coreset, refined as the dataset's config says) scored
    by the benchmark protocol, with the wall time of making it."""
    from rsdistill.peers import write_peer

    out = work / context.dataset.name / f"ipc{ipc}" / "peers" / method
    start = time.perf_counter()
    set_dir = write_peer(replace(context, seed=config.seed), config.refine, out, method, ipc)
    wall = time.perf_counter() - start
    result = score_set(context, set_dir, config.evaluation, out / "report")
    return {**result, "peer_wall_s": wall, "refine": asdict(config.refine), "from_real_images": True}


def peer_label(method: str) -> str:
    """A peer's row name: every table says the set starts from real images."""
    from rsdistill.peers import FROM_REAL

    return f"{method} {FROM_REAL}"


def is_stale(dataset: str, ipc: str, method: str, item: dict[str, Any]) -> bool:
    """Whether a distilled or ablation item was scored with another config than the one its row names now."""
    if method == "distilled":
        overrides: list[str] | None = []
    elif method.startswith("ablation: "):
        overrides = ABLATIONS.get(method.removeprefix("ablation: "))
    else:
        return False
    return overrides is None or item.get("config_tag") != config_tag(dataset, int(ipc), overrides)


def is_retired(key: str) -> bool:
    """Whether a result names an ablation that the benchmark no longer runs (its row leaves the tables)."""
    method = key.split("/", 2)[2]
    return method.startswith("ablation: ") and method.removeprefix("ablation: ") not in ABLATIONS


STALE_NOTE = ("† scored with an earlier version of the dataset's config (its command is in "
              "scripts/results/benchmark.json); run that item again to score the current config.")


def table(results: dict[str, Any]) -> str:
    lines = ["| dataset | IPC | method | accuracy (%) | IOR (pts) | HLR (pts) | ratio to full | storage ratio |",
             "|---|---|---|---|---|---|---|---|"]
    stale = False
    for key in sorted(results, key=lambda k: (k.split("/")[0], int(k.split("/")[1]), k)):
        dataset, ipc, method = key.split("/", 2)
        r = results[key]
        random, full = results.get(f"{dataset}/{ipc}/random"), r.get("full")
        ior = (f"{improvement_over_random(r['accuracy_mean'], random['accuracy_mean']):+.2f}"
               if random is not None and method != "random" else "–")
        hlr = f"{hard_label_recovery(full['accuracy'], r['accuracy_mean']):.2f}" if full else "–"
        if is_stale(dataset, ipc, method, r):
            method, stale = f"{method} †", True
        acc = f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}"
        ratio = f"{r['ratio_to_full']:.3f}" if r.get("ratio_to_full") is not None else "–"
        storage = f"{r['storage_ratio']:.2e}" if r.get("storage_ratio") is not None else "–"
        lines.append(f"| {dataset} | {ipc} | {method} | {acc} | {ior} | {hlr} | {ratio} | {storage} |")
    fulls = {k.split("/")[0]: r["full"] for k, r in results.items() if r.get("full")}
    for dataset, full in sorted(fulls.items()):
        lines.append(f"| {dataset} | all | full | {full['accuracy']:.2f} | – | – | 1.000 | 1 |")
    return "\n".join(lines) + (f"\n\n{STALE_NOTE}" if stale else "")


def _before_after(realism: dict[str, Any], read: Any, digits: int) -> str:
    after = realism.get("after_refinement") or realism.get("no_refinement")
    before = realism.get("before_refinement")
    text = f"{read(after):.{digits}f}"
    return f"{read(before):.{digits}f} → {text}" if before else text


def realism_privacy_table(results: dict[str, Any]) -> str:
    """FID/KID before → after refinement and the privacy verdict of every distilled item that measured them."""
    lines = [
        "| dataset | IPC | set | accuracy (%) | FID | KID | near copies | attack AUC: set / real coreset "
        "| generator attack AUC (TPR @ 1 % FPR) | fit to share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(results, key=lambda k: (k.split("/")[0], int(k.split("/")[1]), k)):
        r = results[key]
        if "realism" not in r:
            continue
        dataset, ipc, method = key.split("/", 2)
        fid = _before_after(r["realism"], lambda m: m["fid"], 1)
        kid = _before_after(r["realism"], lambda m: m["kid"]["mean"], 4)
        p = r.get("privacy")
        if p is None:
            lines.append(f"| {dataset} | {ipc} | {method} | {r['accuracy_mean']:.2f} | {fid} | {kid} | – | – | – | – |")
            continue
        generator = (f"{p['generator_auc']:.3f} ({p['generator_tpr_at_1pct_fpr']:.3f})"
                     if p.get("generator_auc") is not None else "–")
        lines.append(
            f"| {dataset} | {ipc} | {method} | {r['accuracy_mean']:.2f} | {fid} | {kid} "
            f"| {p['near_copies_failing']} / {p['images']} | {p['set_model_auc']:.3f} / {p['coreset_model_auc']:.3f} "
            f"| {generator} | {'yes' if p['safe'] else 'no'} |"
        )
    return "\n".join(lines)


def stage_table(results: dict[str, Any]) -> str:
    lines = ["| run | stage | wall time (s) | peak memory (MB) |", "|---|---|---|---|"]
    for key, r in sorted(results.items()):
        for stage, figures in (r.get("stages") or {}).items():
            lines.append(f"| {key} | {stage} | {figures.get('wall_time_s')} | {figures.get('peak_memory_mb')} |")
    return "\n".join(lines)


def record(new: dict[str, Any], command: str, readme: bool) -> None:
    """Merges `new` items (tagged with the command that made them) into scripts/results/benchmark.json, read
    afresh so that benchmark processes run side by side keep each other's items, and rewrites the tables."""
    path = RESULTS / "benchmark.json"
    results = json.loads(path.read_text())["results"] if path.is_file() else {}
    results.update({key: {**item, "command": command} for key, item in new.items()})
    results = {key: item for key, item in results.items() if not is_retired(key)}
    commands = sorted({item["command"] for item in results.values() if "command" in item})
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"commands": commands, "results": results}, indent=2, default=str))
    produced = "\n".join(f"    RSDISTILL_DATA=../shared/datasets {c}" for c in commands)
    markdown = (
        f"# Benchmark (docs/benchmark.md protocol)\n\nProduced by\n\n{produced}\n\n{table(results)}\n\n"
        f"## Realism and privacy of the distilled sets\n\nFID and KID against the real test split's Inception "
        f"features, before → after refinement; near copies and attacks as `rsdistill run`'s privacy verdict "
        f"(docs/sharing.md).\n\n{realism_privacy_table(results)}\n\n"
        f"## Stage wall time and peak memory\n\n{stage_table(results)}\n"
    )
    write_text_atomic(RESULTS / "benchmark.md", markdown)
    if readme:
        block = f"<!-- benchmark:start -->\n{table(results)}\n<!-- benchmark:end -->"
        for path in QUOTING:
            text = re.sub(r"<!-- benchmark:start -->.*<!-- benchmark:end -->", block, path.read_text(), flags=re.S)
            path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["eurosat", "ucmerced"])
    parser.add_argument("--ipcs", nargs="+", type=int, default=[1, 10, 50])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                        help="at IPC 10, the ablations of the distilled set")
    parser.add_argument("--ablation", action="append", choices=[tag(label) for label in ABLATIONS],
                        help="run only this ablation (repeatable; default: all of them)")
    parser.add_argument("--work", type=Path, default=Path("runs/benchmark"), help="cached items and runs")
    parser.add_argument("--readme", action="store_true",
                        help="regenerate the results table of README.md and docs/results.md")
    parser.add_argument("--tables-only", action="store_true",
                        help="only rewrite the tables (and, with --readme, those of README.md and docs/results.md) "
                             "from scripts/results")
    args = parser.parse_args()
    if args.tables_only:
        record({}, "", args.readme)
        print((RESULTS / "benchmark.md").read_text())
        return
    command = "python scripts/benchmark.py " + " ".join(
        [f"--datasets {' '.join(args.datasets)}", f"--ipcs {' '.join(map(str, args.ipcs))}",
         f"--methods {' '.join(args.methods)}"] + ([] if args.ablations else ["--no-ablations"])
        + [f"--ablation {name}" for name in args.ablation or []]
        + ([f"--work {args.work}"] if args.work != parser.get_default("work") else []))
    for name in args.datasets:
        benchmark_config = load_config(CONFIGS / f"{name}-ipc10.yaml")
        context = RunContext.from_config(load_dataset(name), benchmark_config)
        evaluation = benchmark_config.evaluation
        for ipc in args.ipcs:
            items = args.work / name / f"ipc{ipc}" / "items"
            if "distilled" in args.methods:
                make = partial(distilled, name, ipc, args.work, [], "distilled")
                made = scored(items / f"distilled-{config_tag(name, ipc, [])}.json", make)
                record({f"{name}/{ipc}/distilled": made}, command, args.readme)
            for method in [m for m in args.methods if m in PEERS]:
                peer_config = load_config(CONFIGS / f"{name}-ipc{ipc}.yaml")
                make = partial(peer, context, method, ipc, args.work, peer_config)
                refine_tag = hashlib.sha256(json.dumps(asdict(peer_config.refine), sort_keys=True).encode())
                made = scored(items / f"peer-{method}-{refine_tag.hexdigest()[:10]}.json", make)
                record({f"{name}/{ipc}/{peer_label(method)}": made}, command, args.readme)
            baselines = [m for m in args.methods if m in CORESETS]
            if baselines:
                make = partial(coresets, context, baselines, ipc, args.work, evaluation)
                made = scored(items / f"coresets-{'-'.join(baselines)}.json", make)
                record({f"{name}/{ipc}/{method}": result for method, result in made.items()}, command, args.readme)
            if ipc == 10 and args.ablations and "distilled" in args.methods:
                for label, overrides in ABLATIONS.items():
                    if args.ablation and tag(label) not in args.ablation:
                        continue
                    make = partial(distilled, name, ipc, args.work, overrides, tag(label))
                    made = scored(items / f"ablation-{tag(label)}-{config_tag(name, ipc, overrides)}.json", make)
                    record({f"{name}/{ipc}/ablation: {label}": made}, command, args.readme)
    print((RESULTS / "benchmark.md").read_text())


if __name__ == "__main__":
    main()
