"""The privacy verdict of a set: may it be shared without disclosing the real train images it was made from?

Two measures, each judged against a stated threshold (`Thresholds`):

- Near copies. The nearest real train image of every set image, searched in synthesis's near-copy space
  (`rsdistill.synthesis.near_copy`; by default 16 x 16 channel-centred thumbnails, distance = 1 - correlation).
  The reference for "as close as an unseen real image" is the distance from each real *test* image to its
  nearest train image: a set image nearer a train image than the `near_copy_percentile`-th percentile of those
  distances (1st by default) lies closer to a train image than 99 % of unseen real images do, and fails.
- Membership inference. The loss-threshold attack of `rsdistill.evaluate.privacy` (Yeom et al. 2018): the AUC
  with which the loss of a classifier trained on the set tells real train images from real test images, next
  to the same attack on a classifier trained on a real random coreset of the same size. The set fails above
  `max_attack_auc` (0.55). The same attack on the set's source images (the real images its prototypes stand
  for) is reported beside it; with few sources it is too noisy to judge by.

The full record (`privacy.json`) names, for every set image, its nearest train image: that is the private
provenance of the set and stays in the run folder. What an export shows is
`rsdistill.export.verdict_text.public_summary`: figures only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from rsdistill.core.artifacts import add_files
from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.config import EvalConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.imageset import read_image_set, set_digest
from rsdistill.evaluate.evaluation import evaluate_sets
from rsdistill.evaluate.privacy import balanced_sample
from rsdistill.export.thresholds import Thresholds
from rsdistill.export.verdict_text import SECTION_TITLE, verdict_section
from rsdistill.synthesis.near_copy import DEFAULT_SPACE, NearestReal

PRIVACY_FILE = "privacy.json"
DEFAULT_THRESHOLDS = Thresholds()
REFERENCE_SAMPLES = 2000  # real test images whose nearest-train distances make the reference distribution
QUERY_CHUNK = 512



def nearest(index: NearestReal, images: np.ndarray) -> tuple[list[str], np.ndarray]:
    """`index.query` a chunk at a time (a whole test split at once would need a test x train matrix)."""
    keys: list[str] = []
    distances = []
    for start in range(0, len(images), QUERY_CHUNK):
        found, distance = index.query(np.asarray(images[start : start + QUERY_CHUNK]))
        keys += found
        distances.append(distance)
    return keys, np.concatenate(distances) if distances else np.zeros(0)


def near_copies(
    context: RunContext, images: np.ndarray, records: list[dict[str, Any]], space: str, percentile: float
) -> dict[str, Any]:
    """Nearest train image of every set image, judged against the test-to-train distance distribution.

    Args:
        context: The dataset the set was made from (train and test split, decoded at the context's resolution).
        images: The set's images, uint8 (N, H, W, 3) at the context's resolution.
        records: The set's metadata lines, row-aligned with `images`.
        space: The near-copy feature space (`synthesis.near_copy_space`).
        percentile: The percentile of test-to-train distances below which a set image fails.
    """
    index = NearestReal.for_dataset(context.dataset, space, context.resolution, context.cache_dir, context.device)
    test = context.images("test")
    reference_rows = balanced_sample(test.labels, REFERENCE_SAMPLES, seed=0)
    _, reference = nearest(index, np.asarray(test.images[reference_rows]))
    if not len(reference):
        raise RSDistillError(f"The test split of {context.dataset.name} is empty: it is the reference of the "
                             "near-copy measure. Give the dataset a test split (test.txt or data.test_fraction).")
    threshold = float(np.percentile(reference, percentile))
    keys, distances = nearest(index, images)
    per_image = [
        {"file_name": record["file_name"], "label": record["label"], "nearest_train_key": key,
         "distance": round(float(distance), 6),
         "test_percentile": round(100.0 * float(np.mean(reference < distance)), 2)}
        for record, key, distance in zip(records, keys, distances, strict=True)
    ]
    return {
        "space": index.space,
        "reference": {
            "what": "distance from each real test image to its nearest real train image",
            "test_images": len(reference),
            "p1": float(np.percentile(reference, 1)),
            "p5": float(np.percentile(reference, 5)),
            "median": float(np.median(reference)),
        },
        "percentile": percentile,
        "threshold_distance": threshold,
        "set_distance_min": float(distances.min()),
        "set_distance_median": float(np.median(distances)),
        "failing": int(np.sum(distances < threshold)),
        "images": per_image,
    }


def with_privacy_attack(config: EvalConfig) -> EvalConfig:
    """`config` with the membership attack among its metrics when the verdict is asked for and the set is
    trained on alone (the attack reuses the evaluation's own set and random-coreset classifiers)."""
    if not config.privacy_verdict or config.train_on != "set" or "mia" in config.metrics:
        return config
    return replace(config, metrics=[*config.metrics, "mia"])


def set_row(report: dict[str, Any] | None, set_dir: Path) -> dict[str, Any] | None:
    """The report row of the set at `set_dir` (matched by path), or None."""
    for row in (report or {}).get("rows", []):
        if row.get("kind") == "set" and Path(row.get("path", "")).resolve() == set_dir.resolve():
            return row
    return None


def membership(
    context: RunContext, config: EvalConfig, set_dir: Path, report: dict[str, Any] | None
) -> dict[str, Any]:
    """The attack figures: from `report` when its evaluation ran the attack on this set, else measured now on
    one classifier trained on the set and one on a random real coreset of the same size."""
    row = set_row(report, set_dir)
    if row is not None and "mia" in row.get("metrics", {}):
        return row["metrics"]["mia"]
    attack = replace(config, metrics=["mia"], baselines=[], ipc=[], runs=1, train_on="set", labels="hard")
    return evaluate_sets(context, attack, None, [set_dir])["rows"][0]["metrics"]["mia"]


def judge(near: dict[str, Any], attack: dict[str, Any], thresholds: Thresholds) -> dict[str, Any]:
    """The verdict: fit to share when no image fails the near-copy test and the attack AUC is low enough."""
    reasons = []
    if near["failing"]:
        reasons.append(
            f"{near['failing']} of {len(near['images'])} image(s) lie nearer a real train image than "
            f"{100 - near['percentile']:g} % of real test images do (distance < {near['threshold_distance']:.4f} "
            f"in {near['space']} space)"
        )
    auc = attack["set_model_auc_train_vs_test"]
    if auc > thresholds.max_attack_auc:
        reasons.append(f"the membership attack tells train from test images with AUC {auc:.3f} on a classifier "
                       f"trained on the set (at most {thresholds.max_attack_auc:g} allowed)")
    return {"safe": not reasons, "reasons": reasons}


def measure_privacy(
    context: RunContext,
    config: EvalConfig,
    set_dir: str | Path,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    space: str = DEFAULT_SPACE,
    report: dict[str, Any] | None = None,
    generator: str | Path | None = None,
) -> dict[str, Any]:
    """The full privacy record of a set (private: it names the nearest train image of every set image).

    Args:
        context: The dataset the set was made from, resolution, cache, device.
        config: The evaluation settings the attack's classifiers are trained with.
        set_dir: The set, in the common format.
        thresholds: What the verdict judges by.
        space: The near-copy feature space.
        report: An evaluation report (report.json) that may already hold the attack on this set.
        generator: The generator bundle that made the set: also attacked (reported, not judged), when given.
    """
    set_dir = Path(set_dir)
    image_set = read_image_set(set_dir, context.dataset.classes, resolution=context.resolution)
    near = near_copies(context, image_set.images, image_set.records, space, thresholds.near_copy_percentile)
    attack = membership(context, config, set_dir, report)
    on_generator = None
    if generator is not None:  # imported here: loading diffusers costs seconds that an export without it skips
        from rsdistill.export.generator_attack import generator_attack

        on_generator = generator_attack(context, generator)
    return {
        "set": str(set_dir),
        "set_digest": set_digest(set_dir),
        "dataset": context.dataset.name,
        "thresholds": asdict(thresholds),
        "near_copies": near,
        "membership": attack,
        "generator_attack": on_generator,
        "verdict": judge(near, attack, thresholds),
    }


def record_verdict(
    context: RunContext,
    config: EvalConfig,
    set_dir: str | Path,
    report_dir: str | Path,
    report: dict[str, Any] | None = None,
    space: str = DEFAULT_SPACE,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    generator: str | Path | None = None,
) -> dict[str, Any]:
    """Measures the verdict of a run's set and writes it into the run's report folder: privacy.json (the full,
    private record) and a section of report.md (replacing an earlier one). See `measure_privacy`."""
    report_dir = Path(report_dir)
    privacy = measure_privacy(context, config, set_dir, thresholds, space, report, generator)
    write_text_atomic(report_dir / PRIVACY_FILE, json.dumps(privacy, indent=2))
    markdown = report_dir / "report.md"
    text = markdown.read_text() if markdown.is_file() else ""
    text = text.split(SECTION_TITLE, 1)[0].rstrip("\n")
    write_text_atomic(markdown, (text + "\n\n" if text else "") + verdict_section(privacy))
    add_files(report_dir, PRIVACY_FILE, markdown.name)  # a finished report folder stays one rsdistill may replace
    state = "fit to share" if privacy["verdict"]["safe"] else "NOT fit to share"
    print(f"privacy verdict: {state} ({report_dir / PRIVACY_FILE})")
    return privacy


def recorded_verdict(report_dir: Path, set_dir: Path, thresholds: Thresholds) -> dict[str, Any] | None:
    """The privacy record in `report_dir` when it is about this very set (same digest) and was judged by the
    same thresholds, else None."""
    path = report_dir / PRIVACY_FILE
    if not path.is_file():
        return None
    try:
        privacy = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if privacy.get("set_digest") != set_digest(set_dir) or privacy.get("thresholds") != asdict(thresholds):
        return None
    return privacy
