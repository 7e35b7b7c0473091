"""The captions stage: a caption for every train image and an aggregated prompt per prototype cluster.

The stage folder holds `metadata.jsonl` (one line per train image, the Hugging Face imagefolder format with
`file_name` relative to the dataset root) and `prompts.json` (one prompt per prototype, in prototypes.json
order; without prototypes, one per class). Captions are appended to a partial file as they are made, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rsdistill.captioning.aggregate import Group, PromptFitter, TextEmbedder, aggregate, check_rule
from rsdistill.captioning.attributes import AttributeCaptioner
from rsdistill.core.artifacts import Stage, read_manifest
from rsdistill.core.atomic import write_text_atomic
from rsdistill.core.config import CaptionConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import resolve_device
from rsdistill.data.context import RunContext
from rsdistill.data.dataset import ImageArray, SceneDataset
from rsdistill.data.names import scene_phrase

STAGE = "captions"
METADATA = "metadata.jsonl"
PROMPTS = "prompts.json"
PARTIAL = "captions.partial.jsonl"
CAPTIONERS = ("attributes", "hf")
PROTOTYPE_FIELDS = frozenset({"id", "class", "label", "members"})


def read_prototypes(path: str | Path, dataset: SceneDataset) -> tuple[dict[str, Any], str]:
    """A prototypes.json (given as the file or its stage folder) checked against `dataset`, and its hash."""
    path = Path(path)
    file = path / "prototypes.json" if path.is_dir() else path
    if not file.is_file():
        raise RSDistillError(
            f"{file} does not exist. Give a prototypes stage folder holding prototypes.json."
        )
    text = file.read_text()
    try:
        data = json.loads(text)
        valid = all(set(entry) >= PROTOTYPE_FIELDS for entry in data["prototypes"])
    except (json.JSONDecodeError, KeyError, TypeError):
        valid = False
    if not valid:
        raise RSDistillError(
            f"{file} is not a prototypes file: it needs a `prototypes` list whose entries hold "
            f"{', '.join(sorted(PROTOTYPE_FIELDS))}. Run `rsdistill prototypes` to make one."
        )
    fingerprint = data.get("dataset_fingerprint")
    if fingerprint is not None and fingerprint != dataset.fingerprint:
        raise RSDistillError(
            f"{file} was made for another dataset or split (fingerprint {fingerprint}, this dataset "
            f"{dataset.name} has {dataset.fingerprint}). Run the prototypes stage on this dataset first."
        )
    if data.get("classes") not in (None, dataset.classes):
        raise RSDistillError(
            f"{file} lists classes {data['classes']} but {dataset.name} has {dataset.classes}."
        )
    return data, hashlib.sha256(text.encode()).hexdigest()[:16]


def check_captions(config: CaptionConfig, device: str) -> None:
    """Refuses caption settings the stage cannot run with, before any image is captioned: the captioner's
    (`check_captioner`), an unknown aggregation, a text embedder that cannot be loaded (it stays loaded for the
    stage)."""
    check_captioner(config)
    check_rule(config.aggregation)
    TextEmbedder(config.text_embedder, device=str(resolve_device(device)))


def check_captioner(config: CaptionConfig) -> None:
    """Refuses an unknown captioner, and an hf captioner without a model or whose model cannot be found (its
    config is read, not its weights)."""
    if config.captioner not in CAPTIONERS:
        raise RSDistillError(
            f"captions.captioner must be one of {', '.join(CAPTIONERS)}, not {config.captioner!r}."
        )
    if config.captioner == "hf":
        if not config.model:
            raise RSDistillError(
                "The hf captioner needs a model: pass --model <hub id or folder> (captions.model)."
            )
        from rsdistill.captioning.vlm import captioning_model_config

        captioning_model_config(config.model)


def build_captioner(config: CaptionConfig, classes: list[str], device: str) -> Any:
    """The configured captioner (see CaptionConfig)."""
    if config.captioner == "attributes":
        return AttributeCaptioner(classes, config.mention_class, config.prefix)
    check_captioner(config)
    from rsdistill.captioning.vlm import HFCaptioner

    return HFCaptioner(config.model, config.prompt, device, config.dtype, config.batch_size, config.max_new_tokens)


def read_partial(path: Path) -> dict[str, dict[str, str]]:
    """Captions already written by an interrupted run (a torn last line is ignored)."""
    done: dict[str, dict[str, str]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                done[record["key"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def seed_partial(source: Path, stage: Stage, partial: Path, keys: set[str]) -> None:
    """Writes the captions of `source`, a finished stage with the same settings, as if made by this one."""
    manifest = read_manifest(source)
    if manifest is None:
        raise RSDistillError(f"{source} has no manifest: it is not a finished captions stage; rebuild it.")
    settings = json.loads(json.dumps({**stage.config, "data": stage.inputs["data"]}, default=str))
    theirs = {**manifest.get("config", {}), "data": manifest.get("inputs", {}).get("data")}
    differing = sorted(name for name in settings if settings[name] != theirs.get(name))
    if differing:
        raise RSDistillError(
            f"Cannot reuse the captions of {source}: its {', '.join(differing)} differ from this stage's. "
            "Caption with the same settings, or leave captions_from out."
        )
    with partial.open("w") as sink:
        for line in (source / METADATA).read_text().splitlines():
            record = json.loads(line)
            if record["file_name"] in keys:
                entry = {"key": record["file_name"], "text": record["text"], "captioner": record["captioner"]}
                sink.write(json.dumps(entry) + "\n")


def caption_images(
    captioner: Any,
    fallback: AttributeCaptioner,
    shown: ImageArray,
    base: ImageArray,
    classes: list[str],
    config: CaptionConfig,
    partial: Path,
) -> tuple[dict[str, dict[str, str]], int]:
    """Captions every image, resuming from `partial`; returns records by key and the number of fallbacks.

    `shown` are the images the captioner sees, `base` the same images at the stage resolution (for the
    attribute captions that replace empty model output).
    """
    done = read_partial(partial)
    todo = np.asarray([i for i, key in enumerate(base.keys) if key not in done], dtype=np.int64)
    batch = getattr(captioner, "batch_size", config.batch_size)
    with (
        partial.open("a") as sink,
        tqdm(total=len(base.keys), initial=len(base) - len(todo), desc="captioning", unit="img") as bar,
    ):
        for start in range(0, len(todo), batch):
            index = todo[start : start + batch]
            labels = base.labels[index]
            texts = captioner.caption(np.asarray(shown.images[index]), labels)
            empty = [j for j, text in enumerate(texts) if not text.strip()]
            names = [captioner.name] * len(texts)
            if empty and captioner is not fallback:
                replaced = fallback.caption(np.asarray(base.images[index[empty]]), labels[empty])
                for j, text in zip(empty, replaced, strict=True):
                    texts[j], names[j] = text, fallback.name
            if captioner is not fallback and config.mention_class:
                texts = [
                    text
                    if name == fallback.name
                    else f"{scene_phrase(classes[label], config.prefix)}, {text}"
                    for text, name, label in zip(texts, names, labels.tolist(), strict=True)
                ]
            for i, text, name in zip(index.tolist(), texts, names, strict=True):
                record = {"key": base.keys[i], "text": text, "captioner": name}
                done[record["key"]] = record
                sink.write(json.dumps(record) + "\n")
            sink.flush()
            bar.update(len(index))
    fallbacks = sum(record["captioner"] != captioner.name for record in done.values())
    return done, fallbacks


def prompt_groups(
    prototypes: dict[str, Any] | None,
    classes: list[str],
    base: ImageArray,
    captions: dict[str, dict[str, str]],
) -> tuple[list[dict[str, Any]], list[Group]]:
    """Prompt entries (id, class, label) and their members' captions: per prototype, or per class."""
    entries: list[dict[str, Any]] = []
    groups: list[Group] = []
    if prototypes is None:
        for label, name in enumerate(classes):
            keys = [key for key, lab in zip(base.keys, base.labels.tolist(), strict=True) if lab == label]
            entries.append({"id": f"{name}/class", "class": name, "label": label})
            groups.append(Group([captions[k]["text"] for k in keys], keys))
        return entries, groups
    for proto in prototypes["prototypes"]:
        keys = [key for key in proto["members"] if key in captions]
        if not keys:
            raise RSDistillError(
                f"Prototype {proto['id']} has no member among the captioned train images (were they "
                "skipped as unreadable?). Re-run the prototypes stage on the same images."
            )
        entries.append({"id": proto["id"], "class": proto["class"], "label": int(proto["label"])})
        groups.append(Group([captions[k]["text"] for k in keys], keys))
    return entries, groups


def run_captions(
    context: RunContext,
    config: CaptionConfig,
    out: str | Path,
    prototypes: str | Path | None = None,
    captions_from: str | Path | None = None,
) -> Path:
    """Builds (or finds done) the captions stage folder `out`.

    Args:
        context: The dataset (only its train split is captioned), the image size of the stage (the attribute
            captioner measures images of this size), cache, `on_bad_image` (`stop` names the unreadable file,
            `skip` leaves it out, counted in the manifest) and the device of the models.
        config: Captioner, aggregation and prompt settings.
        out: The stage folder (e.g. `<run_dir>/captions`); built beside it under a temporary name.
        prototypes: A prototypes stage folder (or its prototypes.json): one prompt per prototype; None: one
            prompt per class.
        captions_from: A finished captions stage of the same dataset made with the same settings (e.g. the
            run's shared per-image captions): its captions are taken instead of captioning the images again.

    Returns:
        The finished stage folder.
    """
    dataset, resolution, device = context.dataset, context.resolution, context.device
    out = Path(out)
    proto_data, proto_hash = (
        read_prototypes(prototypes, dataset) if prototypes is not None else (None, "none")
    )
    stage = Stage(
        out.parent,
        out.name,
        config={**asdict(config), "resolution": resolution},
        inputs={"data": dataset.fingerprint, "prototypes": proto_hash},
        overwrite=context.overwrite,
    )
    if stage.done:
        return stage.path
    base = context.images("train")
    shown = base
    if config.captioner == "hf" and config.image_resolution not in (None, resolution):
        shown = dataset.images(
            "train", config.image_resolution, cache_dir=context.cache_dir, on_bad_image=context.on_bad_image
        )
        if shown.keys != base.keys:
            raise RSDistillError("The images decoded at the two resolutions differ; clear the image cache.")
    extra: dict[str, Any] = {}
    with stage.build(extra) as work:
        if captions_from is not None:
            seed_partial(Path(captions_from), stage, work / PARTIAL, set(base.keys))
        captioner = build_captioner(config, dataset.classes, device)
        fallback = (
            captioner
            if isinstance(captioner, AttributeCaptioner)
            else AttributeCaptioner(dataset.classes, config.mention_class, config.prefix)
        )
        captions, fallbacks = caption_images(
            captioner, fallback, shown, base, dataset.classes, config, work / PARTIAL
        )
        lines = [
            json.dumps(
                {
                    "file_name": key,
                    "label": dataset.classes[label],
                    "text": captions[key]["text"],
                    "captioner": captions[key]["captioner"],
                }
            )
            for key, label in zip(base.keys, base.labels.tolist(), strict=True)
        ]
        write_text_atomic(work / METADATA, "\n".join(lines) + "\n")

        entries, groups = prompt_groups(proto_data, dataset.classes, base, captions)
        embedder = TextEmbedder(config.text_embedder, device=str(resolve_device(device)))
        fitter = PromptFitter(config.tokenizer or config.text_embedder, config.max_prompt_tokens)
        results, truncated = aggregate(groups, config.aggregation, embedder, fitter, config.min_phrase_share)
        prompts = [
            {**entry, **result, "members": len(group.keys)}
            for entry, result, group in zip(entries, results, groups, strict=True)
        ]
        document = {
            "rule": config.aggregation,
            "captioner": captioner.name,
            "text_embedder": config.text_embedder,
            "tokenizer": config.tokenizer or config.text_embedder,
            "max_tokens": config.max_prompt_tokens,
            "truncated": truncated,
            "prototypes": str(prototypes) if prototypes is not None else None,
            "prompts": prompts,
        }
        write_text_atomic(work / PROMPTS, json.dumps(document, indent=2) + "\n")
        (work / PARTIAL).unlink()
        extra.update(
            images=len(lines),
            fallbacks=fallbacks,
            skipped=list(base.skipped),
            prompts=len(prompts),
            truncated=truncated,
        )
    return stage.path


def load_captions(folder: str | Path) -> dict[str, str]:
    """`{train key: caption}` from a captions stage folder's metadata.jsonl."""
    path = Path(folder) / METADATA
    if not path.is_file():
        raise RSDistillError(f"{path} does not exist: {folder} is not a finished captions stage.")
    captions = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
            captions[record["file_name"]] = record["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise RSDistillError(
                f"{path} line {number} is not a caption record; rebuild the stage."
            ) from None
    return captions


def load_prompts(folder: str | Path) -> list[dict[str, Any]]:
    """The prompt entries (id, class, label, prompt, members) of a captions stage folder's prompts.json."""
    path = Path(folder) / PROMPTS
    if not path.is_file():
        raise RSDistillError(f"{path} does not exist: {folder} is not a finished captions stage.")
    try:
        return json.loads(path.read_text())["prompts"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise RSDistillError(f"{path} is not a prompts file; rebuild the captions stage.") from None
