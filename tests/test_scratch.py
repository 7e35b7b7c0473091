"""The from-scratch preset at toy sizes: VAE, bundle with the real MiniLM text encoder, latent classifier, and
its UNet trained by the fine-tuning loop."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rsdistill.cli.main import main
from rsdistill.core.config import GeneratorConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.sources import load_dataset
from rsdistill.generator.bundle import CLASSIFIER_FOLDER, load_bundle
from rsdistill.generator.finetune import finetune
from rsdistill.generator.scratch import get_preset, init_scratch, reconstruction_psnr, train_vae
from tests.generator_helpers import one_thread

TOY = {"resolution": 16, "vae_channels": (16, 16, 16), "vae_steps": 6, "vae_batch_size": 8, "vae_crop": 16,
       "unet_channels": (32, 32, 32), "text_max_length": 16, "classifier_steps": 6, "classifier_batch_size": 8,
       "classifier_width": 8}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture
def scenes(make_imagefolder: Callable[..., Path]) -> Path:
    return make_imagefolder({"forest": 6, "lake": 6, "town": 6}, size=16, test_per_class=2)


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(RSDistillError, match="Unknown generator preset 'sd-huge'"):
        get_preset("sd-huge")


def test_vae_training_is_seeded_and_improves_reconstruction(scenes: Path) -> None:
    images = load_dataset(f"imagefolder:{scenes}").images("train", 16).images
    preset = get_preset("scratch-cpu", **{**TOY, "vae_steps": 30, "vae_learning_rate": 3e-3})
    untrained = reconstruction_psnr(train_vae(images, get_preset("scratch-cpu", **{**TOY, "vae_steps": 1}),
                                              progress=False), images)
    first, second = (train_vae(images, preset, seed=3, progress=False) for _ in range(2))
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name])
    assert first.config.scaling_factor == second.config.scaling_factor != 0.18215
    assert reconstruction_psnr(first, images) > untrained + 1.5


def test_bf16_vae_training_learns_like_fp32_but_is_not_the_same_run(scenes: Path) -> None:
    images = load_dataset(f"imagefolder:{scenes}").images("train", 16).images
    preset = get_preset("scratch-cpu", **{**TOY, "vae_steps": 30, "vae_learning_rate": 3e-3})
    full = train_vae(images, preset, seed=3, progress=False)
    mixed = train_vae(images, preset, seed=3, progress=False, mixed_precision="bf16")
    assert all(value.dtype == torch.float32 for value in mixed.state_dict().values())
    assert not torch.equal(mixed.decoder.conv_out.weight, full.decoder.conv_out.weight)
    assert reconstruction_psnr(mixed, images) > reconstruction_psnr(full, images) - 1.0
    with pytest.raises(RSDistillError, match="--mixed_precision must be no, fp16 or bf16, not 'fp8'"):
        train_vae(images, preset, progress=False, mixed_precision="fp8")


def test_init_scratch_writes_a_bundle_like_stable_diffusion(
    scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = load_dataset(f"imagefolder:{scenes}")
    context = RunContext.of(dataset, device="cpu")
    report = init_scratch(context, get_preset("scratch-cpu", **TOY), tmp_path / "bundle", progress=False)
    assert {"vae_test_psnr", "latent_classifier_test_accuracy", "latent_classifier_val_accuracy"} <= set(report)
    assert json.loads((tmp_path / "bundle" / "scratch_report.json").read_text())["preset"] == "scratch-cpu"
    bundle = load_bundle(str(tmp_path / "bundle"))
    assert type(bundle.text_encoder).__name__ == "BertModel"
    assert bundle.unet.config.cross_attention_dim == 384
    assert bundle.latent_size == 4 and bundle.tokenizer.model_max_length == 16
    hidden, _ = bundle.encode_prompt(["a satellite image of forest"])
    assert hidden.shape == (1, 16, 384)
    assert (tmp_path / "bundle" / CLASSIFIER_FOLDER / "config.json").is_file()

    # A fresh latent cache, so the second build takes the same code path as the first: within one process,
    # float rounding can depend on what ran before (separate processes agree, with or without the cache).
    monkeypatch.setenv("RSDISTILL_CACHE", str(tmp_path / "second-cache"))
    again = init_scratch(context, get_preset("scratch-cpu", **TOY), tmp_path / "again", progress=False)
    assert again["latent_classifier_test_accuracy"] == report["latent_classifier_test_accuracy"]
    for part in ("vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                 f"{CLASSIFIER_FOLDER}/model.safetensors"):
        assert (tmp_path / "bundle" / part).read_bytes() == (tmp_path / "again" / part).read_bytes()

    trained = finetune(RunContext.of(load_dataset(f"imagefolder:{scenes}"), resolution=16), GeneratorConfig(
        pretrained_model_name_or_path=str(tmp_path / "bundle"), output_dir=str(tmp_path / "trained"),
        train_batch_size=4, max_train_steps=2, consistency_lambda=0.1, consistency_max_timestep=999,
        caption_dropout=0.0, progress=False,
    ))
    before = load_file(tmp_path / "bundle" / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(trained / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("conv1.weight"))
    assert json.loads((trained / "rsdistill.json").read_text())["preset"] == "scratch-cpu"
    assert (trained / CLASSIFIER_FOLDER / "model.safetensors").is_file()


def test_generator_init_command(scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-bundle"
    argv = ["generator", "init", "--preset", "scratch-cpu", "--dataset", f"imagefolder:{scenes}",
            "--resolution", "16", "--vae_steps", "2", "--classifier_steps", "2", "--output_dir", str(out)]
    assert main(argv) == 0
    assert "vae_test_psnr" in capsys.readouterr().out
    assert load_bundle(str(out)).latent_size == 4
    assert main(argv) == 2
    assert "holds a bundle already" in capsys.readouterr().err


def test_generator_init_checkpoints_and_leaves_none_behind(scenes: Path, tmp_path: Path) -> None:
    argv = ["generator", "init", "--preset", "scratch-cpu", "--dataset", f"imagefolder:{scenes}",
            "--resolution", "16", "--vae_steps", "3", "--classifier_steps", "3"]
    assert main([*argv, "--output_dir", str(tmp_path / "plain")]) == 0
    assert main([*argv, "--output_dir", str(tmp_path / "checkpointed"), "--checkpointing_steps", "1"]) == 0
    assert not (tmp_path / "checkpointed" / "checkpoints").exists()
    vae = Path("vae") / "diffusion_pytorch_model.safetensors"
    assert (tmp_path / "plain" / vae).read_bytes() == (tmp_path / "checkpointed" / vae).read_bytes()
