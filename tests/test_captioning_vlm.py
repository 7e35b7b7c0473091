"""The `hf` captioner on tiny randomly initialised BLIP and GIT models saved and loaded by path, offline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rsdistill.captioning import load_captions, load_prompts, run_captions
from rsdistill.captioning.vlm import HFCaptioner
from rsdistill.cli.main import main
from rsdistill.core.artifacts import read_manifest
from rsdistill.core.config import CaptionConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.sources import load_dataset
from tests.captioning_helpers import (
    save_text_model,
    save_tiny_blip,
    save_tiny_git,
    save_tiny_llava,
    write_prototypes,
)

IMAGES = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("save", [save_tiny_blip, save_tiny_git])
@pytest.mark.parametrize("prompt", ["", "a satellite image of"])
def test_image_to_text_models_caption_in_batches(
    save: Callable[..., Path], prompt: str, tmp_path: Path
) -> None:
    captioner = HFCaptioner(str(save(tmp_path / "model")), prompt=prompt, device="cpu", max_new_tokens=3)
    assert captioner.caption(IMAGES) == ["river river river"] * 3
    assert captioner.name == f"hf:{tmp_path / 'model'}"


@pytest.mark.parametrize("says", ["river", ""])
def test_instruction_model_gets_the_prompt_through_its_chat_template(says: str, tmp_path: Path) -> None:
    folder = save_tiny_llava(tmp_path / "llava", says=says)
    captioner = HFCaptioner(str(folder), prompt="describe this image", device="cpu", max_new_tokens=3)
    assert captioner.text == "USER: <image> describe this image ASSISTANT:"
    assert captioner.caption(IMAGES) == [" ".join([says] * 3).strip()] * 3


def test_folder_that_is_not_a_captioning_model_is_named(tmp_path: Path) -> None:
    folder = save_text_model(tmp_path / "bert")
    with pytest.raises(RSDistillError, match=r"bert holds a 'bert' model, which is not a captioning model"):
        HFCaptioner(str(folder), device="cpu")
    with pytest.raises(RSDistillError, match=r"Cannot load a model from .*missing"):
        HFCaptioner(str(tmp_path / "missing"), device="cpu")


@pytest.fixture
def dataset_root(make_imagefolder: Callable[..., Path]) -> Path:
    return make_imagefolder(counts={"Forest": 5, "River": 5}, test_per_class=1)


def test_stage_with_a_vlm(dataset_root: Path, tmp_path: Path) -> None:
    dataset = load_dataset(f"imagefolder:{dataset_root}")
    model = save_tiny_git(tmp_path / "git")
    config = CaptionConfig(
        captioner="hf", model=str(model), prompt="", batch_size=3, max_new_tokens=2, image_resolution=40
    )
    protos = write_prototypes(tmp_path / "prototypes", dataset)
    folder = run_captions(RunContext.of(dataset, resolution=32, device="cpu"), config, tmp_path / "captions",
                          prototypes=protos)
    captions = load_captions(folder)
    assert captions["River/River_004.png"] == "a satellite image of a river scene, river river"
    assert len(captions) == 8 and read_manifest(folder)["fallbacks"] == 0
    assert [p["id"] for p in load_prompts(folder)] == ["Forest/0", "Forest/1", "River/0", "River/1"]


def test_empty_vlm_output_falls_back_to_attribute_captions(dataset_root: Path, tmp_path: Path) -> None:
    dataset = load_dataset(f"imagefolder:{dataset_root}")
    model = save_tiny_blip(tmp_path / "blip", says="")
    out = tmp_path / "captions"
    code = main(
        [
            "caption",
            "--dataset",
            f"imagefolder:{dataset_root}",
            "--resolution",
            "32",
            "--model",
            str(model),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 8 and all('"captioner": "attributes"' in line for line in lines)
    assert read_manifest(out)["fallbacks"] == 8
    assert all(
        text.startswith("a satellite image of a ") and "texture" in text
        for text in load_captions(out).values()
    )
    assert load_prompts(out)[0]["id"] == "Forest/class" and len(dataset.train) == 8
