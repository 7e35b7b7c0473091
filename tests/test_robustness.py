"""Issue 25, cases 4 to 6: a lock per run and stage folder, every setting checked before the first stage, and
one-line messages (full disk, decompression bombs, devices) instead of tracebacks; a stale automatic split is
made again; orphaned partial folders go; checkpoints are read as plain tensors; dataset names stay one name."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

from rsdistill.cli.main import main
from rsdistill.core.artifacts import Stage
from rsdistill.core.errors import RSDistillError
from rsdistill.core.lock import FolderLock
from rsdistill.core.runtime import resolve_device
from rsdistill.data.dataset import ImageArray, SceneDataset, dataset_slug, split_files_path
from rsdistill.data.sources import load_dataset
from rsdistill.evaluate.scoring import Scorer
from rsdistill.pipeline import RUN_LOCK, Run, run_lock, slug
from rsdistill.synthesis.refine import refine_images
from tests.test_refine import TINY
from tests.test_safety import USER_BYTES, snapshot, tiny_set, users_folder

REPO = Path(__file__).resolve().parents[1]

# Builds one stage in a child process: it holds the stage until `<run_dir>/../go` appears.
BUILD_STAGE = """
import os, sys, time
from pathlib import Path
from rsdistill.core.artifacts import Stage
from rsdistill.core.errors import RSDistillError
run_dir, started = Path(sys.argv[1]), Path(sys.argv[2])
stage = Stage(run_dir, "generator", config={"steps": 2}, inputs={})
try:
    with stage.build() as work:
        with (work / "log.txt").open("a") as log:
            log.write(f"step 1 by {os.getpid()}\\n")
        started.write_text("holding")
        deadline = time.time() + 120
        while not (run_dir.parent / "go").exists() and time.time() < deadline:
            time.sleep(0.05)
        with (work / "log.txt").open("a") as log:
            log.write(f"step 2 by {os.getpid()}\\n")
except RSDistillError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
"""

# Holds a run folder's lock, as `rsdistill run` does, until `<run_dir>/../go` appears.
HOLD_RUN = """
import sys, time
from pathlib import Path
from rsdistill.pipeline import run_lock
run_dir, started = Path(sys.argv[1]), Path(sys.argv[2])
with run_lock(run_dir).held():
    started.write_text("holding")
    deadline = time.time() + 120
    while not (run_dir.parent / "go").exists() and time.time() < deadline:
        time.sleep(0.05)
"""


def start(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.time() + 120
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.05)


# --- Case 4: locks --------------------------------------------------------------------------------------------


def test_two_processes_building_one_stage_never_mix(tmp_path: Path) -> None:
    run_dir = tmp_path / "shared"
    first = start(BUILD_STAGE, run_dir, tmp_path / "first")
    wait_for(tmp_path / "first", first)
    second = start(BUILD_STAGE, run_dir, tmp_path / "second")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    assert f"The stage folder {run_dir / 'generator'} is in use by process {first.pid} on host" in err
    assert "Traceback" not in err and not (tmp_path / "second").exists()
    (tmp_path / "go").touch()
    assert first.wait(timeout=120) == 0
    log = (run_dir / "generator" / "log.txt").read_text()
    assert log == f"step 1 by {first.pid}\nstep 2 by {first.pid}\n"  # no duplicated or foreign steps
    assert sorted(p.name for p in run_dir.iterdir()) == ["generator"]  # no partial folder, no lock left


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "shared"
    holder = start(BUILD_STAGE, run_dir, tmp_path / "first")
    wait_for(tmp_path / "first", holder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    assert json.loads((run_dir / ".generator.lock").read_text())["pid"] == holder.pid
    stage = Stage(run_dir, "generator", config={"steps": 2}, inputs={})
    with stage.build() as work:
        assert (work / "log.txt").read_text() == f"step 1 by {holder.pid}\n"  # its partial work is resumed
    assert stage.done and not (run_dir / ".generator.lock").exists()
    assert f"took over the lock of The stage folder {stage.path} from process {holder.pid}" in capsys.readouterr().err


def test_a_second_run_on_the_same_folder_stops_with_a_message(
    make_imagefolder: Callable[..., Path], tmp_path: Path
) -> None:
    root = make_imagefolder({"forest": 3, "lake": 3}, size=16, test_per_class=1)
    run_dir = tmp_path / "run"
    holder = start(HOLD_RUN, run_dir, tmp_path / "first")
    wait_for(tmp_path / "first", holder)
    before = snapshot(tmp_path)
    second = subprocess.run(
        [sys.executable, "-m", "rsdistill", "run", "--dataset", f"imagefolder:{root}", "--out", str(run_dir),
         "--resolution", "16"], cwd=REPO, text=True, capture_output=True, timeout=300)
    assert second.returncode == 2, second.stderr
    assert f"error: The run folder {run_dir} is in use by process {holder.pid} on host" in second.stderr
    assert f"delete the lock file {run_dir / RUN_LOCK}" in second.stderr and "Traceback" not in second.stderr
    assert snapshot(tmp_path) == before  # nothing written, not even the split or config.yaml
    (tmp_path / "go").touch()
    assert holder.wait(timeout=60) == 0 and not (run_dir / RUN_LOCK).exists()


def test_a_lock_from_another_host_is_not_broken(tmp_path: Path) -> None:
    lock = run_lock(tmp_path / "run")
    lock.path.parent.mkdir(parents=True)
    record = {"pid": 1, "host": "elsewhere", "started": time.time(), "command": "rsdistill run"}
    lock.path.write_text(json.dumps(record))
    with pytest.raises(RSDistillError, match="on another host, so rsdistill cannot tell") as error, lock.held():
        pass
    assert str(lock.path) in str(error.value) and lock.path.exists()


def test_a_lock_is_entered_again_by_its_holder(tmp_path: Path) -> None:
    lock = FolderLock(tmp_path / ".x.lock", "x")
    with lock.held(), lock.held():
        assert json.loads(lock.path.read_text())["host"] == socket.gethostname()
    assert not lock.path.exists()


# --- Case 5: every setting checked before the first stage ------------------------------------------------------


@pytest.mark.parametrize(("settings", "message"), [
    (["refine.iterations=-5"], "refine.iterations must be at least 1, not -5"),
    (["synthesis.guidance=magic"], "synthesis.guidance 'magic' is unknown"),
    (["synthesis.selection=best"], "synthesis.selection 'best' is unknown"),
    (["synthesis.scheduler=euler"], "synthesis.scheduler 'euler' is unknown"),
    (["captions.captioner=hf"], "The hf captioner needs a model: pass --model <hub id or folder> (captions.model)"),
    (["captions.captioner=hf", "captions.model=/nowhere/blip"], "Cannot load a model from '/nowhere/blip' "
     "(captions.model)"),
    (["evaluation.metrics=fid,bogus"], "Unknown metric(s) bogus"),
    (["evaluation.baselines=oracle"], "Unknown baseline(s) oracle"),
    (["evaluation.metrics=clip", "evaluation.clip_model=local-dir:/nowhere/clip"],
     "Could not load the open_clip model 'local-dir:/nowhere/clip'"),
    (["generator.pretrained_model_name_or_path=/nowhere/sd"], "Diffusion model folder /nowhere/sd does not exist"),
    (["generator.pretrained_model_name_or_path=nobody/no-such-model"],
     "Could not load the vae/ component of nobody/no-such-model"),
    (["--ipc", "50"], "prototypes.ipc 50 is larger than the number of train images"),
    (["--device", "gpu0"], "--device 'gpu0' (the device setting) is not a device name"),
])
def test_run_refuses_bad_settings_before_the_first_stage(
    make_imagefolder: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, settings: list[str], message: str,
) -> None:
    root = make_imagefolder({"forest": 3, "lake": 3}, size=16, test_per_class=1)
    data = snapshot(root)
    monkeypatch.setattr(Run, "base_generator", lambda self: pytest.fail("the first stage started"))
    run_dir, shared = tmp_path / "run", tmp_path / "shared"
    args = ["run", "--dataset", f"imagefolder:{root}", "--resolution", "16", "--ipc", "1", "--out", str(run_dir),
            "--shared-dir", str(shared), *settings]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: ") and message in err.splitlines()[-1] and "Traceback" not in err
    assert not shared.exists() and (not run_dir.exists() or list(run_dir.iterdir()) == [])  # nothing left
    assert snapshot(root) == data


def test_evaluate_checks_the_clip_model_before_training_anything(
    make_imagefolder: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_imagefolder({"forest": 3, "lake": 3}, size=16, test_per_class=1)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was set up for training")

    monkeypatch.setattr(Scorer, "for_dataset", no_training)
    out = tmp_path / "report"
    args = ["evaluate", "--dataset", f"imagefolder:{root}", "--out", str(out), "--resolution", "16",
            "--baselines", "full", "--metrics", "clip", "--clip_model", f"local-dir:{tmp_path / 'no-clip'}"]
    assert main(args) == 2
    assert "Could not load the open_clip model" in capsys.readouterr().err and not out.exists()


# --- Case 6: one-line messages and silent staleness ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
def test_a_full_disk_while_a_stage_saves_names_the_path(tmp_path: Path, kind: str) -> None:
    stage = Stage(tmp_path, "base-abc", config={}, inputs={})
    with pytest.raises(RSDistillError) as error, stage.build() as work:
        (work / "vae").mkdir()
        target = work / "vae" / "diffusion_pytorch_model.safetensors"
        if kind == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    message = str(error.value)
    named = target if kind == "oserror" else stage.partial_path
    assert message.startswith(f"No space left on the disk while writing {named}. Free space on that disk")
    assert f"kept in {stage.partial_path} and resumed" in message
    assert (stage.partial_path / "vae").is_dir() and not stage.path.exists()


def test_a_really_full_disk_gives_the_message(tmp_path: Path) -> None:
    """On a 256 KiB tmpfs (needs root; skipped elsewhere): safetensors and torch.save as the stages call them."""
    from safetensors.torch import save_file

    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        for save in (lambda work: save_file({"w": torch.zeros(2**18)}, work / "unet.safetensors"),
                     lambda work: torch.save({"w": torch.zeros(2**18)}, work / "refine_state.pt")):
            stage = Stage(disk, "stage", config={}, inputs={})
            with pytest.raises(RSDistillError, match="No space left on the disk while writing"), \
                    stage.build() as work:
                save(work)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_the_command_line_turns_a_full_disk_into_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/cache/train-64px.npy")

    monkeypatch.setattr("rsdistill.pipeline.run_pipeline", full)
    assert main(["run", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on the disk while writing /data/cache/train-64px.npy.")
    assert err.count("\n") == 1


def test_a_decompression_bomb_is_a_bad_image(
    make_imagefolder: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_imagefolder({"forest": 3, "lake": 3}, size=8, test_per_class=1)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "lake" / "lake_big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is over twice the limit: Pillow refuses it
    dataset = load_dataset(f"imagefolder:{root}")
    with pytest.raises(RSDistillError, match=r"Cannot read image .*lake_big\.png: Image size \(4096 pixels\) "
                       r"exceeds limit.*--on-bad-image skip"):
        dataset.images("train", 8)
    assert dataset.images("train", 8, on_bad_image="skip").skipped == ["lake/lake_big.png"]


@pytest.mark.parametrize(("device", "message"), [
    ("cuda", "--device 'cuda' (the device setting): torch sees no CUDA GPU on this machine. Use --device cpu "
     "(or auto), or install a CUDA build of torch."),
    ("gpu0", "--device 'gpu0' (the device setting) is not a device name; use auto, cpu, cuda, cuda:N or mps."),
])
def test_an_unusable_device_names_the_setting(device: str, message: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RSDistillError) as error:
        resolve_device(device)
    assert str(error.value) == message


def test_an_automatic_split_follows_the_images(
    make_imagefolder: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_imagefolder({"forest": 5, "lake": 5}, size=8)
    split = tmp_path / "split-test.txt"
    first = load_dataset(f"imagefolder:{root}", split_file=split)
    made_from = json.loads(split_files_path(split).read_text())["files"]
    assert len(made_from) == 10 and "warning" not in capsys.readouterr().err
    assert load_dataset(f"imagefolder:{root}", split_file=split).fingerprint == first.fingerprint
    (root / "lake" / "lake_002.png").unlink()
    (root / "forest" / "forest_009.png").write_bytes((root / "forest" / "forest_000.png").read_bytes())
    again = load_dataset(f"imagefolder:{root}", split_file=split)
    err = capsys.readouterr().err
    assert f"warning: the images under {root} changed since the split {split} was made (1 added: " in err
    assert "forest/forest_009.png; 1 removed: lake/lake_002.png); making a new split" in err
    keys = {s.key for s in again.train + again.test}
    assert "forest/forest_009.png" in keys and "lake/lake_002.png" not in keys
    assert json.loads(split_files_path(split).read_text())["files"] == sorted(keys)


def test_a_split_written_before_file_lists_is_kept_or_remade(
    make_imagefolder: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_imagefolder({"forest": 4, "lake": 4}, size=8)
    split = tmp_path / "split-test.txt"
    split.write_text("forest/forest_001.png\nlake/lake_003.png\n")  # as an older rsdistill wrote it
    kept = load_dataset(f"imagefolder:{root}", split_file=split)
    assert {s.key for s in kept.test} == {"forest/forest_001.png", "lake/lake_003.png"}
    assert split_files_path(split).is_file()
    split_files_path(split).unlink()
    (root / "lake" / "lake_003.png").unlink()
    remade = load_dataset(f"imagefolder:{root}", split_file=split)
    assert "1 removed: lake/lake_003.png" in capsys.readouterr().err
    assert "lake/lake_003.png" not in {s.key for s in remade.train + remade.test}


def test_a_set_with_absolute_file_names_is_refused_before_scoring(
    tmp_path: Path, make_imagefolder: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = make_imagefolder({"forest": 3, "lake": 3}, size=16, test_per_class=1)
    set_dir = tiny_set(tmp_path / "set", ["forest", "lake"])
    metadata = set_dir / "metadata.jsonl"
    lines = metadata.read_text().splitlines()
    lines[0] = json.dumps({"file_name": str(root / "forest" / "forest_000.png"), "label": "forest"})  # a test image
    metadata.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(Scorer, "for_dataset", lambda *a, **k: pytest.fail("scored"))
    args = ["evaluate", str(set_dir), "--dataset", f"imagefolder:{root}", "--out", str(tmp_path / "report"),
            "--resolution", "16"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{metadata} line 1" in err and "inside the set folder" in err and not (tmp_path / "report").exists()


def test_orphaned_partial_folders_go_when_the_stage_completes(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    orphan = shared / ".generator-aaaa.partial"
    (orphan / "checkpoint-1").mkdir(parents=True)
    (orphan / "checkpoint-1" / "unet.bin").write_bytes(b"0" * 1000)
    busy = shared / ".generator-bbbb.partial"  # another command is training it right now
    busy.mkdir()
    FolderLock(shared / ".generator-bbbb.lock", "busy").acquire()
    other_family = shared / ".base-cccc.partial"
    other_family.mkdir()
    notes = users_folder(shared / "mine")
    stage = Stage(shared, "generator-dddd", config={}, inputs={}, family="generator")
    with stage.build() as work:
        (work / "model.bin").write_bytes(b"1")
    assert not orphan.exists() and busy.is_dir() and other_family.is_dir() and notes.read_bytes() == USER_BYTES
    assert stage.done


def test_a_refinement_checkpoint_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    state = tmp_path / "refine_state.pt"
    torch.save({"synthetic": torch.zeros(1), "payload": Payload(str(marker))}, state)
    images, labels = np.zeros((2, 16, 16, 3), np.uint8), np.array([0, 1])
    train = ImageArray(np.full((4, 16, 16, 3), 99, np.uint8), np.array([0, 0, 1, 1]), ["a", "b", "c", "d"])
    with pytest.raises(RSDistillError, match=r"cannot be read as plain tensors.*Delete it to start the refinement"):
        refine_images(images, labels, train, 2, TINY, state_path=state, progress=False)
    assert not marker.exists()


class Payload:
    """Pickles as a call that would create a file when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "ran"))


@pytest.mark.parametrize(("name", "problem"), [
    ("imagefolder:C:\\data\\scenes", "holds a path separator"),
    ("..", "names the folder itself or the one above it"),
    ("imagefolder:/data/scenes", None),
])
def test_a_dataset_name_becomes_one_folder_name_or_is_refused(name: str, problem: str | None) -> None:
    dataset = SceneDataset(name, ["a"], [], [], None, "", "")  # type: ignore[arg-type]
    if problem is None:
        assert slug(dataset) == dataset_slug(name) == "imagefolder__data_scenes"
        return
    with pytest.raises(RSDistillError, match=problem) as error:
        slug(dataset)
    assert repr(name) in str(error.value)
