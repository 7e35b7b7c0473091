"""Issue 25: output folders the user already had are never deleted, and no name from data becomes a path
outside the folder it is written into."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsdistill.cli.main import main
from rsdistill.core.artifacts import Stage, read_manifest
from rsdistill.core.atomic import safe_name
from rsdistill.core.errors import RSDistillError
from rsdistill.data.imageset import check_set_destination, read_image_set, write_image_set
from rsdistill.data.sources import load_dataset

USER_BYTES = b"my notes \x00\xff, kept for years\n"


def users_folder(folder: Path) -> Path:
    """A folder of the user's at `folder`: one file of theirs, returned."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_bytes(USER_BYTES)
    return folder / "notes.txt"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` by relative path, with its content hash."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def tiny_set(folder: Path, classes: list[str], size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2 * len(classes), size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(len(classes)), 2)
    return write_image_set(folder, images, labels, classes)


# --- Stage.build: the folder behind refine, generate, caption and prototypes -----------------------------------


def test_stage_never_deletes_a_users_folder(tmp_path: Path) -> None:
    notes = users_folder(tmp_path / "out")
    for overwrite in (None, False, True):
        stage = Stage(tmp_path, "out", config={"x": 1}, inputs={}, overwrite=overwrite)
        with pytest.raises(RSDistillError, match=re.escape(str(tmp_path / "out"))) as error, stage.build() as work:
            (work / "result.txt").write_text("new")
        assert "notes.txt" in str(error.value) and "not even with --overwrite" in str(error.value)
        assert notes.read_bytes() == USER_BYTES
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]


def test_stage_keeps_a_stage_folder_the_user_added_files_to(tmp_path: Path) -> None:
    first = Stage(tmp_path, "refine", config={"iterations": 1}, inputs={})
    with first.build() as work:
        (work / "set").mkdir()
        (work / "set" / "a.png").write_bytes(b"png")
    manifest = read_manifest(first.path)
    assert manifest is not None and manifest["files"] == ["set/a.png"]
    notes = users_folder(first.path / "set")
    other = Stage(tmp_path, "refine", config={"iterations": 2}, inputs={}, overwrite=True)
    with pytest.raises(RSDistillError, match=re.escape("set/notes.txt")), other.build():
        pass
    assert notes.read_bytes() == USER_BYTES and first.done


def test_other_settings_replace_a_stage_of_ours_only_when_allowed(tmp_path: Path) -> None:
    def build(ipc: int, overwrite: bool = True) -> Stage:
        stage = Stage(tmp_path, "synthesis", config={"ipc": ipc}, inputs={}, overwrite=overwrite)
        with stage.build() as work:
            (work / "image.png").write_text(str(ipc))
        return stage

    build(1)
    with pytest.raises(RSDistillError, match="--overwrite") as error:
        build(2, overwrite=False)
    assert str(tmp_path / "synthesis") in str(error.value)
    assert (tmp_path / "synthesis" / "image.png").read_text() == "1"
    build(1, overwrite=False)  # the same settings: rebuilt in place, nothing of anyone else's at stake
    assert build(2, overwrite=True).done
    assert build(3).done  # the default (the pipeline): replaced as it always was
    assert (tmp_path / "synthesis" / "image.png").read_text() == "3"


def test_an_empty_folder_is_used_and_a_file_or_old_manifest_is_kept(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    stage = Stage(tmp_path, "empty", config={}, inputs={}, overwrite=False)
    with stage.build() as work:
        (work / "a.txt").write_text("a")
    assert stage.done

    (tmp_path / "afile").write_bytes(USER_BYTES)
    with pytest.raises(RSDistillError, match="is not a folder"), Stage(tmp_path, "afile", {}, {}).build():
        pass
    assert (tmp_path / "afile").read_bytes() == USER_BYTES

    # A stage written before manifests listed their files: its own files cannot be told from the user's.
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"stage": "old", "fingerprint": "0" * 16}))
    (old / "mine.txt").write_bytes(USER_BYTES)
    with pytest.raises(RSDistillError, match="before rsdistill listed"), Stage(tmp_path, "old", {}, {}).build():
        pass
    assert (old / "mine.txt").read_bytes() == USER_BYTES


def test_a_refusal_after_the_work_keeps_it_for_the_next_run(tmp_path: Path) -> None:
    stage = Stage(tmp_path, "caption", config={}, inputs={})
    with pytest.raises(RSDistillError, match=re.escape("notes.txt")), stage.build() as work:
        (work / "captions.jsonl").write_text("done")
        notes = users_folder(stage.path)  # the user creates the folder while the stage runs
    assert notes.read_bytes() == USER_BYTES and (stage.partial_path / "captions.jsonl").is_file()
    notes.unlink()
    with stage.build() as work:
        assert (work / "captions.jsonl").read_text() == "done"  # resumed
    assert stage.done


# --- The commands that write with --out -------------------------------------------------------------------------


def test_cli_coreset_keeps_a_users_folder(
    make_imagefolder: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_imagefolder(size=16, test_per_class=2)
    out = tmp_path / "coreset"
    args = ["coreset", "--dataset", f"imagefolder:{root}", "--resolution", "16", "--method", "random", "--ipc", "1",
            "--out", str(out)]
    notes = users_folder(out)
    for extra in ([], ["--overwrite"]):
        assert main([*args, *extra]) == 2
        message = capsys.readouterr().err
        assert str(out) in message and "notes.txt" in message and "another --out" in message
        assert notes.read_bytes() == USER_BYTES and sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    notes.unlink()
    assert main(args) == 0  # an empty folder is used
    capsys.readouterr()
    assert main(args) == 2  # a set of ours is replaced on purpose only
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    notes = users_folder(out / "forest")  # a file of the user's put into the set
    assert main([*args, "--overwrite"]) == 2
    assert "forest/notes.txt" in capsys.readouterr().err and notes.read_bytes() == USER_BYTES
    assert len(read_image_set(out, ["forest", "lake", "town"]).records) == 3


def test_cli_prototypes_keeps_a_users_folder(
    make_imagefolder: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_imagefolder(size=16, test_per_class=2)
    run = tmp_path / "run"
    notes = users_folder(run / "prototypes")
    args = ["prototypes", "--dataset", f"imagefolder:{root}", "--resolution", "16", "--encoder", "pixels:4",
            "--ipc", "1", "--out", str(run), "--overwrite"]
    assert main(args) == 2
    message = capsys.readouterr().err
    assert str(run / "prototypes") in message and "notes.txt" in message
    assert notes.read_bytes() == USER_BYTES and sorted(p.name for p in notes.parent.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("command", ["refine", "caption"])
def test_cli_stage_commands_keep_a_users_folder(
    make_imagefolder: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    root = make_imagefolder(size=16, test_per_class=2)
    out = tmp_path / "out"
    notes = users_folder(out)
    data = ["--dataset", f"imagefolder:{root}", "--resolution", "16", "--out", str(out), "--overwrite"]
    if command == "refine":
        source = tiny_set(tmp_path / "synthesis" / "set", ["forest", "lake", "town"])
        argv = ["refine", str(source), *data, "--iterations", "1"]
    else:
        argv = ["caption", *data]
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert str(out) in message and "notes.txt" in message and "not even with --overwrite" in message
    assert notes.read_bytes() == USER_BYTES and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# --- Names from data that become paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", " ", ".", "..", "../x", "a/b", "/abs", "a\\b", "a\0b", 3])
def test_safe_name_refuses_what_is_not_one_plain_name(name: object) -> None:
    with pytest.raises(RSDistillError, match="Class name of X") as error:
        safe_name(name, "Class name of X", "Rename it.")
    assert repr(name) in str(error.value) and "Rename it." in str(error.value)


@pytest.mark.parametrize("name", ["forest", "Herbaceous Vegetation", "a.b", "..a", "x..", "é"])
def test_safe_name_keeps_plain_names(name: str) -> None:
    assert safe_name(name, "Class name") == name


def hf_with_classes(folder: Path, names: list[str]) -> Path:
    import datasets

    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    count = 4 * len(names)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(count)]
    table = datasets.Dataset.from_dict({"image": images, "label": [i % len(names) for i in range(count)]},
                                       features=features)
    table.save_to_disk(str(folder))
    return folder


def test_hf_class_names_cannot_reach_outside_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "a" / "b" / "c"  # deep enough that ../../.. still lands inside tmp_path
    hf = hf_with_classes(work / "hf", ["../../outside", "a/b", "fine"])
    before = snapshot(tmp_path)
    argv = ["coreset", "--dataset", f"hf:{hf}", "--method", "random", "--ipc", "1", "--resolution", "16",
            "--out", str(work / "out")]
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert "'../../outside'" in message and str(hf) in message and "ClassLabel" in message
    assert "free space" not in message.lower()
    assert snapshot(tmp_path) == before and not (work / "out").exists()

    with pytest.raises(RSDistillError, match="'a/b'"):
        from rsdistill.data.hf import export_imagefolder, load_hf

        export_imagefolder(load_hf(str(hf_with_classes(work / "hf2", ["ok", "a/b"]))), work / "exported")
    assert not (work / "exported").exists()


def test_write_image_set_is_the_last_guard(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    with pytest.raises(RSDistillError, match=re.escape("'../../outside'")):
        tiny_set(out, ["ok", "../../outside"])
    with pytest.raises(RSDistillError, match="File stem"):
        write_image_set(out, np.zeros((1, 4, 4, 3), np.uint8), np.zeros(1, np.int64), ["ok"], stems=["../x"])
    assert snapshot(tmp_path) == {}


def test_folder_class_names_are_checked(make_imagefolder: Callable[..., Path]) -> None:
    root = make_imagefolder({"fine": 3, "back\\slash": 3})
    with pytest.raises(RSDistillError, match="Class folder name under") as error:
        load_dataset(f"imagefolder:{root}")
    assert "'back\\\\slash'" in str(error.value)


@pytest.mark.parametrize("kind", ["absolute", "parent", "middle"])
def test_read_image_set_refuses_images_outside_the_set(tmp_path: Path, kind: str) -> None:
    set_dir = tiny_set(tmp_path / "set", ["forest"])
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(outside)
    file_name = {"absolute": str(outside), "parent": "../outside.png", "middle": "forest/../../outside.png"}[kind]
    metadata = set_dir / "metadata.jsonl"
    lines = metadata.read_text().splitlines()
    lines[1] = json.dumps({"file_name": file_name, "label": "forest"})
    metadata.write_text("\n".join(lines) + "\n")
    with pytest.raises(RSDistillError) as error:
        read_image_set(set_dir, ["forest"])
    message = str(error.value)
    assert repr(file_name) in message and f"{metadata} line 2" in message and "inside the set folder" in message


def test_a_set_of_ours_is_replaced_and_anything_else_kept(tmp_path: Path) -> None:
    out = tiny_set(tmp_path / "set", ["forest", "lake"])
    check_set_destination(out)  # ours: may be replaced
    with pytest.raises(RSDistillError, match="--overwrite"):
        check_set_destination(out, overwrite=False)
    notes = users_folder(out)
    with pytest.raises(RSDistillError, match=re.escape("notes.txt")):
        tiny_set(out, ["forest", "lake"])
    assert notes.read_bytes() == USER_BYTES and (out / "metadata.jsonl").is_file()
