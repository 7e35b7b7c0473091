"""The dataset card (README.md) of an exported set: the Hub's YAML header, then what the set is, how it was made,
what it is worth and how private it is.

Only public facts go in: the config without its local paths, figures from the evaluation report and the
privacy verdict's summary (`rsdistill.export.verdict_text.public_summary`). No train image is named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import yaml

from rsdistill.core.config import RunConfig, to_dict
from rsdistill.export.hfdata import DATA_FILES, LOADERS
from rsdistill.export.verdict_text import summary_table

TAGS = ["remote-sensing", "satellite-imagery", "dataset-distillation", "synthetic", "rsdistill"]
GRID_FILE = "sample_grid.png"
# Config fields that hold local paths (folders of the maker's machine), left off the card.
LOCAL_FIELDS = frozenset({"run_dir", "shared_dir", "data_root", "cache_dir", "split_file", "output_dir", "captions",
                          "latent_classifier", "resume_from_checkpoint", "logging_dir"})
LOCAL_PATH = re.compile(r"(^|(?<=:))(/|~|\.{1,2}/)\S*")
CITATION = """\
Condensed with rsdistill, which follows DPD:

```bibtex
@article{xu2026dpd,
  title  = {Towards Realistic Remote Sensing Dataset Distillation with Discriminative Prototype-guided Diffusion},
  author = {Xu and Ghamisi and Weng},
  year   = {2026}
}
```

and refines the generated images by distribution matching (Zhao and Bilen, "Dataset Condensation with
Distribution Matching", WACV 2023). Cite the source dataset as its authors ask."""


@dataclass
class CardFacts:
    """What the card says, gathered by the export.

    Attributes:
        classes: Class names (`ClassLabel` order).
        images: Number of images.
        ipc: Images per class.
        image_size: Side of the (square) images, in pixels.
        fmt: The export format.
        license: The license of the exported set, as the user states it (Hub license id).
        source: The source dataset, without local paths.
        source_license: The source dataset's license, as the user states it (None: not stated).
        stage: What made the set (``refine``: synthesized then refined; ``synthesis``; None: unknown).
        config: The run's config (None for a set outside a run).
        version: The rsdistill version that made the set.
        accuracy: Figures of the evaluation report (see `accuracy_figures`), or None.
        storage_ratio: The set's bytes over the real train split's, or None.
        privacy: The verdict's public summary, or None when it was not measured.
        texts: Distinct prompts, a few of them.
    """

    classes: list[str]
    images: int
    ipc: int
    image_size: int
    fmt: str
    license: str
    source: str
    source_license: str | None = None
    stage: str | None = None
    config: RunConfig | None = None
    version: str | None = None
    accuracy: dict[str, Any] | None = None
    storage_ratio: float | None = None
    privacy: dict[str, Any] | None = None
    texts: list[str] = field(default_factory=list)


def redact(value: str) -> str:
    """`value` with local paths (``/x``, ``~/x``, ``./x``, also after ``spec:``) replaced by ``<local path>``."""
    return LOCAL_PATH.sub("<local path>", value)


def public_config(config: RunConfig) -> dict[str, Any]:
    """The run config as a nested dict, without the fields that hold local paths and with paths redacted."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in LOCAL_FIELDS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return redact(value) if isinstance(value, str) else value

    return clean(to_dict(config))


def size_category(count: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if count < limit:
            return name
    return "100K<n<1M"


def accuracy_figures(report: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The set's accuracy, the random coreset's at the same IPC and full data's, from an evaluation report."""
    random = next((r for r in report["rows"] if r.get("kind") == "baseline" and r.get("method") == "random"
                   and r.get("ipc") == row["ipc"]), None)
    full = report.get("full")
    return {
        "protocol": report.get("protocol_label"),
        "runs": len(row["accuracy"].get("runs", [])),
        "set": (row["accuracy"]["mean"], row["accuracy"]["std"]),
        "random": None if random is None else (random["accuracy"]["mean"], random["accuracy"]["std"]),
        "full": None if full is None else full["accuracy"],
        "ratio_to_full": row.get("ratio_to_full"),
    }


def version() -> str:
    try:
        return metadata.version("rsdistill")
    except metadata.PackageNotFoundError:
        return "unknown"


def header(facts: CardFacts) -> dict[str, Any]:
    """The Hub's YAML header."""
    return {
        "license": facts.license,
        "task_categories": ["image-classification"],
        "size_categories": [size_category(facts.images)],
        "tags": TAGS,
        "pretty_name": f"{facts.source} distilled, {facts.ipc} image(s) per class",
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILES[facts.fmt]}]}],
        "dataset_info": {"features": [
            {"name": "image", "dtype": "image"},
            {"name": "label", "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(facts.classes)}}}},
            {"name": "text", "dtype": "string"},
            {"name": "ipc", "dtype": "int64"},
        ]},
    }


def _made(facts: CardFacts) -> list[str]:
    lines = ["## How it was made", ""]
    config = facts.config
    if config is None:
        lines.append(f"A set in rsdistill's format (rsdistill {facts.version or 'unknown'}); the run that made it "
                     "was not given, so its settings are not known here.")
        return lines
    g, s = config.generator, config.synthesis
    generator = (f"the pretrained diffusion model `{redact(g.pretrained_model_name_or_path)}`"
                 if g.pretrained_model_name_or_path else
                 f"a latent diffusion model trained from scratch on the source's train split (preset `{g.preset}`)")
    lines += [
        f"With rsdistill {facts.version or 'unknown'} (seed {config.seed}), by prototype-guided diffusion (DPD):",
        "",
        f"1. per class, k-means over the train images' latents ({config.prototypes.encoder} encoder) gave "
        f"{config.prototypes.ipc} prototype(s);",
        f"2. {generator}, fine-tuned for {g.max_train_steps} steps with the classifier-consistency loss "
        f"(λ = {g.consistency_lambda}), prompted with {g.prompts};",
        f"3. each image was sampled from its prototype's prompt with `{s.guidance}` guidance (strength "
        f"{s.prototype_strength}, {s.num_inference_steps} steps, best of {s.candidates} candidate(s));",
    ]
    if facts.stage == "refine":
        lines.append(f"4. the images were refined by distribution matching against the class statistics of the real "
                     f"train images ({config.refine.iterations} iterations).")
    lines += ["", "The whole config (local paths left out):", "", "<details><summary>config</summary>", "",
              "```yaml", yaml.safe_dump(public_config(config), sort_keys=False).rstrip(), "```", "", "</details>"]
    return lines


def _accuracy(facts: CardFacts) -> list[str]:
    lines = ["## What it is worth", ""]
    accuracy = facts.accuracy
    if accuracy is None:
        lines.append("Not scored: no evaluation report came with the set (`rsdistill evaluate` scores it).")
    else:
        random, full = accuracy["random"], accuracy["full"]
        lines += [
            f"Top-1 accuracy on the source's real test split of a classifier trained on this set alone, by the "
            f"benchmark protocol `{accuracy['protocol']}` (rsdistill docs/benchmark.md; mean ± std over "
            f"{accuracy['runs']} runs, %):",
            "",
            "| trained on | accuracy (%) |",
            "|---|---|",
            f"| this set ({facts.ipc} per class) | {accuracy['set'][0]:.2f} ± {accuracy['set'][1]:.2f} |",
            f"| real random coreset, {facts.ipc} per class | "
            + ("not scored |" if random is None else f"{random[0]:.2f} ± {random[1]:.2f} |"),
            "| all real train images | " + ("not scored in this run |" if full is None else f"{full:.2f} |"),
        ]
    if facts.storage_ratio is not None:
        lines += ["", f"Storage ratio (this set's bytes over the real train split's): {facts.storage_ratio:.2e}."]
    return lines


def _privacy(facts: CardFacts) -> list[str]:
    lines = ["## Privacy", ""]
    if facts.privacy is None:
        return [*lines, "**Not measured.** This set was exported with `--allow-unsafe` and no privacy verdict: "
                "nothing here says whether its images disclose real train images."]
    lines += [
        "Measured by rsdistill (`rsdistill.export.verdict`) against the source's real train and test images. "
        "A set image fails when it lies nearer a real train image than almost every real test image does; the "
        "membership attack asks whether a classifier trained on the set gives its source's train images away.",
        "",
        *summary_table(facts.privacy),
    ]
    if not facts.privacy["safe"]:
        lines += ["", "**This set failed the verdict and was exported with `--allow-unsafe`.**"]
    return lines


def render(facts: CardFacts) -> str:
    """The card: YAML header, then the sections."""
    source_license = facts.source_license or "not stated by the exporter; check the source dataset's terms"
    loader = LOADERS[facts.fmt].format(out="OUT")
    import_name = "load_from_disk" if facts.fmt == "arrow" else "load_dataset"
    texts = "".join(f"\n  - {text}" for text in facts.texts) if facts.texts else " (none)"
    lines = [
        "---",
        yaml.safe_dump(header(facts), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {facts.source}, distilled: {facts.ipc} synthetic image(s) per class",
        "",
        f"{facts.images} synthetic {facts.image_size} x {facts.image_size} images, {facts.ipc} per class, of the "
        f"{len(facts.classes)} classes of the remote-sensing scene dataset {facts.source}, made by dataset "
        "distillation with rsdistill: a classifier trained on these images alone learns the classes without "
        "seeing a real image. See Privacy below for how close the images come to the source's real ones.",
        "",
        "- Source dataset: " + facts.source,
        f"- Source license (as stated by the exporter): {source_license}",
        f"- License of this set: {facts.license}",
        f"- Classes: {', '.join(facts.classes)}",
        "- Columns: `image`, `label` (ClassLabel), `text` (the prompt the image was generated from), `ipc`",
        f"- Prompts:{texts}",
        "",
        "```python",
        f"from datasets import {import_name}",
        f"dataset = {loader}  # OUT: this folder; or load_dataset(\"OUT\") / the Hub repo id",
        "```",
        "",
        f"![one row per class]({GRID_FILE})",
        "",
        *_made(facts),
        "",
        *_accuracy(facts),
        "",
        *_privacy(facts),
        "",
        "## Citation",
        "",
        CITATION,
        "",
    ]
    return "\n".join(lines)
