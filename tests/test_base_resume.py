"""The base stage's trainings (the from-scratch VAE, the latent classifier) resume from their checkpoints: a training
interrupted after a checkpoint and run again ends with the weights of an uninterrupted one, and a checkpoint that is
damaged, half written or made with other settings is never resumed from silently."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from rsdistill.core.errors import RSDistillError
from rsdistill.generator.checkpoints import (
    LOOP_STATE_FILE,
    LOOP_WEIGHTS_FILE,
    STATE_FILE,
    LoopCheckpoints,
    list_checkpoints,
)
from rsdistill.generator.latent_classifier import train_latent_classifier
from rsdistill.generator.scratch import get_preset, train_vae
from tests.generator_helpers import one_thread

REPO = Path(__file__).resolve().parents[1]
VAE_TOY = {"resolution": 16, "vae_channels": (16, 16, 16), "vae_steps": 8, "vae_batch_size": 8, "vae_crop": 16}
CLASSES = ["forest", "lake", "town"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


class Interrupted(Exception):
    """Stands for a kill right after a checkpoint was written."""


@dataclasses.dataclass(frozen=True)
class InterruptedAfter(LoopCheckpoints):
    """Checkpoints that stop the training once the checkpoint of `stop_after` steps is written."""

    stop_after: int = 0

    def save(self, done: int, weights: dict, state: dict) -> Path:
        path = super().save(done, weights, state)
        if done == self.stop_after:
            raise Interrupted(done)
        return path


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)


def assert_same_state(first: torch.nn.Module, second: torch.nn.Module) -> None:
    other = second.state_dict()
    assert first.state_dict().keys() == other.keys()
    for name, value in first.state_dict().items():
        assert torch.equal(value, other[name]), name


def vae(images: np.ndarray, checkpoints: LoopCheckpoints | None = None, **settings: object) -> tuple:
    history: list[dict[str, float]] = []
    preset = get_preset("scratch-cpu", **{**VAE_TOY, **settings})
    model = train_vae(images, preset, seed=3, progress=False, history=history, checkpoints=checkpoints)
    return model, history


@pytest.mark.parametrize("autoencoder", ["kl", "adversarial"])
def test_an_interrupted_vae_training_resumes_to_the_uninterrupted_weights(
    images: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str], autoencoder: str
) -> None:
    settings = {"autoencoder": autoencoder, "vae_disc_start": 3, "vae_perceptual_weight": 0.1}
    uninterrupted, full_history = vae(images, **settings)
    folder = tmp_path / "vae"
    with pytest.raises(Interrupted):
        vae(images, InterruptedAfter(folder, every=2, stop_after=4), **settings)
    assert [step for step, _ in list_checkpoints(folder)] == [4]  # only the latest is kept
    resumed, history = vae(images, LoopCheckpoints(folder, every=2), **settings)
    assert "resumed the VAE training from" in capsys.readouterr().out
    assert_same_state(resumed, uninterrupted)
    assert resumed.config.scaling_factor == uninterrupted.config.scaling_factor
    assert history == full_history and len(history) == 8
    assert [step for step, _ in list_checkpoints(folder)] == [8]  # the last step is kept too


def test_a_finished_vae_checkpoint_is_resumed_without_training(images: np.ndarray, tmp_path: Path) -> None:
    first, _ = vae(images, LoopCheckpoints(tmp_path / "vae", every=100))
    assert [step for step, _ in list_checkpoints(tmp_path / "vae")] == [8]
    again, _ = vae(images, LoopCheckpoints(tmp_path / "vae", every=100))
    assert_same_state(again, first)
    assert again.config.scaling_factor == first.config.scaling_factor


def classifier(checkpoints: LoopCheckpoints | None = None) -> tuple:
    rng = np.random.default_rng(1)
    latents = rng.normal(size=(30, 4, 4, 4)).astype(np.float32)
    labels = np.arange(30) % 3
    return train_latent_classifier(
        latents[:24],
        labels[:24],
        CLASSES,
        latents[24:],
        labels[24:],
        steps=10,
        batch_size=8,
        width=8,
        eval_every=3,
        seed=5,
        progress=False,
        precision="fp32",
        checkpoints=checkpoints,
    )


def test_an_interrupted_latent_classifier_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    uninterrupted, full_history = classifier()
    folder = tmp_path / "classifier"
    with pytest.raises(Interrupted):  # after step 4: a best checkpoint (step 3) and a pass of the batch order
        classifier(InterruptedAfter(folder, every=4, stop_after=4))
    resumed, history = classifier(LoopCheckpoints(folder, every=4))
    assert_same_state(resumed, uninterrupted)
    assert history == full_history and history["step"] == [3, 6, 9, 10]
    assert resumed.config.val_accuracy == uninterrupted.config.val_accuracy


def interrupted_vae_checkpoint(images: np.ndarray, folder: Path) -> Path:
    with pytest.raises(Interrupted):
        vae(images, InterruptedAfter(folder, every=2, stop_after=2))
    return list_checkpoints(folder)[-1][1]


def test_a_damaged_checkpoint_is_refused_with_a_message(images: np.ndarray, tmp_path: Path) -> None:
    checkpoint = interrupted_vae_checkpoint(images, tmp_path / "vae")
    weights = checkpoint / LOOP_WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])  # cut short
    with pytest.raises(
        RSDistillError,
        match=r"checkpoint .*checkpoint-2 of the VAE training cannot be resumed from: "
        r"it is damaged .*Delete .*vae to start the VAE training over",
    ):
        vae(images, LoopCheckpoints(tmp_path / "vae", every=2))


def test_a_training_state_holding_python_objects_is_not_unpickled(images: np.ndarray, tmp_path: Path) -> None:
    checkpoint = interrupted_vae_checkpoint(images, tmp_path / "vae")
    torch.save({"optimizer": Path("/etc/passwd")}, checkpoint / LOOP_STATE_FILE)
    with pytest.raises(RSDistillError, match="holds Python objects other than tensors and numbers"):
        vae(images, LoopCheckpoints(tmp_path / "vae", every=2))


def test_a_checkpoint_of_other_settings_is_refused(images: np.ndarray, tmp_path: Path) -> None:
    interrupted_vae_checkpoint(images, tmp_path / "vae")
    with pytest.raises(RSDistillError, match=r"made with other settings.*vae_learning_rate.*0\.002 -> 0\.001"):
        vae(images, LoopCheckpoints(tmp_path / "vae", every=2), vae_learning_rate=1e-3)


def test_a_half_written_checkpoint_is_never_read(images: np.ndarray, tmp_path: Path) -> None:
    """A kill while a checkpoint is written leaves `.checkpoint-N.partial` (no state file): ignored."""
    uninterrupted, _ = vae(images)
    folder = tmp_path / "vae"
    checkpoint = interrupted_vae_checkpoint(images, folder)
    (checkpoint / STATE_FILE).unlink()
    checkpoint.rename(folder / ".checkpoint-2.partial")
    assert list_checkpoints(folder) == []
    resumed, _ = vae(images, LoopCheckpoints(folder, every=2))
    assert_same_state(resumed, uninterrupted)


BASE_ONLY = """
import sys
from rsdistill.core.config import load_config
from rsdistill.pipeline import Run
config = load_config(None, sys.argv[1:])
Run(config).base_generator()
"""


def base_stage(work: Path, name: str) -> subprocess.Popen[str]:
    """The base stage of a tiny `rsdistill run` (the pipeline's own code) in a process of its own."""
    run_dir = work / name
    overrides = [
        f"data.dataset=imagefolder:{work / 'scenes'}",
        "data.resolution=16",
        f"run_dir={run_dir}",
        f"shared_dir={run_dir / 'shared'}",
        f"data.cache_dir={run_dir / 'cache'}",
        "device=cpu",
        "generator.vae_steps=40",
        "generator.classifier_steps=4",
        "generator.checkpointing_steps=5",
        "generator.progress=false",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", BASE_ONLY, *overrides],
        cwd=REPO,
        env=environment,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finished(process: subprocess.Popen[str]) -> str:
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    return out


def base_folder(run_dir: Path) -> Path:
    (folder,) = (run_dir / "shared").glob("*/base-*")
    return folder


def test_a_base_stage_killed_during_its_vae_training_resumes_and_ends_identical(
    make_imagefolder: Callable[..., Path], tmp_path: Path
) -> None:
    make_imagefolder({"forest": 5, "lake": 5, "town": 5}, size=16, test_per_class=1)
    uninterrupted = base_stage(tmp_path, "uninterrupted")
    killed = base_stage(tmp_path, "killed")
    deadline = time.monotonic() + 240
    while not list((tmp_path / "killed" / "shared").glob("*/.base-*.partial/checkpoints/vae/checkpoint-*")):
        assert killed.poll() is None and time.monotonic() < deadline, "no VAE checkpoint appeared"
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    finished(uninterrupted)
    out = finished(base_stage(tmp_path, "killed"))
    assert "took over the lock" in out and "resumed the VAE training from" in out
    first, second = base_folder(tmp_path / "uninterrupted"), base_folder(tmp_path / "killed")
    assert first.name == second.name and not (second / "checkpoints").exists()
    manifest = json.loads((second / "manifest.json").read_text())
    assert not [name for name in manifest["files"] if "checkpoint" in name]
    for part in (
        "vae/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "latent_classifier/model.safetensors",
    ):
        assert (first / part).read_bytes() == (second / part).read_bytes(), part
