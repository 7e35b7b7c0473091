"""Fine-tuning on tiny random SD components saved as a diffusers folder and loaded through `load_bundle`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from rsdistill.core.config import GeneratorConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.sources import load_dataset
from rsdistill.generator.bundle import CLASSIFIER_FOLDER, load_bundle
from rsdistill.generator.checkpoints import list_checkpoints
from rsdistill.generator.finetune import consistency_loss, finetune
from rsdistill.generator.finetune_data import PromptEncoder, vae_digest
from rsdistill.generator.finetune_models import prepare_unet
from rsdistill.generator.latent_classifier import LatentClassifier, LatentClassifierConfig
from rsdistill.generator.tiny import tiny_sd_folder
from tests.generator_helpers import one_thread

CLASSES = ["forest", "lake", "town"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture
def scenes(make_imagefolder: Callable[..., Path]) -> str:
    return "imagefolder:" + str(make_imagefolder({name: 5 for name in CLASSES}, size=32, test_per_class=1))


def with_classifier(folder: Path) -> Path:
    torch.manual_seed(0)
    LatentClassifier(LatentClassifierConfig(4, len(CLASSES), width=8, classes=CLASSES)).save_pretrained(
        folder / CLASSIFIER_FOLDER
    )
    return folder


@pytest.fixture
def sd(tmp_path: Path) -> Path:
    return with_classifier(tiny_sd_folder(tmp_path / "sd"))


def settings(bundle: Path, out: Path, dataset: str, **overrides: object) -> tuple[RunContext, GeneratorConfig]:
    """A tiny run: consistency, checkpoint pruning, validation grids and resuming off unless asked for."""
    base = GeneratorConfig(pretrained_model_name_or_path=str(bundle), output_dir=str(out), train_batch_size=2,
                           max_train_steps=2, checkpointing_steps=1, progress=False, learning_rate=1e-3, rank=4,
                           consistency_lambda=0.0, checkpoints_total_limit=None, resume_from_checkpoint=None,
                           validation_steps=None)
    return RunContext.of(load_dataset(dataset), resolution=32), replace(base, **overrides)


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]


def test_two_step_lora(sd: Path, scenes: str, tmp_path: Path) -> None:
    out = finetune(*settings(sd, tmp_path / "out", scenes, use_lora=True, rank=2, validation_steps=2))
    before, after = unet_weights(sd), unet_weights(out)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(any(t in name for t in ("to_q", "to_k", "to_v", "to_out.0")) for name in changed)
    assert set(before) == set(after)  # merged into plain weights: no LoRA layers left
    assert (out / "unet_lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "validation" / "step-000002.png").is_file()
    assert [step for step, _ in list_checkpoints(out)] == [1, 2]
    assert (out / CLASSIFIER_FOLDER / "model.safetensors").is_file()
    # Its latents cache carries over.
    assert vae_digest(load_bundle(str(out)).vae) == vae_digest(load_bundle(str(sd)).vae)


def test_lora_output_matches_adapter_model(sd: Path, scenes: str, tmp_path: Path) -> None:
    out = finetune(*settings(sd, tmp_path / "out", scenes, use_lora=True, rank=2, max_train_steps=1))
    merged = load_bundle(str(out)).unet
    adapted = load_bundle(str(sd)).unet
    adapted.load_lora_adapter(str(out / "unet_lora"), prefix="unet", weight_name="pytorch_lora_weights.safetensors")
    x, t, text = torch.randn(1, 4, 16, 16), torch.tensor([10]), torch.randn(1, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(merged(x, t, text).sample, adapted(x, t, text).sample, atol=1e-4, rtol=1e-4)


def test_two_step_full_finetune_logs_both_terms(sd: Path, scenes: str, tmp_path: Path) -> None:
    out = finetune(*settings(sd, tmp_path / "out", scenes, consistency_lambda=0.5, consistency_max_timestep=999,
                            caption_dropout=0.0, snr_gamma=5.0, checkpoints_total_limit=1))
    before, after = unet_weights(sd), unet_weights(out)
    assert sum(not torch.equal(before[k], after[k]) for k in before) > len(before) // 2
    lines = log_lines(out)
    assert [line["step"] for line in lines] == [1, 2]
    assert all(line["diffusion_loss"] > 0 and line["consistency_loss"] > 0 for line in lines)
    assert all(line["consistency_samples"] == 2 for line in lines)
    assert [step for step, _ in list_checkpoints(out)] == [2]  # total limit 1


@pytest.mark.parametrize("use_lora", [False, True])
def test_resumed_run_matches_uninterrupted_one(sd: Path, scenes: str, tmp_path: Path, use_lora: bool) -> None:
    common = {"use_lora": use_lora, "gradient_accumulation_steps": 2, "checkpointing_steps": 2,
              "consistency_lambda": 0.5, "caption_dropout": 0.3}
    whole = finetune(*settings(sd, tmp_path / "whole", scenes, max_train_steps=4, **common))
    finetune(*settings(sd, tmp_path / "parts", scenes, max_train_steps=2, **common))
    parts = finetune(*settings(sd, tmp_path / "parts", scenes, max_train_steps=4, resume_from_checkpoint="latest",
                              **common))
    expected, got = unet_weights(whole), unet_weights(parts)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert [line["step"] for line in log_lines(parts)] == [1, 2, 3, 4]


def test_resume_with_other_settings_is_refused(sd: Path, scenes: str, tmp_path: Path) -> None:
    finetune(*settings(sd, tmp_path / "out", scenes))
    with pytest.raises(RSDistillError, match=r"learning_rate: 0.001 -> 0.0005.*use_lora: False -> True"):
        finetune(*settings(sd, tmp_path / "out", scenes, max_train_steps=3, resume_from_checkpoint="latest",
                          learning_rate=5e-4, use_lora=True))


def test_consistency_term_reaches_unet_only_below_threshold(sd: Path) -> None:
    bundle = load_bundle(str(sd))
    classifier = LatentClassifier.from_pretrained(sd / CLASSIFIER_FOLDER).requires_grad_(False)
    noisy, text = torch.randn(2, 4, 16, 16), torch.randn(2, 16, 32)
    labels, conditioned = torch.tensor([0, 2]), torch.tensor([True, True])
    for timesteps, reaches in ((torch.tensor([100, 300]), True), (torch.tensor([301, 900]), False)):
        bundle.unet.zero_grad(set_to_none=True)
        prediction = bundle.unet(noisy, timesteps, text).sample
        loss, used = consistency_loss(classifier, bundle.scheduler, noisy, prediction, timesteps, labels, 300,
                                      conditioned)
        assert used == (2 if reaches else 0)
        if loss.requires_grad:
            loss.backward()
        grads = [p.grad for p in bundle.unet.parameters() if p.grad is not None]
        assert (sum(float(g.abs().sum()) for g in grads) > 0) == reaches
    bundle.unet.zero_grad(set_to_none=True)
    prediction = bundle.unet(noisy, torch.tensor([100, 300]), text).sample
    _, used = consistency_loss(classifier, bundle.scheduler, noisy, prediction, torch.tensor([100, 300]), labels,
                               300, torch.tensor([True, False]))
    assert used == 1  # a sample whose caption was dropped is left out


def test_v_prediction_bundle(tmp_path: Path, scenes: str) -> None:
    folder = with_classifier(tiny_sd_folder(tmp_path / "sd-v", prediction_type="v_prediction"))
    assert load_bundle(str(folder)).prediction_type == "v_prediction"
    out = finetune(*settings(folder, tmp_path / "out", scenes, consistency_lambda=0.5, snr_gamma=5.0))
    assert load_bundle(str(out)).prediction_type == "v_prediction"


def test_unet_requiring_class_labels(tmp_path: Path, scenes: str) -> None:
    folder = tiny_sd_folder(tmp_path / "sd-labels", num_class_embeds=4)
    with pytest.raises(RSDistillError, match="--class_labels_value"):
        finetune(*settings(folder, tmp_path / "refused", scenes))
    out = finetune(*settings(folder, tmp_path / "out", scenes, class_labels_value=2, use_lora=True))
    assert load_bundle(str(out)).class_labels_value == 2
    assert json.loads((out / "rsdistill.json").read_text())["class_labels_value"] == 2


def test_bf16_autocast_with_gradient_checkpointing(sd: Path, scenes: str, tmp_path: Path) -> None:
    out = finetune(*settings(sd, tmp_path / "out", scenes, mixed_precision="bf16", gradient_checkpointing=True,
                            max_train_steps=1, consistency_lambda=0.5, consistency_max_timestep=999))
    summary = json.loads((out / "logs" / "summary.json").read_text())
    assert summary["mixed_precision"] == "bf16" and summary["steps_run"] == 1
    assert load_bundle(str(out)).unet.dtype == torch.float32


def test_timestep_class_embedding(tmp_path: Path) -> None:
    folder = tiny_sd_folder(tmp_path / "sd-res", class_embed_type="timestep")
    bundle = load_bundle(str(folder), class_labels_value=5)
    labels = bundle.class_labels(2)
    with torch.no_grad():
        out = bundle.unet(torch.randn(2, 4, 16, 16), torch.tensor([3, 4]), torch.randn(2, 16, 32),
                          class_labels=labels).sample
    assert out.shape == (2, 4, 16, 16)


def test_lora_without_attention_is_refused() -> None:
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                                mid_block_type=None, norm_num_groups=8, cross_attention_dim=32)
    config = GeneratorConfig(use_lora=True)
    with pytest.raises(RSDistillError, match="no attention projections"):
        prepare_unet(unet, config, torch.float32, torch.device("cpu"))


def test_consistency_without_classifier_is_refused(tmp_path: Path, scenes: str) -> None:
    folder = tiny_sd_folder(tmp_path / "sd")
    with pytest.raises(RSDistillError, match="needs a latent classifier"):
        finetune(*settings(folder, tmp_path / "out", scenes, consistency_lambda=0.1))


def test_prompt_encoder_preloads_the_training_prompts_once(sd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = load_bundle(str(sd))
    encoded: list[list[str]] = []
    encode_prompt = bundle.encode_prompt
    monkeypatch.setattr(bundle, "encode_prompt", lambda prompts: encoded.append(prompts) or encode_prompt(prompts))
    encoder = PromptEncoder(bundle)
    assert encoder.preload(["a forest", "a lake", "a forest", "a town"], batch_size=2, progress=False) == 3
    assert encoded == [["a forest", "a lake"], ["a town"]]
    states = encoder(["a lake", "a forest", "a lake"])
    assert len(encoded) == 2
    assert torch.allclose(states[0], encode_prompt(["a lake"])[0][0], atol=1e-5)
    assert torch.equal(states[0], states[2])
    encoder(["a river", "a river"])
    assert encoded[2:] == [["a river"]]
    assert PromptEncoder(bundle, preload_budget_bytes=1).preload(["a forest"], progress=False) == 0


def test_captions_folder_supplies_prompts(sd: Path, scenes: str, tmp_path: Path) -> None:
    captions = tmp_path / "captions"
    captions.mkdir()
    (captions / "metadata.jsonl").write_text(json.dumps({"file_name": "forest/forest_001.png", "text": "trees"}))
    with pytest.raises(RSDistillError, match="no caption for 11 train image"):
        finetune(*settings(sd, tmp_path / "out", scenes, captions=str(captions)))


def test_out_of_memory_names_the_flags_that_help(sd: Path, scenes: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("rsdistill.generator.finetune.Trainer.micro_losses", exhausted)
    with pytest.raises(RSDistillError, match=r"--gradient_checkpointing.*--mixed_precision bf16.*--use_lora"):
        finetune(*settings(sd, tmp_path / "out", scenes))


def test_generator_classifier_command(scenes: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rsdistill.cli.main import main

    folder = tiny_sd_folder(tmp_path / "sd")
    argv = ["generator", "classifier", "--pretrained_model_name_or_path", str(folder), "--dataset", scenes,
            "--resolution", "32", "--classifier_steps", "3"]
    assert main(argv) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert LatentClassifier.from_pretrained(folder / CLASSIFIER_FOLDER).config.classes == CLASSES
