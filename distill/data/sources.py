"""Loading a dataset by spec: a named dataset, an image folder, a Hugging Face source or xBD.

A dataset spec is one of:

- a named dataset: ``eurosat``, ``ucmerced``, ``resisc45``, ``aid`` (found under a data root);
- ``imagefolder:<path>``: any folder of class folders;
- ``hf:<hub id or saved folder>``: a Hugging Face ``datasets`` source with an image and a class-label column;
- ``xbd:<path>``: building-damage patches cut from the xBD layout (see :mod:`rsdistill.data.xbd`).
"""

from __future__ import annotations

from pathlib import Path

from rsdistill.core.errors import RSDistillError
from rsdistill.data.dataset import NAMED_DATASETS, NamedDataset, SceneDataset, load_folder_dataset, resolve_data_root
from rsdistill.data.hf import load_hf_dataset
from rsdistill.data.xbd import load_xbd_dataset


def named_dataset_folder(named: NamedDataset, root: str | Path | None) -> Path:
    """The folder of a named dataset, or a clear error that says where it is expected."""
    data_root, origin = resolve_data_root(root)
    if (data_root / named.folder).is_dir():
        return data_root / named.folder
    raise RSDistillError(
        f"Dataset {named.name!r} not found: expected the folder {data_root / named.folder} "
        f"(data root from {origin}). Point at a folder holding {named.folder}/<Class>/<image> with "
        f"--data-root DIR or RSDISTILL_DATA=DIR, or, with network, fetch a public copy with "
        f"`rsdistill data download {named.name}`."
    )


def load_dataset(
    spec: str,
    root: str | Path | None = None,
    split_file: str | Path | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.2,
) -> SceneDataset:
    """Loads a dataset by spec (see the module docstring).

    Args:
        spec: ``eurosat``, ``imagefolder:<path>``, ``hf:<id or folder>`` or ``xbd:<path>``.
        root: Data root for named datasets (overrides ``$RSDISTILL_DATA``).
        split_file: Where a generated split is read from or written to (for roots without ``test.txt``).
        split_seed: Seed of a generated stratified split.
        test_fraction: Test share of a generated split.

    Returns:
        The dataset with its train/test split.

    Raises:
        RSDistillError: When the data is missing or malformed; the message says where and what to do.
    """
    split_path = Path(split_file) if split_file is not None else None
    if spec in NAMED_DATASETS:
        folder = named_dataset_folder(NAMED_DATASETS[spec], root)
        return load_folder_dataset(folder, spec, split_path, split_seed, test_fraction)
    kind, _, target = spec.partition(":")
    if kind == "imagefolder" and target:
        path = Path(target).expanduser()
        if not path.is_dir():
            raise RSDistillError(f"Image folder {path} does not exist (from dataset spec {spec!r}).")
        return load_folder_dataset(path, spec, split_path, split_seed, test_fraction)
    if kind == "hf" and target:
        return load_hf_dataset(target, spec, split_seed, test_fraction)
    if kind == "xbd" and target:
        return load_xbd_dataset(Path(target.partition("?")[0]).expanduser(), spec, split_seed=split_seed,
                                split_file=split_path, test_fraction=test_fraction)
    raise RSDistillError(
        f"Unknown dataset {spec!r}. Use one of {', '.join(NAMED_DATASETS)}, imagefolder:<path>, "
        "hf:<hub id or folder>, or xbd:<path>."
    )
