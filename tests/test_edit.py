"""`rsdistill edit` on tiny random InstructPix2Pix components; instruction lists; zero-shot prompts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rsdistill.cli.main import main
from rsdistill.core.errors import RSDistillError
from rsdistill.data.imageset import read_image_set
from rsdistill.evaluate.clipscore import class_prompts, load_clip, zero_shot_accuracy
from rsdistill.generator.tiny import tiny_instruct_pix2pix_folder
from rsdistill.synthesis.edit import SCENE_INSTRUCTIONS, check_instructions, default_instructions, read_instructions
from tests.test_evaluate_metrics import _tiny_clip


def _common(root: Path, model: Path) -> list[str]:
    return ["edit", "--dataset", f"imagefolder:{root}", "--resolution", "32", "--model", str(model), "--steps", "1",
            "--per-class", "2", "--batch-size", "3", "--device", "cpu"]


def test_edit_writes_edited_copies_with_instruction_and_source(
    tmp_path: Path, make_imagefolder: Callable[..., Path]
) -> None:
    root = make_imagefolder(counts={"forest": 4, "lake": 4})
    model = tiny_instruct_pix2pix_folder(tmp_path / "ip2p")
    instructions = tmp_path / "instructions.txt"
    instructions.write_text("# weather\nmake it winter\n\nadd haze\n")
    out = tmp_path / "edited"
    assert main([*_common(root, model), "--instructions", str(instructions), "--out", str(out)]) == 0
    edited = read_image_set(out, ["forest", "lake"])
    assert edited.images.shape == (4, 32, 32, 3) and sorted(edited.labels.tolist()) == [0, 0, 1, 1]
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in records] == ["make it winter", "add haze"] * 2
    assert all(r["source"].split("/")[0] == r["label"] and r["method"] == "instructpix2pix" for r in records)


def test_a_bad_instruction_list_is_refused(
    tmp_path: Path, make_imagefolder: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_imagefolder(counts={"forest": 2, "lake": 2})
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    for bad in (empty, binary):
        args = [*_common(root, tmp_path / "unused"), "--instructions", str(bad), "--out", str(tmp_path / "o")]
        assert main(args) == 2
        assert "--instructions" in capsys.readouterr().err
    with pytest.raises(RSDistillError, match="is empty"):
        read_instructions(empty)
    with pytest.raises(RSDistillError, match="not an instruction"):
        check_instructions(["make it winter", 3])


def test_a_missing_model_offline_gives_a_clear_message(
    tmp_path: Path, make_imagefolder: Callable[..., Path], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = make_imagefolder(counts={"forest": 2, "lake": 2})
    assert main([*_common(root, tmp_path / "no-such-model"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "InstructPix2Pix model" in err and "--model" in err and "HF_HUB_OFFLINE" in err
    assert not (tmp_path / "o").exists()


def test_default_instructions_per_dataset() -> None:
    assert default_instructions("ucmerced") == SCENE_INSTRUCTIONS and "make it winter" in SCENE_INSTRUCTIONS
    assert "make it winter" not in default_instructions("xbd")


def test_zero_shot_prompts_use_readable_class_names(tmp_path: Path) -> None:
    assert class_prompts(["AnnualCrop", "parking_lot"]) == [
        "a satellite photo of annual crop.", "a satellite photo of parking lot."]
    clip = load_clip(f"local-dir:{_tiny_clip(tmp_path / 'clip')}")
    images = np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
    accuracy = zero_shot_accuracy(clip, images, np.array([0, 1, 0, 1]), ["AnnualCrop", "Forest"])
    assert accuracy in (0.0, 25.0, 50.0, 75.0, 100.0)
