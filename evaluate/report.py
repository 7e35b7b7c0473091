"""The report of one evaluation: report.json, report.md (one table) and pictures (matplotlib)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from rsdistill.core.atomic import write_text_atomic
from rsdistill.evaluate.ranking import ranking_figures

if TYPE_CHECKING:
    from rsdistill.evaluate.context import EvalSet, Evaluation


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_accuracy_vs_ipc(report: dict[str, Any], path: Path) -> Path:
    """Accuracy (mean, std bars) against IPC, one line per method; `full` as a horizontal line."""
    by_method: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for row in report["rows"]:
        key = row["method"] if row["kind"] != "baseline" else f"{row['method']} baseline (fresh draw per run)"
        by_method[key].append((row["ipc"], row["accuracy"]["mean"], row["accuracy"]["std"]))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, points in sorted(by_method.items()):
        points.sort()
        ipc, mean, std = (np.asarray(v) for v in zip(*points, strict=True))
        ax.errorbar(ipc, mean, yerr=std, marker="o", capsize=3, label=method)
    if report.get("full"):
        ax.axhline(report["full"]["accuracy"], color="black", linestyle="--", label="full")
    ax.set_xscale("log")
    ax.set_xticks(sorted({row["ipc"] for row in report["rows"]}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("images per class")
    ax.set_ylabel("top-1 accuracy on the real test split (%)")
    ax.set_title(f"{report['dataset']} — {report['protocol_label']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_sample_grid(entry: EvalSet, classes: list[str], path: Path, per_class: int = 10, across: int = 10) -> Path:
    """Up to `per_class` images of every class, one tile per class with its name above its images; the tiles
    wrap so that a row holds about `across` images (IPC 1: ten classes a row; IPC 10: one class a row)."""
    shown = [np.flatnonzero(entry.labels == label)[:per_class] for label in range(len(classes))]
    tile_width = max(1, max(len(index) for index in shown))
    tiles_across = max(1, across // tile_width)
    rows = math.ceil(len(classes) / tiles_across)
    columns = tiles_across * tile_width
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9 + 0.2, rows * 1.05 + 0.5), dpi=100,
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for label, (index, name) in enumerate(zip(shown, classes, strict=True)):
        row, tile = divmod(label, tiles_across)
        for k, image in enumerate(index):
            axes[row, tile * tile_width + k].imshow(entry.images[image])
        axes[row, tile * tile_width].set_title(name, fontsize=6, loc="left")
    fig.suptitle(f"{entry.name}: {entry.method}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_nearest(entry: EvalSet, nearest: Any, real_images: np.ndarray, path: Path, count: int = 12) -> Path:
    """Set images (top row of each pair) above their nearest real train images, closest (highest SSIM) first."""
    order = np.argsort(-nearest.ssim)[:count]
    fig, axes = plt.subplots(2, len(order), figsize=(len(order) * 1.1, 2.6), dpi=100, squeeze=False)
    for column, i in enumerate(order):
        axes[0, column].imshow(entry.images[i])
        axes[1, column].imshow(real_images[nearest.index[i]])
        axes[1, column].set_title(f"SSIM {nearest.ssim[i]:.2f}", fontsize=6)
        for ax in axes[:, column]:
            ax.axis("off")
    fig.suptitle(f"{entry.name}: set image (top) and nearest real train image (bottom)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _metric_cells(metrics: dict[str, Any]) -> dict[str, str]:
    prdc = metrics.get("prdc", {})
    privacy = metrics.get("privacy", {})
    mia = metrics.get("mia", {})
    clip = metrics.get("clip", {})
    kid = metrics.get("kid")
    return {
        "FID": _cell(metrics.get("fid"), 1),
        "KID": _cell(kid["mean"], 4) if kid else "–",
        "precision": _cell(prdc.get("precision")),
        "recall": _cell(prdc.get("recall")),
        "density": _cell(prdc.get("density")),
        "coverage": _cell(prdc.get("coverage")),
        "intra-class cov.": _cell(metrics.get("intra_class_coverage", {}).get("mean")),
        "near copies": _cell(privacy.get("near_copies")),
        "max SSIM": _cell(privacy.get("ssim_max")),
        "MIA AUC set": _cell(mia.get("set_model_auc_train_vs_test")),
        "MIA AUC coreset": _cell(mia.get("coreset_model_auc_members_vs_test")),
        "CLIP score": _cell(clip.get("clip_score"), 1),
        "zero-shot %": _cell(clip.get("zero_shot_accuracy"), 1),
    }


def markdown(report: dict[str, Any]) -> str:
    """report.md: the protocol, then one table of every set and baseline, with DD-Ranking's improvement over
    random (IOR) and hard-label recovery (HLR) for each set (rsdistill.evaluate.ranking)."""
    options = report["options"]
    lines = [
        f"# Evaluation on {report['dataset']}",
        "",
        f"Protocol `{report['protocol_label']}`: {options['runs']} run(s) (seeds {options['seeds']}), "
        f"trained on `{options['train_on']}`, {report['protocol']['labels']} labels, top-1 on the whole real "
        f"test split; device {options['device']}. Accuracy is mean ± population std over runs (%).",
    ]
    if report.get("full"):
        full = report["full"]
        lines.append(f"`full` reference: {full['accuracy']:.2f}% ({full['passes']} passes, {full['steps']} steps, "
                     f"{full['n_train']} train images, one run, `{full['protocol_label']}`).")
    lines += ["", ""]
    metric_rows = [_metric_cells(row.get("metrics", {})) for row in report["rows"]]
    used = [k for k in (metric_rows[0] if metric_rows else {}) if any(m[k] != "–" for m in metric_rows)]
    ranking = ranking_figures(report)
    header = ["set", "method", "IPC", "accuracy (%)", "IOR (pts)", "HLR (pts)", "ratio to full", "storage ratio", *used]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    notes = []
    for row, cells in zip(report["rows"], metric_rows, strict=True):
        ipc = str(row["ipc"])
        if row.get("uneven"):
            counts = list(row["per_class"].values())
            ipc = f"{row['ipc']} (uneven {min(counts)}–{max(counts)})"
            notes.append(f"- `{row['name']}` has uneven images per class: {row['per_class']}. Scored as given.")
        accuracy = f"{row['accuracy']['mean']:.2f} ± {row['accuracy']['std']:.2f}"
        storage = row.get("storage_ratio")
        figures = ranking.get(row["name"], {}) if row["kind"] == "set" else {}
        values = [row["name"], row["method"], ipc, accuracy, _cell(figures.get("improvement_over_random")),
                  _cell(figures.get("hard_label_recovery")), _cell(row.get("ratio_to_full"), 3),
                  f"{storage:.2e}" if storage else "–", *(cells[k] for k in used)]
        lines.append("| " + " | ".join(values) + " |")
    if report.get("full"):
        full = report["full"]
        lines.append(f"| full | full | all ({full['n_train']}) | {full['accuracy']:.2f} | – | – | 1.000 | 1 |"
                     + " – |" * len(used))
    if notes:
        lines += ["", *notes]
    pictures = report.get("pictures", [])
    if pictures:
        lines += ["", "## Pictures", ""] + [f"![{p}]({p})" for p in pictures]
    lines += ["", f"Wall time {report['wall_s']:.0f} s, peak memory {report['peak_memory_mb']:.0f} MB.", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path, sets: list[EvalSet], run: Evaluation) -> None:
    """Writes the pictures, report.json and report.md into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = []
    if report["rows"]:
        pictures.append(plot_accuracy_vs_ipc(report, out_dir / "accuracy_vs_ipc.png").name)
    for entry in sets:
        pictures.append(plot_sample_grid(entry, report["classes"], out_dir / f"samples_{_slug(entry.name)}.png").name)
        nearest = run.extras.get("nearest", {}).get(entry.name)
        if nearest is not None:
            picture = plot_nearest(entry, nearest, run.train.images, out_dir / f"nearest_{_slug(entry.name)}.png")
            pictures.append(picture.name)
    report["pictures"] = pictures
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=str))
    write_text_atomic(out_dir / "report.md", markdown(report))
