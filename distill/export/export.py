"""`rsdistill export`: a set as a Hugging Face dataset with its card, once its privacy verdict allows it.

The export folder::

    <out>/README.md          the dataset card (Hub YAML header)
    <out>/sample_grid.png    one row per class
    <out>/data/...           the images and labels (see rsdistill.export.hfdata for each format)

It is built in a temporary sibling of ``--out`` and renamed into place when complete, so a failure leaves
nothing half-written; ``--out`` must not exist yet, or be an empty folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rsdistill.core.atomic import temporary_sibling, write_text_atomic
from rsdistill.core.config import EvalConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.imageset import ImageSet, read_image_set, read_records, sample_grid
from rsdistill.evaluate.evaluation import real_train_bytes
from rsdistill.export import card as cards
from rsdistill.export.hfdata import check_format, write_data
from rsdistill.export.hub import push_to_hub
from rsdistill.export.source import ExportSource
from rsdistill.export.thresholds import Thresholds
from rsdistill.export.verdict import PRIVACY_FILE, measure_privacy, record_verdict, recorded_verdict, set_row
from rsdistill.export.verdict_text import public_summary, refusal
from rsdistill.synthesis.near_copy import DEFAULT_SPACE

SHOWN_PROMPTS = 5


@dataclass
class ExportOptions:
    """How to export.

    Attributes:
        format: imagefolder, parquet or arrow (see rsdistill.export.hfdata).
        license: The license of the exported set (a Hub license id; "unknown" when not stated).
        source_license: The source dataset's license, as the user states it.
        allow_unsafe: Export a set that fails its privacy verdict (or has none) anyway.
        thresholds: What the verdict judges by.
        push_to_hub: A Hub dataset repo id to upload the export to (None: stay on disk).
        private: Create that repo private.
        evaluation: How the attack's classifiers are trained (the run's evaluation settings).
        near_copy_space: The feature space of the near-copy search (the run's synthesis.near_copy_space).
    """

    format: str = "imagefolder"
    license: str = "unknown"
    source_license: str | None = None
    allow_unsafe: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    push_to_hub: str | None = None
    private: bool = False
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    near_copy_space: str = DEFAULT_SPACE


def check_destination(out: Path, set_dir: Path) -> None:
    """Refuses an ``--out`` that exists and is not an empty folder, or that lies inside the set."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise RSDistillError(f"{out} exists and is not a folder. Choose another --out (a new folder).")
    if out.is_dir() and any(out.iterdir()):
        raise RSDistillError(f"The export folder {out} exists and is not empty; rsdistill does not write into or "
                             "replace it. Choose a new --out, or move that folder away yourself.")
    if out.resolve().is_relative_to(set_dir.resolve()):
        raise RSDistillError(f"The export folder {out} lies inside the set {set_dir}. Choose an --out outside it.")


def privacy_of(context: RunContext | None, source: ExportSource, options: ExportOptions) -> dict[str, Any] | None:
    """The set's privacy record: the run's own when it is about this set, else measured now (and, for a run,
    written into its report folder). None when the dataset is unknown (a set given without --dataset)."""
    report_dir = source.report_dir
    if report_dir is not None:
        privacy = recorded_verdict(report_dir, source.set_dir, options.thresholds)
        if privacy is not None:
            return privacy
    if context is None:
        return None
    print(f"measuring the privacy verdict of {source.set_dir} against {context.dataset.name}")
    args = (context, options.evaluation, source.set_dir)
    generator = source.generator_dir()
    if report_dir is not None and report_dir.is_dir():
        return record_verdict(*args, report_dir, source.report(), options.near_copy_space, options.thresholds,
                              generator)
    return measure_privacy(*args, options.thresholds, options.near_copy_space, generator=generator)


def judged(privacy: dict[str, Any] | None, source: ExportSource, allow_unsafe: bool) -> dict[str, Any] | None:
    """The public summary of the verdict, once the export may go ahead."""
    if privacy is None:
        if not allow_unsafe:
            raise RSDistillError(
                f"The privacy of {source.set_dir} cannot be judged: the dataset it was made from is not known. "
                "Pass it (--dataset NAME, with --data_root where needed) to measure the verdict, or pass "
                "--allow-unsafe to export without one (the card then says it was not measured)."
            )
        print("warning: exporting without a privacy verdict (--allow-unsafe)")
        return None
    if not privacy["verdict"]["safe"]:
        if not allow_unsafe:
            record = source.report_dir / PRIVACY_FILE if source.report_dir is not None else None
            raise RSDistillError(refusal(privacy, record if record is not None and record.is_file() else None))
        print("warning: exporting a set that failed its privacy verdict (--allow-unsafe): " +
              "; ".join(privacy["verdict"]["reasons"]))
    return public_summary(privacy)


def read_set(context: RunContext | None, set_dir: Path) -> ImageSet:
    """The set at its own size, its classes in the dataset's order (or sorted, when the dataset is unknown)."""
    classes = context.dataset.classes if context else sorted({str(r["label"]) for r in read_records(set_dir)})
    return read_image_set(set_dir, classes)


def card_facts(context: RunContext | None, source: ExportSource, image_set: ImageSet, options: ExportOptions,
               privacy: dict[str, Any] | None) -> cards.CardFacts:
    config = source.config()
    report = source.report()
    row = set_row(report, source.set_dir)
    total = real_train_bytes(context.dataset) if context else None
    storage = row.get("storage_ratio") if row else (image_set.storage_bytes() / total if total else None)
    manifest = source.manifest() or {}
    dataset = config.data.dataset if config else (context.dataset.name if context else "unknown source")
    texts = list(dict.fromkeys(str(r.get("text") or "") for r in image_set.records if r.get("text")))
    shown = texts[:SHOWN_PROMPTS] + ([f"... ({len(texts)} distinct prompts in all)"] if len(texts) > SHOWN_PROMPTS
                                     else [])
    counts = image_set.per_class()
    return cards.CardFacts(
        classes=image_set.classes, images=len(image_set.labels), ipc=round(len(image_set.labels) / len(counts)),
        image_size=int(image_set.images.shape[1]), fmt=options.format, license=options.license,
        source=cards.redact(dataset), source_license=options.source_license, stage=source.stage, config=config,
        version=manifest.get("versions", {}).get("rsdistill") or cards.version(),
        accuracy=cards.accuracy_figures(report, row) if report and row else None, storage_ratio=storage,
        privacy=privacy, texts=shown,
    )


def build(work: Path, image_set: ImageSet, facts: cards.CardFacts, fmt: str) -> None:
    texts = [str(r.get("text") or "") for r in image_set.records]
    write_data(work, fmt, image_set.images, image_set.labels, texts, image_set.classes, facts.ipc)
    columns = min(10, max(image_set.per_class().values()))  # no empty columns for a small IPC
    grid = sample_grid(image_set.images, image_set.labels, len(image_set.classes), columns=columns)
    Image.fromarray(np.asarray(grid)).save(work / cards.GRID_FILE, format="PNG")
    write_text_atomic(work / "README.md", cards.render(facts))


def export_set(
    context: RunContext | None, options: ExportOptions, out: str | Path, source: ExportSource
) -> Path:
    """Exports the set of `source` to `out` as a Hugging Face dataset with its card.

    Args:
        context: The dataset the set was made from (None when not known: then the verdict cannot be measured,
            and only ``allow_unsafe`` exports).
        options: Format, licenses, thresholds, Hub repo.
        out: The export folder (must not exist, or be empty).
        source: The set, and the run it belongs to (`rsdistill.export.source.resolve_source`).

    Returns:
        The export folder.

    Raises:
        RSDistillError: A bad destination, a set that fails its verdict (without ``allow_unsafe``), a failed
            write (nothing is left behind) or push (the export on disk stays complete).
    """
    out = Path(out)
    check_format(options.format)
    check_destination(out, source.set_dir)
    image_set = read_set(context, source.set_dir)
    privacy = judged(privacy_of(context, source, options), source, options.allow_unsafe)
    facts = card_facts(context, source, image_set, options, privacy)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = temporary_sibling(out)
    try:
        build(work, image_set, facts, options.format)
        check_destination(out, source.set_dir)  # again: it may have changed while the export was written
        if out.is_dir():
            out.rmdir()
        work.rename(out)
    except OSError as error:
        raise RSDistillError(f"Could not write the export {out}: {error.strerror or error}. Free space there or "
                             "choose another --out; nothing was left behind.") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"exported {len(image_set.labels)} images to {out} ({options.format})")
    if options.push_to_hub:
        print(f"pushed to {push_to_hub(out, options.push_to_hub, options.private)}")
    return out
