"""Hugging Face `datasets` sources: a hub id or a folder saved with `save_to_disk`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from rsdistill.core.atomic import safe_name
from rsdistill.core.errors import RSDistillError
from rsdistill.data.dataset import ImageSource, Sample, SceneDataset, stratified_test_keys


def _columns(features: dict[str, Any], where: str) -> tuple[str, str]:
    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    image_cols = [name for name, feature in features.items() if isinstance(feature, ImageFeature)]
    label_cols = [name for name, feature in features.items() if isinstance(feature, ClassLabel)]
    if not image_cols or not label_cols:
        raise RSDistillError(
            f"Dataset {where} needs an Image column and a ClassLabel column; it has {', '.join(features)}."
        )
    return image_cols[0], label_cols[0]


def _class_names(features: dict[str, Any], label_column: str, where: str) -> list[str]:
    """The ClassLabel names of `label_column`, each checked to be usable as a folder name (`safe_name`);
    `where` names the dataset in the message."""
    names = list(features[label_column].names)
    for name in names:
        safe_name(
            name,
            f"Class name of the Hugging Face dataset {where} (ClassLabel column {label_column!r}):",
            "Class names become folder names; rename the class in the dataset (e.g. "
            f"`ds.cast_column({label_column!r}, ClassLabel(names=[...]))`, then `save_to_disk` again).",
        )
    return names


class HFSource(ImageSource):
    """Opens rows of a `datasets.DatasetDict` by key `<split>/<row>`."""

    def __init__(self, splits: dict[str, Any], image_column: str) -> None:
        self.splits = splits
        self.image_column = image_column

    def open(self, key: str) -> Image.Image:
        split, row = key.rsplit("/", 1)
        return self.splits[split][int(row)][self.image_column]


def load_hf(target: str) -> Any:
    import datasets

    path = Path(target).expanduser()
    try:
        loaded = datasets.load_from_disk(str(path)) if path.exists() else datasets.load_dataset(target)
    except (FileNotFoundError, ConnectionError, ValueError) as error:
        raise RSDistillError(
            f"Could not load the Hugging Face dataset {target!r}: {error}. Give a folder written by "
            "`save_to_disk`, or a hub id on a machine with network (HF_HUB_OFFLINE must be unset)."
        ) from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def load_hf_dataset(target: str, name: str, split_seed: int = 0, test_fraction: float = 0.2) -> SceneDataset:
    """A `SceneDataset` over a Hugging Face dataset: its own test split when it has one, else stratified."""
    splits = load_hf(target)
    first = next(iter(splits.values()))
    image_column, label_column = _columns(first.features, target)
    classes = _class_names(first.features, label_column, repr(target))
    entries: dict[str, list[tuple[str, int]]] = {}
    for split, table in splits.items():
        labels = table[label_column]
        entries[split] = [(f"{split}/{row}", int(label)) for row, label in enumerate(labels)]
    train_split = "train" if "train" in entries else next(iter(entries))
    if "test" in entries:
        train, test = entries[train_split], entries["test"]
        origin = f"{target} test split"
    else:
        pooled = entries[train_split]
        test_keys = stratified_test_keys(pooled, test_fraction, split_seed)
        train = [e for e in pooled if e[0] not in test_keys]
        test = [e for e in pooled if e[0] in test_keys]
        origin = f"stratified, seed {split_seed}, {test_fraction:.0%} test"
    return SceneDataset(
        name,
        classes,
        [Sample(k, label) for k, label in train],
        [Sample(k, label) for k, label in test],
        HFSource(dict(splits), image_column),
        origin,
        target,
    )


def export_imagefolder(splits: Any, out_dir: Path) -> Path:
    """Writes a `DatasetDict` as `<out_dir>/<Class>/<split>_<row>.png` plus `test.txt` for its test split.

    This is how `rsdistill data download` turns a public hub copy into the layout every stage reads.
    """
    from tqdm.auto import tqdm

    from rsdistill.core.atomic import write_text_atomic

    first = next(iter(splits.values()))
    image_column, label_column = _columns(first.features, str(out_dir))
    classes = _class_names(first.features, label_column, f"being written to {out_dir}")
    test_lines = []
    for split, table in splits.items():
        for row, item in enumerate(tqdm(table, desc=f"writing {split}", unit="img")):
            name = classes[item[label_column]]
            (out_dir / name).mkdir(parents=True, exist_ok=True)
            key = f"{name}/{split}_{row:06d}.png"
            item[image_column].convert("RGB").save(out_dir / key)
            if split == "test":
                test_lines.append(key)
    if test_lines:
        write_text_atomic(out_dir / "test.txt", "".join(f"{k}\n" for k in sorted(test_lines)))
    return out_dir
