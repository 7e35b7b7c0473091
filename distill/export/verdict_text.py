"""How a privacy verdict reads: the public summary that may leave the run folder, its table (report.md and the
dataset card), the report.md section and the refusal message of `rsdistill export`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SECTION_TITLE = "## Privacy verdict"
GENERATOR_NOTE = (
    "The generator attack (rsdistill.export.generator_attack) asks whether the diffusion model that made the set "
    "denoises its own train images better than unseen real ones, calibrated on held-out real test images. It is "
    "reported, not judged: the generator is not shared. Well above 0.5, the generator holds its train images, so "
    "the images it makes may carry them: the near-copy test above is what keeps them out of the set."
)


def how_to_fix(privacy: dict[str, Any]) -> str:
    """What to do about a set that fails, with the run settings that change it."""
    threshold = privacy["near_copies"]["threshold_distance"]
    return (
        "To fix it, resample the failing images (generate again with another seed, or with "
        f"synthesis.reject_near_copies=true and synthesis.near_copy_threshold={threshold:.4f} or more, so that "
        "synthesis passes over candidates that near a train image), or pull less toward the prototypes' real "
        "images: lower synthesis.prototype_strength (0.15 or 0.1; docs/method.md, near copies). Then let "
        "rsdistill run finish again (it resumes) and export the new set."
    )


def failing_images(privacy: dict[str, Any]) -> list[dict[str, Any]]:
    near = privacy["near_copies"]
    return [image for image in near["images"] if image["distance"] < near["threshold_distance"]]


def refusal(privacy: dict[str, Any], record: Path | None = None) -> str:
    """Why a set is not fit to share, which images fail and what to do, for an error message.

    Args:
        privacy: The privacy record.
        record: Where the record is written (then only the first 20 failing images are named here).
    """
    lines = [f"The set {privacy['set']} is not fit to share: {'; '.join(privacy['verdict']['reasons'])}."]
    failing = failing_images(privacy)
    if failing:
        shown = failing[:20] if record is not None else failing
        lines.append("Images that fail the near-copy test (distance to the nearest train image):")
        lines += [f"  {image['file_name']}: {image['distance']:.4f}" for image in shown]
        if len(failing) > len(shown):
            lines.append(f"  ... and {len(failing) - len(shown)} more (all listed in {record})")
    lines.append(how_to_fix(privacy))
    lines.append("Pass --allow-unsafe to export it anyway (the card then says it failed).")
    return "\n".join(lines)


def public_summary(privacy: dict[str, Any]) -> dict[str, Any]:
    """The figures of a privacy record that may leave the run folder: no train key, no per-image provenance."""
    near, attack = privacy["near_copies"], privacy["membership"]
    return {
        "thresholds": privacy["thresholds"],
        "near_copy_space": near["space"],
        "reference": near["reference"],
        "threshold_distance": near["threshold_distance"],
        "set_distance_min": near["set_distance_min"],
        "set_distance_median": near["set_distance_median"],
        "failing_images": near["failing"],
        "images": len(near["images"]),
        "attack_auc_set": attack["set_model_auc_train_vs_test"],
        "attack_auc_set_sources": attack.get("set_model_auc_sources_vs_test"),
        "sources": attack.get("sources"),
        "attack_auc_coreset": attack["coreset_model_auc_train_vs_test"],
        "attack_auc_coreset_members": attack["coreset_model_auc_members_vs_test"],
        "members": attack["members"],
        "non_members": attack["non_members"],
        "generator_attack": privacy.get("generator_attack"),
        "safe": privacy["verdict"]["safe"],
        "reasons": privacy["verdict"]["reasons"],
    }


def chance_spread(members: int, non_members: int) -> float:
    """Standard deviation of an attack AUC under chance (the Mann-Whitney null), for so many images a side."""
    return math.sqrt((members + non_members + 1) / (12 * members * non_members))


def _auc(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _generator_row(attack: dict[str, Any] | None) -> list[str]:
    if attack is None:
        return []
    return [f"| membership attack on the generator (diffusion loss), AUC / TPR at 1 % FPR | {attack['auc']:.3f} / "
            f"{100 * attack['tpr_at_1pct_fpr']:.1f} % ({attack['members']} train vs {attack['non_members']} test, "
            f"timesteps {', '.join(map(str, attack['timesteps']))}) | – | reported, not judged |"]


def summary_table(summary: dict[str, Any]) -> list[str]:
    """Markdown lines: the verdict, the figures with their thresholds, the reference distribution."""
    limits = summary["thresholds"]
    reference = summary["reference"]
    verdict = "**Fit to share.**" if summary["safe"] else "**Not fit to share:** " + "; ".join(summary["reasons"])
    sources = "–"
    if summary["attack_auc_set_sources"] is not None:
        spread = chance_spread(summary["sources"], summary["non_members"])
        sources = (f"{summary['attack_auc_set_sources']:.3f} ({summary['sources']} source images; chance gives "
                   f"0.5 ± {spread:.3f})")
    return [
        verdict,
        "",
        "| measure | this set | real random coreset, same size | threshold |",
        "|---|---|---|---|",
        f"| images nearer a train image than the threshold | {summary['failing_images']} of {summary['images']} | "
        f"all (its images are train images) | 0 |",
        f"| smallest distance to a train image ({summary['near_copy_space']}) | {summary['set_distance_min']:.4f} | "
        f"0 | ≥ {summary['threshold_distance']:.4f} (p{limits['near_copy_percentile']:g} of test-to-train) |",
        f"| median distance to the nearest train image | {summary['set_distance_median']:.4f} | 0 | – |",
        f"| membership attack AUC, train vs test images | {_auc(summary['attack_auc_set'])} | "
        f"{_auc(summary['attack_auc_coreset'])} | ≤ {limits['max_attack_auc']:g} |",
        f"| attack AUC, the images the set was made from vs test | {sources} | "
        f"{_auc(summary['attack_auc_coreset_members'])} (its own images) | – |",
        *_generator_row(summary.get("generator_attack")),
        "",
        f"Reference: the distance from each of {reference['test_images']} real test images to its nearest train "
        f"image (p1 {reference['p1']:.4f}, p5 {reference['p5']:.4f}, median {reference['median']:.4f}). Attack: "
        f"loss threshold (Yeom et al. 2018) on {summary['members']} train and {summary['non_members']} test "
        "images; 0.5 is chance.",
        *(["", GENERATOR_NOTE] if summary.get("generator_attack") else []),
    ]


def verdict_section(privacy: dict[str, Any]) -> str:
    """The report.md section of a privacy record (names the failing set images, never a train image)."""
    lines = [SECTION_TITLE, "", *summary_table(public_summary(privacy))]
    failing = failing_images(privacy)
    if failing:
        lines += ["", "Failing images (file, distance to its nearest train image; which one: privacy.json):", ""]
        lines += [f"- `{image['file_name']}`: {image['distance']:.4f}" for image in failing]
    if not privacy["verdict"]["safe"]:
        lines += ["", how_to_fix(privacy)]
    return "\n".join(lines) + "\n"
