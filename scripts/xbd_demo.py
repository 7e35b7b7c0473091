"""xBD demo: an xBD folder (or the test fixture, written on the spot) through the stages that exist.

    python scripts/xbd_demo.py --out /tmp/xbd-demo                 # fixture with one of each bad input
    python scripts/xbd_demo.py --out /tmp/xbd-demo --root /data/xbd --options "?pair=side&split=disaster"

Writes under --out: ``fixture/`` (when no --root), ``patch_grid.png`` (train patches, a row per class),
``coreset-random/`` (IPC real patches per class in the common set format, with xBD metadata per line) and,
when the prototypes package is installed, ``prototypes/`` and ``coreset-kmeans/`` through the CLI.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import numpy as np

from rsdistill.cli.main import build_parser, main
from rsdistill.data.imageset import read_image_set, write_image_set
from rsdistill.data.sources import load_dataset
from rsdistill.data.xbd import XBDDataset


def patch_grid(dataset: XBDDataset, path: Path, per_class: int) -> None:
    """A picture of the first `per_class` train patches of every class, titled with disaster and tile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(dataset.classes)
    figure, axes = plt.subplots(rows, per_class, figsize=(1.6 * per_class, 1.8 * rows), squeeze=False)
    for label, name in enumerate(dataset.classes):
        keys = [s.key for s in dataset.train if s.label == label][:per_class]
        for column, ax in enumerate(axes[label]):
            ax.axis("off")
            if column < len(keys):
                info = dataset.metadata[keys[column]]
                ax.imshow(np.asarray(dataset.source.open(keys[column])))
                ax.set_title(f"{info.disaster}\n{info.tile.rsplit('_', 1)[1]}", fontsize=6)
        axes[label][0].text(-0.1, 0.5, name, transform=axes[label][0].transAxes, ha="right", va="center",
                            fontsize=8)
    figure.suptitle(f"{dataset.name}: train patches by class", fontsize=8)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def random_coreset(dataset: XBDDataset, out: Path, ipc: int, resolution: int, seed: int) -> Path:
    train = dataset.images("train", resolution)
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.choice(np.flatnonzero(train.labels == label), ipc, replace=False)
                            for label in range(len(dataset.classes))])
    chosen = train.subset(picks)
    return write_image_set(out, np.asarray(chosen.images), chosen.labels, dataset.classes,
                           records=dataset.records(chosen.keys))


def main_demo() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output folder (not a tracked place)")
    parser.add_argument("--root", help="an xBD folder; default: write the test fixture into OUT/fixture")
    parser.add_argument("--options", default="", help='spec options, e.g. "?pair=side&split=disaster"')
    parser.add_argument("--ipc", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.root) if args.root else out / "fixture"
    if not args.root and not (root / "labels").is_dir():
        from rsdistill.data.xbd_fake import add_bad_inputs, write_xbd_fixture

        fixture = write_xbd_fixture(root)
        add_bad_inputs(root)
        print(f"wrote the fixture: {len(fixture.tiles)} clean tiles + one of each bad case, in {root}")
    spec = f"xbd:{root}{args.options}"

    print(f"\n$ rsdistill xbd info {shlex.quote(spec)}")
    if main(["xbd", "info", spec]) != 0:
        raise SystemExit(2)
    dataset = load_dataset(spec, split_seed=args.seed)
    assert isinstance(dataset, XBDDataset)

    patch_grid(dataset, out / "patch_grid.png", per_class=6)
    print(f"\npatch grid: {out / 'patch_grid.png'}")

    coreset = random_coreset(dataset, out / "coreset-random", args.ipc, args.resolution, args.seed)
    written = read_image_set(coreset, dataset.classes)
    print(f"random coreset, {args.ipc} per class ({written.storage_bytes()} bytes): {coreset}, "
          f"{written.per_class()}")

    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    data_flags = ["--dataset", spec, "--resolution", str(args.resolution), "--split-seed", str(args.seed)]
    stages = {
        "prototypes": ["prototypes", *data_flags, "--encoder", "pixels", "--ipc", str(args.ipc),
                       "--out", str(out / "prototypes"), "--overwrite"],
        "coreset": ["coreset", *data_flags, "--method", "kmeans", "--encoder", "pixels",
                    "--ipc", str(args.ipc), "--out", str(out / "coreset-kmeans")],
    }
    for name, argv in stages.items():
        if name not in commands:
            print(f"\n(rsdistill {name}: not in this checkout yet)")
            continue
        print(f"\n$ rsdistill {shlex.join(argv)}")
        if main(argv) != 0:
            raise SystemExit(2)
    later = ("caption", "train-generator", "generate", "evaluate", "run")
    present = [name for name in later if name in commands]
    print(f"\nlater stages not run by this demo: in this checkout {', '.join(present) or 'none'}; "
          f"not yet here {', '.join(name for name in later if name not in present) or 'none'}")


if __name__ == "__main__":
    main_demo()
