"""The pixel-space GAN (generator.kind: gan) on tiny sizes: training, resume, regularisers, failures."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rsdistill.core.config import GeneratorConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.generator import gan_training
from rsdistill.generator.gan import GanConfig, GanGenerator
from rsdistill.generator.gan_checks import GanDiverged, GanSettings, check_collapse, collapse_ratios, real_spreads
from rsdistill.generator.gan_losses import diff_augment, parse_policy, uniformity_loss
from rsdistill.generator.gan_training import GanTrainer, paired, train_gan
from rsdistill.generator.latent_classifier import LatentClassifier, LatentClassifierConfig
from tests.generator_helpers import one_thread

CLASSES = ["forest", "lake", "town"]
TINY = GeneratorConfig(
    kind="gan",
    max_train_steps=4,
    train_batch_size=6,
    checkpointing_steps=2,
    classifier_steps=3,
    gan_latent_dim=8,
    gan_width=4,
    progress=False,
)


def tiny_data(side: int = 16, per_class: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images of one tint per class."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    tints = np.array([[40, 120, 40], [30, 60, 160], [150, 150, 150]])
    images = np.clip(tints[labels][:, None, None] + rng.normal(0, 25, (len(labels), side, side, 3)), 0, 255)
    return images.astype(np.uint8), labels


def train(out: Path, config: GeneratorConfig = TINY) -> GanGenerator:
    images, labels = tiny_data()
    with one_thread():
        return train_gan(images, labels, CLASSES, GanSettings.from_config(config), out, seed=0)


def interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> object:
    """Makes `GanTrainer.train_step` raise KeyboardInterrupt at `step`; returns the original to put back."""
    original = GanTrainer.train_step

    def interrupted(self: GanTrainer, *args: object) -> dict[str, float]:
        if self.step == step:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(GanTrainer, "train_step", interrupted)
    return original


def test_gan_trains_checkpoints_and_resumes_to_identical_weights(tmp_path: Path, monkeypatch) -> None:
    train(tmp_path / "whole")
    original = interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed")
    assert [p.name for p in sorted((tmp_path / "resumed").glob("checkpoint-*"))] == ["checkpoint-2"]
    monkeypatch.setattr(GanTrainer, "train_step", original)
    train(tmp_path / "resumed")
    for name in ("checkpoint-4/models.safetensors", "generator/model.safetensors"):
        whole, resumed = load_file(tmp_path / "whole" / name), load_file(tmp_path / "resumed" / name)
        assert whole.keys() == resumed.keys()
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), name
    report = (tmp_path / "whole" / "training.json").read_text()
    assert '"uniformity"' in report and '"entropy"' in report  # measured even when off


def test_uniformity_and_entropy_change_the_generator_loss() -> None:
    settings = GanSettings.from_config(TINY)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])

    def losses(**weights: float) -> dict[str, float]:
        torch.manual_seed(0)
        classifier = LatentClassifier(LatentClassifierConfig(3, 3, 8, norm="batch"))
        trainer = GanTrainer(GanConfig(3, 16, 8, 4), replace(settings, **weights), classifier, 0, torch.device("cpu"))
        return {k: float(v.detach()) for k, v in trainer.generator_losses(labels).items()}

    with one_thread():
        off, ur, er = losses(), losses(uniformity_weight=0.5), losses(entropy_weight=0.5)
    base = off["adversarial"] + settings.consistency_lambda * off["consistency"]
    assert off["generator"] == pytest.approx(base)
    assert off["uniformity"] != 0 and off["entropy"] != 0  # measured, but add nothing when off
    assert ur["generator"] == pytest.approx(base + 0.5 * off["uniformity"])
    assert er["generator"] == pytest.approx(base + 0.5 * off["entropy"])
    assert ur["generator"] != off["generator"] != er["generator"]
    with one_thread():
        whole_batch = losses(uniformity_weight=0.5, uniformity_scope="batch")
    assert whole_batch["uniformity"] != off["uniformity"]  # all images compared, and no same-class pairs drawn


def test_a_nan_loss_stops_with_a_named_error_and_keeps_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    original = gan_training.entropy_loss
    calls = {"n": 0}

    def poisoned(features: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return original(features) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(gan_training, "entropy_loss", poisoned)
    with pytest.raises(GanDiverged) as error:
        train(tmp_path / "gan")
    message = str(error.value)
    assert "entropy loss is nan at step 3" in message and "gan_learning_rate" in message
    assert "checkpoint-2" in message and (tmp_path / "gan" / "checkpoint-2").is_dir()


def test_a_generator_that_ignores_z_is_detected_as_collapsed(tmp_path: Path) -> None:
    images, labels = tiny_data()
    reals = real_spreads(images, labels, len(CLASSES))
    torch.manual_seed(0)
    generator = GanGenerator(GanConfig(3, 16, 8, 4)).eval()
    assert min(collapse_ratios(generator, reals, seed=1)) > 0
    with torch.no_grad():
        generator.project.weight[:, :8] = 0  # the first latent_dim inputs are z, the rest the class embedding
    ratios = collapse_ratios(generator, reals, seed=1)
    assert max(ratios) < 1e-6
    with pytest.raises(RSDistillError, match=r"collapsed at step 7: for forest \(0.000\)"):
        check_collapse(ratios, CLASSES, 0.05, 7, "somewhere")


def test_collapse_stops_training_and_keeps_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(gan_training, "COLLAPSE_CHECK_FROM", 0)
    with pytest.raises(RSDistillError, match="collapsed at step 2") as error:
        train(tmp_path / "gan", replace(TINY, gan_collapse_fraction=0.999))
    assert "gan_uniformity_weight" in str(error.value) and (tmp_path / "gan" / "checkpoint-2").is_dir()


def test_generator_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    generator = GanGenerator(GanConfig(3, 32, 8, 4, classes=CLASSES)).eval()
    generator.save_pretrained(tmp_path / "g")
    loaded = GanGenerator.from_pretrained(tmp_path / "g")
    z, labels = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        made = generator(z, labels)
    assert made.shape == (4, 3, 32, 32) and made.abs().max() <= 1
    assert torch.equal(made, loaded(z, labels)) and loaded.config.classes == CLASSES
    with pytest.raises(RSDistillError, match="not a GAN generator folder"):
        GanGenerator.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gan_diffaugment": "color,zoom"}, "gan_diffaugment"),
        ({"mixed_precision": "bf16"}, "mixed_precision=no"),
        ({"gan_uniformity_weight": -1.0}, "gan_uniformity_weight"),
        ({"gan_uniformity_scope": "image"}, "gan_uniformity_scope"),
        ({"gan_ema_decay": 1.0}, "gan_ema_decay"),
        ({"train_batch_size": 1}, "train_batch_size"),
    ],
)
def test_bad_settings_are_refused_by_name(change: dict[str, object], message: str) -> None:
    with pytest.raises(RSDistillError, match=message):
        GanSettings.from_config(replace(TINY, **change))


def test_a_resolution_the_generator_cannot_make_is_refused() -> None:
    with pytest.raises(RSDistillError, match=r"data\.resolution is 48"):
        GanGenerator(GanConfig(3, 48))


def test_diffaugment_is_seeded_and_keeps_the_shape() -> None:
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    policy = parse_policy("color,translation,cutout")
    first = diff_augment(x, policy, torch.Generator().manual_seed(0))
    assert first.shape == x.shape and not torch.equal(first, x)
    assert torch.equal(first, diff_augment(x, policy, torch.Generator().manual_seed(0)))
    assert parse_policy("none") == ()


def gan_run_args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run", "--dataset", f"imagefolder:{root}", "--ipc", "1", "--resolution", "16",
        "--out", str(tmp_path / "run"), "--shared-dir", str(tmp_path / "shared"),
        "generator.kind=gan", "generator.max_train_steps=3", "generator.train_batch_size=4",
        "generator.checkpointing_steps=2", "generator.classifier_steps=2", "generator.gan_latent_dim=8",
        "generator.gan_width=4", "generator.gan_inversion_steps=2", "--candidates", "2", "--runs", "1",
        "--steps", "3", "evaluation.compile=false", "evaluation.baselines=random", "refine.iterations=2",
        "refine.width=8", "refine.compile=false", *extra,
    ]  # fmt: skip


def test_rsdistill_run_with_the_gan_then_skips_done_stages(make_imagefolder, tmp_path: Path) -> None:
    import json

    from rsdistill.cli.main import main

    root = make_imagefolder(counts={"forest": 6, "lake": 6}, size=16, test_per_class=1)
    args = gan_run_args(root, tmp_path, "prototypes.encoder=pixels")
    with one_thread():
        assert main(args) == 0
    run_dir = tmp_path / "run"
    lines = (run_dir / "synthesis" / "set" / "metadata.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["label"] for r in records) == ["forest", "lake"]
    assert {r["generator_kind"] for r in records} == {"gan"} and all(r["candidates_tried"] == 2 for r in records)
    (gan,) = (tmp_path / "shared").glob("*/gan-*")
    assert (gan / "generator" / "model.safetensors").is_file() and (gan / "classifier" / "config.json").is_file()
    assert not list((tmp_path / "shared").glob("*/base-*")) and not (run_dir / "prompts").exists()
    stages = json.loads((run_dir / "stages.json").read_text())["stages"]
    assert {"gan", "prototypes", "synthesis", "refine"} <= set(stages) and "generator" not in stages
    done = [gan, run_dir / "prototypes", run_dir / "synthesis", run_dir / "refine"]
    stamps = {p.name: json.loads((p / "manifest.json").read_text())["finished_at"] for p in done}
    with one_thread():
        assert main(args) == 0  # everything done: nothing is rebuilt
    assert stamps == {p.name: json.loads((p / "manifest.json").read_text())["finished_at"] for p in done}
    generate = ["generate", "--generator", str(gan), "--dataset", f"imagefolder:{root}", "--resolution", "16",
                "--guidance", "none", "--ipc", "2", "--out", str(tmp_path / "generated")]
    with one_thread():
        assert main(generate) == 0  # `rsdistill generate` takes the GAN stage folder as a generator
    lines = (tmp_path / "generated" / "set" / "metadata.jsonl").read_text().splitlines()
    generated = [json.loads(line) for line in lines]
    assert sorted(r["label"] for r in generated) == ["forest", "forest", "lake", "lake"]
    assert {r["generator_kind"] for r in generated} == {"gan"}


@pytest.mark.parametrize(("extra", "message"), [
    ((), "prototypes.encoder=vae"),
    (("prototypes.encoder=pixels", "synthesis.guidance=img2img"), "synthesis.guidance=img2img"),
    (("prototypes.encoder=pixels", "generator.kind=vq"), "generator.kind 'vq' is unknown"),
    (("prototypes.encoder=pixels", "--resolution", "24"), "data.resolution is 24"),
])  # fmt: skip
def test_a_gan_run_refuses_what_it_cannot_honour_before_any_stage(
    make_imagefolder, tmp_path: Path, capsys, extra: tuple[str, ...], message: str
) -> None:
    from rsdistill.cli.main import main

    root = make_imagefolder(counts={"forest": 3, "lake": 3}, size=16, test_per_class=1)
    assert main(gan_run_args(root, tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "shared").exists()


def test_inversion_moves_z_toward_the_image_and_candidates_stay_near_it() -> None:
    from rsdistill.synthesis.gan_synthesis import candidate_latent, invert

    torch.manual_seed(0)
    generator = GanGenerator(GanConfig(3, 16, 8, 4)).eval()
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        target = generator(torch.randn(2, 8), labels)
    start = torch.randn(2, 8)
    with one_thread():
        found = invert(generator, target, labels, start, steps=30)
        with torch.no_grad():
            before = (generator(start, labels) - target).pow(2).mean()
            after = (generator(found, labels) - target).pow(2).mean()
    assert after < before / 2
    alone = invert(generator, target[:1], labels[:1], start[:1], steps=30)
    assert torch.allclose(alone, found[:1], atol=1e-5)  # each z's steps do not depend on the batch
    near, far = candidate_latent(found[0], 7, 0.1), candidate_latent(found[0], 7, 1.0)
    assert torch.equal(near, candidate_latent(found[0], 7, 0.1))
    assert (near - found[0]).norm() < (far - found[0]).norm()


def test_uniformity_is_measured_within_each_class() -> None:
    spread = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    two = torch.tensor([0, 0])
    assert uniformity_loss(collapsed, two).item() == pytest.approx(0.0)  # one image for every z: the maximum
    assert uniformity_loss(spread, two).item() == pytest.approx(-4.0)  # -t * ||e1 - e2||^2 with t = 2
    # images of different classes are never compared: a batch of distinct classes has nothing to measure
    assert uniformity_loss(spread, torch.tensor([0, 1])).item() == 0.0
    features = torch.cat([collapsed, spread]).requires_grad_()
    loss = uniformity_loss(features, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == pytest.approx(-2.0)
    loss.backward()
    assert torch.isfinite(features.grad).all()  # differentiable where a class has collapsed


def test_the_generator_step_draws_classes_in_pairs() -> None:
    labels = torch.tensor([3, 1, 4, 1, 5])
    assert paired(labels).tolist() == [3, 1, 3, 1, 5]


def test_a_checkpoint_without_its_history_is_refused_by_name(tmp_path: Path, monkeypatch) -> None:
    original = interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path)
    (tmp_path / "checkpoint-2" / "history.json").unlink()
    monkeypatch.setattr(GanTrainer, "train_step", original)
    with pytest.raises(RSDistillError, match=r"checkpoint-2 has no history\.json"):
        train(tmp_path)
